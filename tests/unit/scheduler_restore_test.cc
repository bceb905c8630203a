// Restoring the scheduler from journaled history (Scheduler::restore_*, finish_restore).

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

void add_job(Scheduler& s, JobId id, const std::string& ids, uint32_t cpus = 1) {
  auto set = IdSet::parse(ids);
  ASSERT_TRUE(set.is_ok()) << ids;
  ASSERT_TRUE(s.add_job({id, *set, cpus, 0}).is_ok());
}

// The tasks the next schedule() assigns, as "task/instance".
std::vector<std::string> assigned(Scheduler& s) {
  std::vector<std::string> out;
  for (const Assignment& a : s.schedule().assign) {
    out.push_back(std::to_string(a.key.task) + "/" + std::to_string(a.key.instance));
  }
  s.check_invariants();
  return out;
}

TEST(SchedulerRestoreTest, EndedTasksStayEndedAndRunningOnesComeBackWithNewInstance) {
  Scheduler s;
  add_job(s, 1, "0-9");
  for (TaskId t = 0; t < 4; ++t) {
    ASSERT_TRUE(s.restore_started({1, t, 0}, 1, 100 + t));
    ASSERT_TRUE(s.restore_ended({1, t, 0}, TaskState::kFinished, 200 + t));
  }
  ASSERT_TRUE(s.restore_started({1, 4, 0}, 1, 104));
  ASSERT_TRUE(s.restore_ended({1, 4, 0}, TaskState::kFailed, 204, "exit code 3"));
  // Task 5: lost once with its worker, then running again when the server died.
  ASSERT_TRUE(s.restore_started({1, 5, 0}, 1, 105));
  ASSERT_TRUE(s.restore_requeued({1, 5, 1}, 1));
  ASSERT_TRUE(s.restore_started({1, 5, 1}, 2, 305));
  // Task 6: requeued after a lost worker, not started since.
  ASSERT_TRUE(s.restore_started({1, 6, 0}, 1, 106));
  ASSERT_TRUE(s.restore_requeued({1, 6, 1}, 1));

  EXPECT_EQ(s.finish_restore(), 1u);
  s.check_invariants();

  TaskCounts c = s.counts(1);
  EXPECT_EQ(c[TaskState::kFinished], 4u);
  EXPECT_EQ(c[TaskState::kFailed], 1u);
  EXPECT_EQ(c[TaskState::kWaiting], 5u);
  EXPECT_EQ(c[TaskState::kRunning], 0u);
  auto t2 = s.task(1, 2);
  ASSERT_TRUE(t2);
  EXPECT_EQ(t2->start_time, 102);
  EXPECT_EQ(t2->end_time, 202);
  auto t4 = s.task(1, 4);
  ASSERT_TRUE(t4 && t4->error);
  EXPECT_EQ(*t4->error, "exit code 3");
  auto t5 = s.task(1, 5);
  ASSERT_TRUE(t5);
  EXPECT_EQ(t5->state, TaskState::kWaiting);
  EXPECT_EQ(t5->instance, 2u);  // ran as 1 when the server died
  EXPECT_EQ(t5->start_time, 0);
  EXPECT_EQ(s.crash_count(1, 5), 1u);  // a server restart is not the task's crash
  EXPECT_EQ(s.crash_count(1, 6), 1u);
  EXPECT_TRUE(s.take_completed_jobs().empty());

  ASSERT_TRUE(s.add_worker(3, 16).is_ok());
  EXPECT_EQ(assigned(s), (std::vector<std::string>{"5/2", "6/1", "7/0", "8/0", "9/0"}));
  EXPECT_TRUE(s.task_started(3, {1, 5, 2}, 400));
  EXPECT_TRUE(s.task_finished(3, {1, 5, 2}, 401));
  EXPECT_FALSE(s.task_finished(3, {1, 0, 0}, 402));  // ended before the restart
  s.check_invariants();
}

