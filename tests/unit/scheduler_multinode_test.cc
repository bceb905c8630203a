// Multi-node tasks (`hq submit --nodes N`): whole idle workers of one group, secondaries that take
// nothing else, and what happens when any of the nodes is lost.

#include <gtest/gtest.h>

#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

class MultiNodeTest : public ::testing::Test {
 protected:
  void worker(WorkerId id, uint32_t cpus, const std::string& group = "default") {
    ResourceDescriptor d;
    d.set(*parse_cpu_definition(std::to_string(cpus)));
    ASSERT_TRUE(s.add_worker(id, d, 0, group).is_ok());
    s.check_invariants();
  }
  void job(JobId id, const std::string& ids, uint32_t nodes, int32_t priority = 0) {
    JobSpec spec;
    spec.id = id;
    spec.task_ids = *IdSet::parse(ids);
    spec.priority = priority;
    spec.nodes = nodes;
    ASSERT_TRUE(s.add_job(spec).is_ok());
    s.check_invariants();
  }
  Decisions schedule() {
    Decisions d = s.schedule();
    s.check_invariants();
    return d;
  }
  Scheduler s;
};

TEST_F(MultiNodeTest, TakesWholeIdleWorkersOfOneGroup) {
  worker(1, 4, "a");
  worker(2, 8, "b");
  worker(3, 4, "a");
  job(1, "0-1", 2);
  Decisions d = schedule();
  ASSERT_EQ(d.assign.size(), 1u);  // one pair of group a; b has a single worker
  EXPECT_EQ(d.assign[0].worker, 1u);
  EXPECT_EQ(d.assign[0].others, (std::vector<WorkerId>{3}));
  EXPECT_EQ(s.serving(3), std::optional<TaskKey>(d.assign[0].key));
  EXPECT_FALSE(s.serving(1));
  // Neither node takes single tasks meanwhile; worker 2 does.
  job(2, "0-9", 0);
  Decisions small = schedule();
  for (const Assignment& a : small.assign) EXPECT_EQ(a.worker, 2u);
  EXPECT_FALSE(small.assign.empty());
  auto fits = s.explain(1);
  ASSERT_EQ(fits.size(), 3u);
  EXPECT_FALSE(fits[0].fits_now);
  EXPECT_NE(fits[0].reason.find("whole idle workers"), std::string::npos);
  // The task ends: both nodes take work again, and the second task of job 1 goes first.
  ASSERT_TRUE(s.task_started(1, d.assign[0].key, 10));
  ASSERT_TRUE(s.task_finished(1, d.assign[0].key, 20));
  s.check_invariants();
  EXPECT_FALSE(s.serving(3));
  Decisions next = schedule();
  ASSERT_FALSE(next.assign.empty());
  EXPECT_EQ(next.assign[0].key.job, 1u);
  EXPECT_EQ(next.assign[0].others.size(), 1u);
}

TEST_F(MultiNodeTest, WaitsUntilEnoughWorkersAreIdle) {
  worker(1, 2);
  job(1, "0", 2);
  EXPECT_TRUE(schedule().assign.empty());
  auto fits = s.explain(1);
  ASSERT_EQ(fits.size(), 1u);
  EXPECT_NE(fits[0].reason.find("only 1 of the 2 workers"), std::string::npos) << fits[0].reason;
  worker(2, 2);
  Decisions d = schedule();
  ASSERT_EQ(d.assign.size(), 1u);
  EXPECT_EQ(d.assign[0].others.size(), 1u);
}

TEST_F(MultiNodeTest, LosingASecondaryRequeuesTheTaskAndKillsItOnTheRoot) {
  worker(1, 2);
  worker(2, 2);
  job(1, "0", 2);
  job(1 + 1, "0", 0, -1);
  Decisions d = schedule();
  ASSERT_EQ(d.assign.size(), 1u);  // the single task has no idle worker left
  const TaskKey key = d.assign[0].key;
  const WorkerId secondary = d.assign[0].others.at(0);
  const WorkerId root = d.assign[0].worker;
  ASSERT_TRUE(s.task_started(root, key, 10));
  auto back = s.remove_worker(secondary, 20, /*lost=*/true);
  s.check_invariants();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_EQ(back[0], (TaskKey{key.job, key.task, key.instance + 1}));
  EXPECT_EQ(s.crash_count(key.job, key.task), 1u);
  auto kills = s.take_kills();
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].worker, root);
  EXPECT_EQ(kills[0].key, key);
  // The root's report of the killed instance is stale; the root takes single tasks again.
  EXPECT_FALSE(s.task_failed(root, key, 30, "canceled"));
  Decisions next = schedule();
  ASSERT_EQ(next.assign.size(), 1u);
  EXPECT_EQ(next.assign[0].key.job, 2u);
  worker(3, 2);
  // Once the root is free, the multi-node task gets two workers again.
  ASSERT_TRUE(s.task_started(root, next.assign[0].key, 40));
  ASSERT_TRUE(s.task_finished(root, next.assign[0].key, 50));
  Decisions again = schedule();
  ASSERT_EQ(again.assign.size(), 1u);
  EXPECT_EQ(again.assign[0].key, back[0]);
}

TEST_F(MultiNodeTest, LosingTheRootFreesTheSecondaries) {
  worker(1, 2);
  worker(2, 2);
  job(1, "0", 2);
  Decisions d = schedule();
  ASSERT_EQ(d.assign.size(), 1u);
  const WorkerId secondary = d.assign[0].others.at(0);
  auto back = s.remove_worker(d.assign[0].worker, 5, /*lost=*/false);
  s.check_invariants();
  ASSERT_EQ(back.size(), 1u);
  EXPECT_FALSE(s.serving(secondary));
  EXPECT_EQ(s.crash_count(1, 0), 0u);  // queued, not running; and stopped on purpose
}

}  // namespace
}  // namespace hq::sched

namespace hq::sched {
namespace {

// Two 1-CPU workers kept busy by a stream of 1-CPU tasks of a lower priority: the multi-node task
// reserves both, they drain, and it runs.
TEST_F(MultiNodeTest, NotStarvedByAStreamOfSingleTasks) {
  worker(1, 1);
  worker(2, 1);
  job(1, "0-999", 0, 0);
  std::vector<Assignment> running;
  auto start_all = [&](const Decisions& d) {
    for (const Assignment& a : d.assign) {
      ASSERT_TRUE(s.task_started(a.worker, a.key, 1));
      running.push_back(a);
    }
  };
  start_all(schedule());  // both busy, 2 more queued
  job(2, "0", 2, 1);      // higher priority, needs both workers whole
  int rounds = 0;
  bool started = false;
  while (!started && rounds++ < 20) {
    ASSERT_FALSE(running.empty());
    Assignment done = running.front();
    running.erase(running.begin());
    ASSERT_TRUE(s.task_finished(done.worker, done.key, 2));
    s.check_invariants();
    Decisions d = schedule();
    for (const Assignment& a : d.assign) started = started || a.key.job == 2;
    // Queued single tasks start as their worker frees up; never on a reserved, idle worker.
    std::vector<Assignment> queued;
    for (const Assignment& a : d.assign) {
      if (a.key.job == 1) queued.push_back(a);
    }
    EXPECT_TRUE(started || queued.empty() || rounds <= 2)
        << "round " << rounds << ": single tasks still go to workers kept for the big task";
    start_all(d);
  }
  EXPECT_TRUE(started) << "the multi-node task never ran";
  EXPECT_LE(rounds, 6);
}

}  // namespace
}  // namespace hq::sched
