// server::Restore, the one fold of journal events into the scheduler (server start and
// `hq journal report`).
#include "server/restore.h"

#include <gtest/gtest.h>

#include "journal/events.h"

namespace hq::server {
namespace {

using journal::schema::Event;

JobDescriptionSpec job_with(IdSet ids) {
  JobDescriptionSpec spec;
  spec.name = "j";
  spec.task_ids = std::move(ids);
  spec.body.program = {"true"};
  return spec;
}

class Fold {
 public:
  void submit(JobId id, const JobDescriptionSpec& job) {
    journal::EventMessage message(1000 + static_cast<int64_t>(seq_));
    auto s = message.event().initJobSubmitted();
    s.setJob(id);
    journal::to_record(job, s.initDescription());
    apply(message);
  }
  template <typename Fill>
  void event(Fill&& fill) {
    journal::EventMessage message(1000 + static_cast<int64_t>(seq_));
    fill(message.event());
    apply(message);
  }

  sched::Scheduler scheduler;
  std::map<JobId, JobRecord> jobs;
  Restore restore{scheduler, jobs};

 private:
  void apply(journal::EventMessage& message) { restore.apply(++seq_, message.event().asReader()); }
  journal::Seq seq_ = 0;
};

TEST(Restore, AJobThatFailsTodaysValidationRefusesTheStartNamingIt) {
  Fold f;
  f.submit(1, job_with(IdSet::range(1, 3)));
  f.submit(2, job_with(IdSet()));  // acknowledged by some hq, refused by this one
  f.submit(3, job_with(IdSet::single(1)));
  f.restore.finish();
  ASSERT_FALSE(f.restore.status());
  const std::string error = f.restore.status().message();
  EXPECT_NE(error.find("job 2 was acknowledged but cannot be restored"), std::string::npos)
      << error;
  EXPECT_NE(error.find("seq 2"), std::string::npos) << error;
  EXPECT_EQ(f.restore.max_job_id(), 3u);
  EXPECT_TRUE(f.scheduler.has_job(1));
  EXPECT_TRUE(f.scheduler.has_job(3));
}

TEST(Restore, FoldsAsAServerRestarts) {
  Fold f;
  f.submit(1, job_with(IdSet::range(1, 4)));
  f.event([](Event::Builder e) {
    auto t = e.initTaskStarted();
    t.setJob(1);
    t.setTask(1);
    t.setWorker(1);
  });
  f.event([](Event::Builder e) {
    auto t = e.initTaskFinished();
    t.setJob(1);
    t.setTask(1);
  });
  f.event([](Event::Builder e) {
    auto t = e.initTaskStarted();
    t.setJob(1);
    t.setTask(2);
    t.setWorker(1);
  });
  f.submit(2, job_with(IdSet::range(1, 2)));
  f.event([](Event::Builder e) { e.initJobAborted().setJob(2); });
  f.restore.finish();
  ASSERT_TRUE(f.restore.status()) << f.restore.status().message();
  // The running task waits again as a new instance; an aborted job stays aborted.
  auto counts = f.scheduler.counts(1);
  EXPECT_EQ(counts[sched::TaskState::kFinished], 1u);
  EXPECT_EQ(counts[sched::TaskState::kWaiting], 3u);
  EXPECT_EQ(f.scheduler.task(1, 2)->instance, 1u);
  EXPECT_EQ(f.scheduler.counts(2)[sched::TaskState::kAborted], 2u);
  EXPECT_EQ(f.jobs.at(2).end_time, 1000 + 5);
  EXPECT_EQ(f.jobs.at(1).end_time, 0);
  f.scheduler.check_invariants();
}

}  // namespace
}  // namespace hq::server