TEST(SchedulerRestoreTest, CompletedAndCanceledJobsAreNotReportedAgain) {
  Scheduler s;
  add_job(s, 1, "0-1");
  add_job(s, 2, "0-2");
  add_job(s, 3, "0");
  ASSERT_TRUE(s.restore_ended({1, 0, 0}, TaskState::kFinished, 10));
  ASSERT_TRUE(s.restore_ended({1, 1, 0}, TaskState::kFinished, 11));
  ASSERT_TRUE(s.restore_started({2, 1, 0}, 1, 12));
  s.cancel_job(2, 13);
  EXPECT_EQ(s.finish_restore(), 0u);
  s.check_invariants();
  EXPECT_EQ(s.job_state(1), JobState::kFinished);
  EXPECT_EQ(s.job_state(2), JobState::kCanceled);
  EXPECT_EQ(s.counts(2)[TaskState::kCanceled], 3u);
  EXPECT_EQ(s.job_state(3), JobState::kWaiting);
  EXPECT_TRUE(s.take_completed_jobs().empty());

  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  EXPECT_EQ(assigned(s), (std::vector<std::string>{"0/0"}));  // only job 3's task
  ASSERT_TRUE(s.task_finished(1, {3, 0, 0}, 20));
  EXPECT_EQ(s.take_completed_jobs(), (std::vector<JobId>{3}));
}

TEST(SchedulerRestoreTest, SparseIdsKeepTheirOrderAfterRestore) {
  Scheduler s;
  add_job(s, 1, "1-3,10-12,20");
  ASSERT_TRUE(s.restore_ended({1, 1, 0}, TaskState::kFinished, 5));
  ASSERT_TRUE(s.restore_ended({1, 10, 0}, TaskState::kFinished, 5));
  ASSERT_TRUE(s.restore_started({1, 11, 0}, 1, 5));
  s.finish_restore();
  s.check_invariants();
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  // Requeued (11, now instance 1) first, then the waiting ones in id order.
  EXPECT_EQ(assigned(s), (std::vector<std::string>{"2/0", "3/0", "11/1", "12/0"}));
}

TEST(SchedulerRestoreTest, ReservedTasksThatMayHaveRunGetANewInstance) {
  Scheduler s;
  add_job(s, 1, "10-19");
  s.restore_reserved(1, 2);
  s.restore_reserved(1, 4);  // the largest reservation counts
  ASSERT_TRUE(s.restore_ended({1, 10, 0}, TaskState::kFinished, 5));
  ASSERT_TRUE(s.restore_started({1, 11, 0}, 1, 5));
  EXPECT_EQ(s.finish_restore(), 3u);  // 11 (running), 12 and 13 (reserved, maybe started)
  s.check_invariants();
  EXPECT_EQ(s.task(1, 10)->instance, 0u);
  for (TaskId t : {11u, 12u, 13u}) EXPECT_EQ(s.task(1, t)->instance, 1u) << t;
  EXPECT_EQ(s.task(1, 14)->instance, 0u);
  ASSERT_TRUE(s.add_worker(1, 16).is_ok());
  EXPECT_EQ(assigned(s), (std::vector<std::string>{"11/1", "12/1", "13/1", "14/0", "15/0", "16/0",
                                                   "17/0", "18/0", "19/0"}));
  EXPECT_EQ(s.fresh_cursor(1), 10u);
}

TEST(SchedulerRestoreTest, UnknownTasksAndBadStatesAreRefused) {
  Scheduler s;
  add_job(s, 1, "0-3");
  EXPECT_FALSE(s.restore_started({2, 0, 0}, 1, 1));
  EXPECT_FALSE(s.restore_started({1, 4, 0}, 1, 1));
  EXPECT_FALSE(s.restore_ended({1, 0, 0}, TaskState::kRunning, 1));
  EXPECT_FALSE(s.restore_requeued({1, 9, 1}, 1));
  EXPECT_EQ(s.finish_restore(), 0u);
  s.check_invariants();
  EXPECT_EQ(s.counts(1)[TaskState::kWaiting], 4u);
}

TEST(SchedulerRestoreTest, LargeJobRestoresEveryState) {
  Scheduler s;
  constexpr TaskId kTasks = 200'000;
  add_job(s, 1, "0-199999");
  for (TaskId t = 0; t < kTasks; t += 2) {
    ASSERT_TRUE(s.restore_started({1, t, 0}, 1, 1));
    if (t % 4 == 0) {
      ASSERT_TRUE(s.restore_ended({1, t, 0}, TaskState::kFinished, 2));
    }
  }
  EXPECT_EQ(s.finish_restore(), kTasks / 4);
  s.check_invariants();
  EXPECT_EQ(s.counts(1)[TaskState::kFinished], kTasks / 4);
  EXPECT_EQ(s.waiting_tasks(), kTasks - kTasks / 4);
  EXPECT_EQ(s.task(1, 2)->instance, 1u);
  EXPECT_EQ(s.task(1, 3)->instance, 0u);
}

}  // namespace
}  // namespace hq::sched
