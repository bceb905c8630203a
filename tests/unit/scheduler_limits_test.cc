// Crash limits and max-fails (JobSpec::crash_limit, JobSpec::max_fails), on simulated workers.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

JobSpec spec(JobId id, const std::string& ids, uint32_t crash_limit, int64_t max_fails = -1) {
  auto set = IdSet::parse(ids);
  EXPECT_TRUE(set.is_ok());
  return {id, *set, 1, 0, crash_limit, max_fails};
}

// Assigns and starts whatever schedule() gives; returns the started keys.
std::vector<Assignment> run(Scheduler& s, int64_t t = 1) {
  Decisions d = s.schedule();
  for (const Assignment& a : d.assign) EXPECT_TRUE(s.task_started(a.worker, a.key, t));
  s.check_invariants();
  return d.assign;
}

TEST(SchedulerLimitsTest, CrashLimitFailsTheTaskAtTheLimit) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(spec(1, "0", /*crash_limit=*/2)).is_ok());
  ASSERT_TRUE(s.add_worker(1, 1).is_ok());
  run(s);
  EXPECT_EQ(s.remove_worker(1, 10).size(), 1u);  // first loss: runs again
  EXPECT_TRUE(s.take_crash_failures().empty());
  ASSERT_TRUE(s.add_worker(2, 1).is_ok());
  auto started = run(s);
  ASSERT_EQ(started.size(), 1u);
  EXPECT_EQ(started[0].key.instance, 1u);
  EXPECT_TRUE(s.remove_worker(2, 20).empty());  // second loss: the limit
  s.check_invariants();
  auto failures = s.take_crash_failures();
  ASSERT_EQ(failures.size(), 1u);
  EXPECT_EQ(failures[0].task, 0u);
  auto v = s.task(1, 0);
  ASSERT_TRUE(v && v->error);
  EXPECT_EQ(v->state, TaskState::kFailed);
  EXPECT_EQ(v->end_time, 20);
  EXPECT_NE(v->error->find("crash limit (2)"), std::string::npos) << *v->error;
  EXPECT_EQ(s.take_completed_jobs(), (std::vector<JobId>{1}));
}

TEST(SchedulerLimitsTest, StoppedWorkersAndQueuedTasksDoNotCount) {
  Scheduler s({.queue_factor = 1.0});
  ASSERT_TRUE(s.add_job(spec(1, "0-1", /*crash_limit=*/1)).is_ok());
  ASSERT_TRUE(s.add_worker(1, 1).is_ok());
  Decisions d = s.schedule();  // task 0 runs, task 1 queued behind it
  ASSERT_EQ(d.assign.size(), 2u);
  ASSERT_TRUE(s.task_started(1, d.assign[0].key, 1));
  // Stopped on purpose: both back, no crash counted even with never-restart.
  EXPECT_EQ(s.remove_worker(1, 5, /*lost=*/false).size(), 2u);
  EXPECT_EQ(s.crash_count(1, 0), 0u);
  ASSERT_TRUE(s.add_worker(2, 1).is_ok());
  d = s.schedule();
  ASSERT_EQ(d.assign.size(), 2u);
  ASSERT_TRUE(s.task_started(2, d.assign[0].key, 6));
  // Lost: the running task fails at once (limit 1); the queued one was never running.
  EXPECT_EQ(s.remove_worker(2, 7).size(), 1u);
  s.check_invariants();
  EXPECT_EQ(s.take_crash_failures().size(), 1u);
  EXPECT_EQ(s.counts(1)[TaskState::kFailed], 1u);
  EXPECT_EQ(s.counts(1)[TaskState::kWaiting], 1u);
}

TEST(SchedulerLimitsTest, UnlimitedCrashLimitNeverFails) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(spec(1, "0", /*crash_limit=*/0)).is_ok());
  for (WorkerId w = 1; w <= 20; ++w) {
    ASSERT_TRUE(s.add_worker(w, 1).is_ok());
    run(s);
    EXPECT_EQ(s.remove_worker(w, w).size(), 1u);
  }
  EXPECT_EQ(s.crash_count(1, 0), 20u);
  EXPECT_TRUE(s.take_crash_failures().empty());
  s.check_invariants();
}

TEST(SchedulerLimitsTest, MaxFailsAbortsTheRestAndKillsHeldTasks) {
  Scheduler s({.queue_factor = 0.0});
  ASSERT_TRUE(s.add_job(spec(1, "0-9", 0, /*max_fails=*/1)).is_ok());
  ASSERT_TRUE(s.add_job(spec(2, "0-1", 0)).is_ok());
  ASSERT_TRUE(s.add_worker(1, 3).is_ok());
  auto started = run(s);  // tasks 0, 1, 2 of job 1 run
  ASSERT_EQ(started.size(), 3u);
  EXPECT_TRUE(s.task_failed(1, started[0].key, 5, "exit 1"));
  EXPECT_TRUE(s.take_aborted_jobs().empty());  // 1 failure is allowed
  EXPECT_TRUE(s.task_failed(1, started[1].key, 6, "exit 1"));
  s.check_invariants();
  EXPECT_EQ(s.take_aborted_jobs(), (std::vector<JobId>{1}));
  auto kills = s.take_kills();
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].key.task, started[2].key.task);
  TaskCounts c = s.counts(1);
  EXPECT_EQ(c[TaskState::kFailed], 2u);
  EXPECT_EQ(c[TaskState::kAborted], 8u);
  EXPECT_EQ(s.job_state(1), JobState::kFailed);
  EXPECT_EQ(s.take_completed_jobs(), (std::vector<JobId>{1}));
  // The killed task's end only gives its CPU back; job 2 runs on.
  EXPECT_TRUE(s.task_failed(1, started[2].key, 7, "Program terminated"));
  EXPECT_EQ(s.counts(1)[TaskState::kAborted], 8u);
  EXPECT_EQ(run(s).size(), 2u);
  s.check_invariants();
}

TEST(SchedulerLimitsTest, AbortJobRestoresAJournaledAbort) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(spec(1, "0-3", 0, 0)).is_ok());
  ASSERT_TRUE(s.restore_ended({1, 0, 0}, TaskState::kFailed, 3, "exit 1"));
  s.abort_job(1, 4);
  s.finish_restore();
  s.check_invariants();
  EXPECT_EQ(s.counts(1)[TaskState::kAborted], 3u);
  EXPECT_TRUE(s.take_aborted_jobs().empty());
  EXPECT_TRUE(s.take_completed_jobs().empty());
}

}  // namespace
}  // namespace hq::sched
