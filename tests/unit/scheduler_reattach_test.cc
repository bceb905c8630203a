// Workers reattaching after a restart: orphans, claims and the end of the grace
// (Scheduler::restore_orphans, reattach_task, end_reattach). Every step ends with the
// invariant checker.

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

std::vector<std::string> assigned(Scheduler& s) {
  std::vector<std::string> out;
  for (const Assignment& a : s.schedule().assign) {
    out.push_back(std::to_string(a.key.task) + "/" + std::to_string(a.key.instance));
  }
  s.check_invariants();
  return out;
}

// Job 1 of tasks 0-5 after a crash: 0 finished, 1 running on worker 1, 2 running on worker 2,
// 3 reserved (maybe started on some worker), 4 and 5 fresh. Restored with reattach.
void crashed_campaign(Scheduler& s) {
  add_job(s, 1, "0-5");
  s.restore_reserved(1, 4);
  ASSERT_TRUE(s.restore_started({1, 0, 0}, 1, 10));
  ASSERT_TRUE(s.restore_ended({1, 0, 0}, TaskState::kFinished, 20));
  ASSERT_TRUE(s.restore_started({1, 1, 0}, 1, 11));
  ASSERT_TRUE(s.restore_started({1, 2, 0}, 2, 12));
  EXPECT_EQ(s.finish_restore(/*reattach=*/true), 3u);  // 1, 2 and 3
  s.check_invariants();
}

TEST(SchedulerReattachTest, OrphansAreNotHandedOutButOtherTasksAre) {
  Scheduler s;
  crashed_campaign(s);
  EXPECT_EQ(s.orphan_count(), 3u);
  EXPECT_TRUE(s.task(1, 1)->orphan);
  EXPECT_EQ(s.task(1, 1)->state, TaskState::kRunning);
  EXPECT_EQ(s.task(1, 3)->state, TaskState::kWaiting);
  ASSERT_TRUE(s.add_worker(3, 4).is_ok());
  EXPECT_EQ(assigned(s), (std::vector<std::string>{"4/0", "5/0"}));
}

TEST(SchedulerReattachTest, AClaimKeepsTheInstanceAndTakesTheWorkersResources) {
  Scheduler s;
  crashed_campaign(s);
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  EXPECT_TRUE(s.reattach_task(1, {1, 1, 0}, 11));
  EXPECT_TRUE(s.reattach_task(1, {1, 1, 0}, 11));  // repeated: still accepted
  // A reserved task whose start the journal never got: any worker may hold it.
  EXPECT_TRUE(s.reattach_task(1, {1, 3, 0}, 13));
  s.check_invariants();
  EXPECT_EQ(s.running_tasks(1), 2u);
  EXPECT_EQ(s.task(1, 3)->state, TaskState::kRunning);
  EXPECT_EQ(s.task(1, 3)->start_time, 13);
  EXPECT_FALSE(s.task(1, 3)->orphan);
  // Its 2 CPUs are busy: what it gets more waits in its queue.
  const size_t more = assigned(s).size();
  EXPECT_EQ(s.queued_tasks(1), more);
  EXPECT_EQ(s.held_tasks(1), more + 2);
  // The result comes as from a live worker.
  EXPECT_TRUE(s.task_finished(1, {1, 1, 0}, 30));
  s.check_invariants();
  EXPECT_EQ(s.task(1, 1)->state, TaskState::kFinished);
  EXPECT_EQ(s.task(1, 1)->instance, 0u);
}

