// Scheduler::remove_job (`hq job forget`): only complete jobs whose tasks no worker holds, and
// nothing of the job is left behind. The invariant checker runs after every step.

#include <gtest/gtest.h>

#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

JobSpec array_spec(JobId id, const std::string& ids, uint32_t cpus = 1) {
  auto set = IdSet::parse(ids);
  EXPECT_TRUE(set.is_ok()) << ids;
  return JobSpec{id, *set, cpus, 0};
}

TEST(SchedulerForgetTest, RefusesAnIncompleteOrUnknownJob) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job(array_spec(1, "0-3")).is_ok());
  Status st = s.remove_job(1);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("not complete"), std::string::npos) << st.message();
  EXPECT_FALSE(s.remove_job(2).is_ok());
  EXPECT_TRUE(s.has_job(1));
  s.check_invariants();
}

TEST(SchedulerForgetTest, WaitsUntilTheWorkerReportsACanceledTaskEnded) {
  Scheduler s(SchedulerConfig{0.0});  // no queue beyond the worker's CPUs
  ASSERT_TRUE(s.add_worker(1, 1).is_ok());
  ASSERT_TRUE(s.add_job(array_spec(1, "0-1")).is_ok());
  auto d = s.schedule();
  ASSERT_EQ(d.assign.size(), 1u);
  const TaskKey running = d.assign[0].key;
  ASSERT_TRUE(s.task_started(1, running, 5));
  auto kills = s.cancel_job(1, 6);
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_TRUE(s.counts(1).complete());
  Status st = s.remove_job(1);
  ASSERT_FALSE(st.is_ok());  // the worker still holds the killed task
  EXPECT_NE(st.message().find("not yet reported"), std::string::npos) << st.message();
  s.check_invariants();
  ASSERT_TRUE(s.task_failed(1, running, 7, "killed"));
  ASSERT_TRUE(s.remove_job(1).is_ok());
  s.check_invariants();
  EXPECT_FALSE(s.has_job(1));
  EXPECT_EQ(s.counts(1).total(), 0u);
  EXPECT_FALSE(s.task(1, 0).has_value());
  EXPECT_EQ(s.held_tasks(1), 0u);
}

TEST(SchedulerForgetTest, ForgottenJobLeavesOthersScheduling) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job(array_spec(1, "0-1")).is_ok());
  for (const Assignment& a : s.schedule().assign) {
    ASSERT_TRUE(s.task_started(1, a.key, 1));
    ASSERT_TRUE(s.task_finished(1, a.key, 2));
  }
  ASSERT_TRUE(s.add_job(array_spec(2, "0-2")).is_ok());
  EXPECT_EQ(s.take_completed_jobs(), (std::vector<JobId>{1}));
  ASSERT_TRUE(s.remove_job(1).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.job_ids(), (std::vector<JobId>{2}));
  EXPECT_TRUE(s.take_completed_jobs().empty());
  uint32_t done = 0;
  for (int round = 0; round < 3 && done < 3; ++round) {
    for (const Assignment& a : s.schedule().assign) {
      ASSERT_EQ(a.key.job, 2u);
      ASSERT_TRUE(s.task_finished(1, a.key, 3));
      ++done;
    }
    s.check_invariants();
  }
  EXPECT_EQ(done, 3u);
  EXPECT_EQ(s.job_state(2), JobState::kFinished);
}

TEST(SchedulerForgetTest, JobCompletedWhileQueuedElsewhereIsForgottenWithItsReservation) {
  // A job that fits nowhere reserves a worker; once canceled and forgotten, the worker is free
  // for the others.
  Scheduler s(SchedulerConfig{0.0});  // no queue beyond the worker's CPUs
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job(array_spec(1, "0", 2)).is_ok());
  auto first = s.schedule().assign;
  ASSERT_EQ(first.size(), 1u);
  ASSERT_TRUE(s.task_started(1, first[0].key, 1));
  ASSERT_TRUE(s.add_job(array_spec(2, "0", 2)).is_ok());
  s.schedule();  // job 2 waits for the worker, which it may reserve
  s.check_invariants();
  s.cancel_job(2, 3);
  ASSERT_TRUE(s.remove_job(2).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.reserved_for(1), 0u);
  ASSERT_TRUE(s.task_finished(1, first[0].key, 4));
  ASSERT_TRUE(s.remove_job(1).is_ok());
  s.check_invariants();
  EXPECT_TRUE(s.job_ids().empty());
  EXPECT_EQ(s.waiting_tasks(), 0u);
}

}  // namespace
}  // namespace hq::sched