TEST(SchedulerReattachTest, ForgedClaimsChangeNothing) {
  Scheduler s;
  crashed_campaign(s);
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_worker(3, 2).is_ok());
  EXPECT_FALSE(s.reattach_task(1, {9, 1, 0}, 1));   // unknown job
  EXPECT_FALSE(s.reattach_task(1, {1, 99, 0}, 1));  // unknown task
  EXPECT_FALSE(s.reattach_task(1, {1, 2, 0}, 1));   // running on worker 2, not 1
  EXPECT_FALSE(s.reattach_task(1, {1, 1, 1}, 1));   // not the current instance
  EXPECT_FALSE(s.reattach_task(1, {1, 0, 0}, 1));   // finished
  EXPECT_FALSE(s.reattach_task(1, {1, 4, 0}, 1));   // fresh: never handed out
  EXPECT_FALSE(s.reattach_task(7, {1, 1, 0}, 1));   // unknown worker
  s.check_invariants();
  EXPECT_EQ(s.orphan_count(), 3u);
  EXPECT_EQ(s.held_tasks(1), 0u);
  // Once it is held by worker 1, another worker's claim of it is stale.
  EXPECT_TRUE(s.reattach_task(1, {1, 3, 0}, 1));
  EXPECT_FALSE(s.reattach_task(3, {1, 3, 0}, 1));
  s.check_invariants();
}

ResourceRequest cpus_request(uint32_t cpus) {
  return ResourceRequest{{{std::string(kCpus), cpus * kAmountUnit, AllocationPolicy::kCompact}}};
}

TEST(SchedulerReattachTest, AClaimTakesTheResourcesOfItsVariant) {
  Scheduler s;
  JobSpec spec;
  spec.id = 1;
  spec.task_ids = *IdSet::parse("0-2");
  spec.variants = {cpus_request(2), cpus_request(1)};
  spec.resources = spec.variants[0];
  spec.cpus = 2;
  ASSERT_TRUE(s.add_job(spec).is_ok());
  ASSERT_TRUE(s.restore_started({1, 0, 0}, 1, 10));
  ASSERT_TRUE(s.restore_started({1, 1, 0}, 1, 11));
  EXPECT_EQ(s.finish_restore(/*reattach=*/true), 2u);
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  EXPECT_FALSE(s.reattach_task(1, {1, 0, 0}, 10, /*variant=*/2));  // it has two variants
  EXPECT_TRUE(s.reattach_task(1, {1, 0, 0}, 10, 1));
  EXPECT_TRUE(s.reattach_task(1, {1, 1, 0}, 11, 1));
  s.check_invariants();
  // One CPU each: the worker is full, so task 2 is only queued there.
  EXPECT_EQ(assigned(s), (std::vector<std::string>{}));
  EXPECT_EQ(s.running_tasks(1), 2u);
  EXPECT_TRUE(s.task_finished(1, {1, 0, 0}, 30));
  s.check_invariants();
  // One CPU free: task 2 runs there with its second variant.
  std::vector<Assignment> next = s.schedule().assign;
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].key.task, 2u);
  EXPECT_EQ(next[0].variant, 1u);
  s.check_invariants();
}

TEST(SchedulerReattachTest, ACanceledOrphanIsStale) {
  Scheduler s;
  crashed_campaign(s);
  auto set = IdSet::parse("1");
  ASSERT_TRUE(set.is_ok());
  EXPECT_TRUE(s.cancel_tasks(1, *set, 40).empty());  // nobody holds it to kill it now
  s.check_invariants();
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  EXPECT_FALSE(s.reattach_task(1, {1, 1, 0}, 11));
  EXPECT_EQ(s.task(1, 1)->state, TaskState::kCanceled);
  s.cancel_job(1, 50);
  s.check_invariants();
  EXPECT_EQ(s.orphan_count(), 0u);
  EXPECT_FALSE(s.reattach_task(1, {1, 2, 0}, 12));
}

TEST(SchedulerReattachTest, TheGraceEndRequeuesWhatNobodyClaimedAsANewInstance) {
  Scheduler s;
  crashed_campaign(s);
  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  ASSERT_TRUE(s.reattach_task(1, {1, 1, 0}, 11));
  std::vector<TaskKey> back = s.end_reattach();
  s.check_invariants();
  ASSERT_EQ(back.size(), 2u);
  EXPECT_EQ(back[0], (TaskKey{1, 2, 1}));
  EXPECT_EQ(back[1], (TaskKey{1, 3, 1}));
  EXPECT_EQ(s.orphan_count(), 0u);
  // A claim after the grace is stale.
  EXPECT_FALSE(s.reattach_task(1, {1, 2, 0}, 12));
  EXPECT_EQ(assigned(s), (std::vector<std::string>{"2/1", "3/1", "4/0", "5/0"}));
}

TEST(SchedulerReattachTest, ReplayOfAReattachRebuildsTheSameState) {
  // The first restart with reattach, a claim of task 1 journaled, then a second crash within
  // the grace: the replay gives the same orphans with the same instances.
  Scheduler s;
  add_job(s, 1, "0-5");
  s.restore_reserved(1, 4);
  ASSERT_TRUE(s.restore_started({1, 1, 0}, 1, 11));
  ASSERT_TRUE(s.restore_started({1, 2, 0}, 2, 12));
  EXPECT_EQ(s.restore_orphans(), 4u);  // the serverStarted record (reattach): 0-3
  ASSERT_TRUE(s.restore_reattached({1, 1, 0}, 1, 11));
  EXPECT_FALSE(s.restore_reattached({1, 4, 0}, 1, 11));  // never an orphan
  EXPECT_EQ(s.finish_restore(/*reattach=*/true), 4u);    // 0, 2, 3 still, 1 running again
  s.check_invariants();
  for (TaskId t : {0u, 1u, 2u, 3u}) {
    EXPECT_EQ(s.task(1, t)->instance, 0u) << t;
    EXPECT_TRUE(s.task(1, t)->orphan) << t;
  }
  // ...and once a grace ended in the history, its orphans came back as instance 1.
  Scheduler r;
  add_job(r, 1, "0-5");
  r.restore_reserved(1, 4);
  ASSERT_TRUE(r.restore_started({1, 1, 0}, 1, 11));
  r.restore_orphans();
  ASSERT_TRUE(r.restore_reattached({1, 1, 0}, 1, 11));
  EXPECT_EQ(r.restore_reattach_ended(), 3u);           // 0, 2 and 3 (0 was never finished)
  EXPECT_EQ(r.finish_restore(/*reattach=*/true), 1u);  // 1 is running: an orphan again
  r.check_invariants();
  EXPECT_EQ(r.task(1, 2)->instance, 1u);
  EXPECT_FALSE(r.task(1, 2)->orphan);
  EXPECT_TRUE(r.task(1, 1)->orphan);
  ASSERT_TRUE(r.add_worker(5, 8).is_ok());
  EXPECT_EQ(assigned(r), (std::vector<std::string>{"0/1", "2/1", "3/1", "4/0", "5/0"}));
}

TEST(SchedulerReattachTest, ARestoreWithoutReattachBumpsOrphansToo) {
  Scheduler s;
  add_job(s, 1, "0-3");
  ASSERT_TRUE(s.restore_started({1, 1, 0}, 1, 11));
  EXPECT_EQ(s.restore_orphans(), 1u);
  EXPECT_EQ(s.finish_restore(), 1u);
  s.check_invariants();
  EXPECT_EQ(s.task(1, 1)->instance, 1u);
  EXPECT_EQ(s.orphan_count(), 0u);
}

}  // namespace
}  // namespace hq::sched

namespace hq::sched {
namespace {

// An orphan canceled during the grace, then a second crash before the grace ended: the replay
// meets the orphan mark of the first restart and then the cancel. The task stays canceled, is
// no orphan, and the end of the grace does not queue it again.
TEST(SchedulerReattachTest, AnOrphanCanceledBeforeASecondCrashStaysCanceled) {
  Scheduler s;
  ASSERT_TRUE(s.add_job({1, IdSet::range(0, 1), 1, 0}).is_ok());
  ASSERT_TRUE(s.restore_started({1, 0, 0}, 1, 10));
  EXPECT_EQ(s.restore_orphans(), 1u);  // the first restart, with reattach
  ASSERT_TRUE(s.restore_ended({1, 0, 0}, TaskState::kCanceled, 30));
  s.finish_restore(/*reattach=*/true);
  s.check_invariants();
  EXPECT_EQ(s.orphan_count(), 0u);
  EXPECT_TRUE(s.end_reattach().empty());
  s.check_invariants();
  EXPECT_EQ(s.task(1, 0)->state, TaskState::kCanceled);
  EXPECT_EQ(s.task(1, 0)->end_time, 30);
}

}  // namespace
}  // namespace hq::sched
