// Dependencies between the tasks of a job (JobSpec::deps): readiness, abort propagation with its
// cause, cancel, and restore of a half-done graph. The invariant checker runs after every step.

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

JobSpec graph_spec(JobId id, const std::string& ids, std::vector<TaskDeps> deps) {
  auto set = IdSet::parse(ids);
  EXPECT_TRUE(set.is_ok()) << ids;
  JobSpec spec{id, *set, 1, 0};
  spec.deps = std::move(deps);
  return spec;
}

// The tasks the next schedule() assigns, in increasing id order.
std::vector<TaskId> assigned(Scheduler& s, std::vector<TaskKey>* keys = nullptr) {
  std::vector<TaskId> out;
  for (const Assignment& a : s.schedule().assign) {
    out.push_back(a.key.task);
    if (keys) keys->push_back(a.key);
  }
  std::sort(out.begin(), out.end());
  s.check_invariants();
  return out;
}

// Starts and finishes the task (instance 0) on worker 1.
void finish(Scheduler& s, JobId job, TaskId task, int64_t time = 10) {
  ASSERT_TRUE(s.task_started(1, {job, task, 0}, time));
  s.check_invariants();
  ASSERT_TRUE(s.task_finished(1, {job, task, 0}, time + 1));
  s.check_invariants();
}

void fail(Scheduler& s, JobId job, TaskId task, int64_t time = 10) {
  ASSERT_TRUE(s.task_started(1, {job, task, 0}, time));
  ASSERT_TRUE(s.task_failed(1, {job, task, 0}, time + 1, "exit code 1"));
  s.check_invariants();
}

using Ids = std::vector<TaskId>;

TEST(SchedulerGraphTest, ChainRunsOneTaskAtATime) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-4", {{2, {1}}, {3, {2}}, {4, {3}}})).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.waiting_tasks(), 1u);  // only the head of the chain is ready
  EXPECT_EQ(s.dependency_count(1), 3u);
  EXPECT_EQ(s.dependencies(1, 3), (Ids{2}));
  for (TaskId t = 1; t <= 4; ++t) {
    EXPECT_EQ(assigned(s), (Ids{t}));
    EXPECT_EQ(assigned(s), Ids{});  // nothing else until it finishes
    finish(s, 1, t);
  }
  EXPECT_EQ(s.counts(1)[TaskState::kFinished], 4u);
  EXPECT_EQ(s.job_state(1), JobState::kFinished);
  EXPECT_EQ(s.take_completed_jobs(), (std::vector<JobId>{1}));
}

TEST(SchedulerGraphTest, DiamondJoinsOnlyWhenBothBranchesFinish) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-4", {{2, {1}}, {3, {1}}, {4, {2, 3}}})).is_ok());
  EXPECT_EQ(assigned(s), (Ids{1}));
  finish(s, 1, 1);
  EXPECT_EQ(assigned(s), (Ids{2, 3}));
  finish(s, 1, 2);
  EXPECT_EQ(s.unfinished_dependencies(1, 4), (Ids{3}));
  EXPECT_EQ(assigned(s), Ids{});
  finish(s, 1, 3);
  EXPECT_EQ(s.unfinished_dependencies(1, 4), Ids{});
  EXPECT_EQ(assigned(s), (Ids{4}));
  finish(s, 1, 4);
  EXPECT_TRUE(s.counts(1).complete());
}

TEST(SchedulerGraphTest, FanInOfTenThousand) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 64).is_ok());
  constexpr TaskId kN = 10000;
  TaskDeps reduce{kN + 1, {}};
  for (TaskId t = 1; t <= kN; ++t) reduce.deps.push_back(t);
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-10001", {reduce})).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.waiting_tasks(), kN);
  uint32_t done = 0;
  while (done < kN) {
    std::vector<TaskKey> keys;
    assigned(s, &keys);
    ASSERT_FALSE(keys.empty());
    for (const TaskKey& k : keys) {
      ASSERT_NE(k.task, kN + 1) << "the reduce ran before all its dependencies finished";
      ASSERT_TRUE(s.task_finished(1, k, 5));
      ++done;
    }
  }
  s.check_invariants();
  EXPECT_EQ(assigned(s), (Ids{kN + 1}));
}

TEST(SchedulerGraphTest, FailureAbortsEveryTransitiveDependantNamingTheCause) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  // 1 -> 2 -> 3 -> 4, and 5 independent, 6 depends on 5 and 3.
  ASSERT_TRUE(s.add_job(graph_spec(7, "1-6", {{2, {1}}, {3, {2}}, {4, {3}}, {6, {5, 3}}})).is_ok());
  EXPECT_EQ(assigned(s), (Ids{1, 5}));
  finish(s, 7, 1);
  finish(s, 7, 5);
  EXPECT_EQ(assigned(s), (Ids{2}));
  fail(s, 7, 2, 40);
  for (TaskId t : {3, 4, 6}) {
    auto v = s.task(7, t);
    ASSERT_TRUE(v);
    EXPECT_EQ(v->state, TaskState::kAborted) << t;
    ASSERT_TRUE(v->aborted_by) << t;
    EXPECT_EQ(*v->aborted_by, (TaskRef{7, 2})) << t;
    EXPECT_EQ(v->end_time, 41);
  }
  EXPECT_FALSE(s.task(7, 2)->aborted_by);  // it failed by itself
  EXPECT_EQ(s.counts(7)[TaskState::kAborted], 3u);
  EXPECT_EQ(s.job_state(7), JobState::kFailed);
  EXPECT_EQ(s.take_completed_jobs(), (std::vector<JobId>{7}));
  EXPECT_EQ(assigned(s), Ids{});
}

TEST(SchedulerGraphTest, CancelOfADependencyAbortsItsDependantsAndKillsIt) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-4", {{3, {1}}, {4, {2, 3}}})).is_ok());
  EXPECT_EQ(assigned(s), (Ids{1, 2}));
  ASSERT_TRUE(s.task_started(1, {1, 1, 0}, 5));
  auto kills = s.cancel_tasks(1, *IdSet::parse("1"), 9);
  s.check_invariants();
  ASSERT_EQ(kills.size(), 1u);
  EXPECT_EQ(kills[0].key.task, 1u);
  EXPECT_EQ(s.task(1, 1)->state, TaskState::kCanceled);
  EXPECT_EQ(s.task(1, 3)->state, TaskState::kAborted);
  EXPECT_EQ(*s.task(1, 4)->aborted_by, (TaskRef{1, 1}));
  EXPECT_EQ(s.task(1, 2)->state, TaskState::kWaiting);  // unrelated: still held, goes on
  // The worker reports the killed task's end: only its resources come back.
  EXPECT_TRUE(s.task_failed(1, {1, 1, 0}, 10, "killed"));
  s.check_invariants();
  finish(s, 1, 2);
  EXPECT_TRUE(s.counts(1).complete());
  EXPECT_EQ(s.job_state(1), JobState::kAborted);
}

TEST(SchedulerGraphTest, CancelOfAQueuedReadyTaskLeavesTheQueue) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 1).is_ok());
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-3", {{3, {2}}})).is_ok());
  EXPECT_EQ(s.waiting_tasks(), 2u);
  s.cancel_tasks(1, *IdSet::parse("2"), 5);
  s.check_invariants();
  EXPECT_EQ(s.waiting_tasks(), 1u);
  EXPECT_EQ(s.task(1, 3)->state, TaskState::kAborted);
  EXPECT_EQ(assigned(s), (Ids{1}));
}

TEST(SchedulerGraphTest, ArrayJobsCancelSingleTasksToo) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job({1, *IdSet::parse("0-9"), 1, 0}).is_ok());
  s.cancel_tasks(1, *IdSet::parse("3,5"), 5);
  s.check_invariants();
  EXPECT_EQ(s.waiting_tasks(), 8u);
  std::vector<TaskId> all;
  for (int round = 0; round < 10; ++round) {
    std::vector<TaskKey> keys;
    assigned(s, &keys);
    for (const TaskKey& k : keys) {
      all.push_back(k.task);
      ASSERT_TRUE(s.task_finished(1, k, 6));
    }
  }
  std::sort(all.begin(), all.end());
  EXPECT_EQ(all, (Ids{0, 1, 2, 4, 6, 7, 8, 9}));
}

TEST(SchedulerGraphTest, CancelingTheJobEndsWaitingDependantsCanceled) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-3", {{2, {1}}, {3, {2}}})).is_ok());
  EXPECT_EQ(assigned(s), (Ids{1}));
  auto kills = s.cancel_job(1, 5);
  s.check_invariants();
  EXPECT_EQ(kills.size(), 1u);
  EXPECT_EQ(s.counts(1)[TaskState::kCanceled], 3u);
}

TEST(SchedulerGraphTest, CrashLimitFailureAbortsDependants) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  JobSpec spec = graph_spec(1, "1-2", {{2, {1}}});
  spec.crash_limit = 1;
  ASSERT_TRUE(s.add_job(spec).is_ok());
  EXPECT_EQ(assigned(s), (Ids{1}));
  ASSERT_TRUE(s.task_started(1, {1, 1, 0}, 5));
  s.remove_worker(1, 8, /*lost=*/true);
  s.check_invariants();
  EXPECT_EQ(s.task(1, 1)->state, TaskState::kFailed);
  EXPECT_EQ(*s.task(1, 2)->aborted_by, (TaskRef{1, 1}));
  EXPECT_TRUE(s.counts(1).complete());
}

TEST(SchedulerGraphTest, LostWorkerPutsReadyTasksBackButNotTheirDependants) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-2", {{2, {1}}})).is_ok());
  EXPECT_EQ(assigned(s), (Ids{1}));
  ASSERT_TRUE(s.task_started(1, {1, 1, 0}, 5));
  s.remove_worker(1, 8);
  s.check_invariants();
  EXPECT_EQ(s.waiting_tasks(), 1u);
  ASSERT_TRUE(s.add_worker(2, 2).is_ok());
  std::vector<TaskKey> keys;
  EXPECT_EQ(assigned(s, &keys), (Ids{1}));
  EXPECT_EQ(keys[0].instance, 1u);
}

TEST(SchedulerGraphTest, RefusesBadGraphs) {
  Scheduler s;
  auto cycle = s.add_job(graph_spec(1, "1-3", {{1, {3}}, {2, {1}}, {3, {2}}}));
  ASSERT_FALSE(cycle.is_ok());
  EXPECT_NE(cycle.message().find("cycle"), std::string::npos) << cycle.message();
  EXPECT_NE(cycle.message().find("1 -> "), std::string::npos) << cycle.message();
  auto unknown = s.add_job(graph_spec(1, "1-3", {{2, {9}}}));
  ASSERT_FALSE(unknown.is_ok());
  EXPECT_NE(unknown.message().find("task 9"), std::string::npos) << unknown.message();
  auto self = s.add_job(graph_spec(1, "1-3", {{2, {2}}}));
  ASSERT_FALSE(self.is_ok());
  EXPECT_NE(self.message().find("itself"), std::string::npos) << self.message();
  auto twice = s.add_job(graph_spec(1, "1-3", {{2, {1}}, {2, {3}}}));
  EXPECT_FALSE(twice.is_ok());
  EXPECT_FALSE(Scheduler::validate_job(graph_spec(1, "1-3", {{1, {3}}, {3, {1}}})).is_ok());
  EXPECT_FALSE(s.has_job(1));
  // A job whose deps lists have no edges is an array job after all.
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-3", {{2, {}}})).is_ok());
  EXPECT_EQ(s.dependency_count(1), 0u);
  EXPECT_EQ(s.fresh_cursor(1), 0u);
  s.check_invariants();
}

TEST(SchedulerGraphTest, RestoreOfAHalfDoneGraph) {
  // prepare (1) -> sims 2..5 -> reduce (6); and 7 -> 8 where 7 failed.
  auto make = [] {
    auto s = std::make_unique<Scheduler>();
    std::vector<TaskDeps> deps{{6, {2, 3, 4, 5}}, {8, {7}}};
    for (TaskId t = 2; t <= 5; ++t) deps.push_back({t, {1}});
    EXPECT_TRUE(s->add_job(graph_spec(1, "1-8", deps)).is_ok());
    return s;
  };
  auto s = make();
  ASSERT_TRUE(s->restore_started({1, 1, 0}, 1, 10));
  ASSERT_TRUE(s->restore_ended({1, 1, 0}, TaskState::kFinished, 11));
  ASSERT_TRUE(s->restore_started({1, 2, 0}, 1, 12));
  ASSERT_TRUE(s->restore_ended({1, 2, 0}, TaskState::kFinished, 13));
  ASSERT_TRUE(s->restore_started({1, 3, 0}, 1, 12));  // running when the server died
  ASSERT_TRUE(s->restore_started({1, 7, 0}, 1, 12));
  ASSERT_TRUE(s->restore_ended({1, 7, 0}, TaskState::kFailed, 14, "exit code 2"));
  // Running 3 and the ready 4, 5 may have been handed out: a new instance each.
  EXPECT_EQ(s->finish_restore(), 3u);
  s->check_invariants();
  EXPECT_EQ(s->task(1, 8)->state, TaskState::kAborted);
  EXPECT_EQ(*s->task(1, 8)->aborted_by, (TaskRef{1, 7}));
  EXPECT_EQ(s->task(1, 8)->end_time, 14);
  EXPECT_EQ(s->task(1, 6)->instance, 0u);  // never ready: not a new instance
  EXPECT_EQ(s->take_completed_jobs(), std::vector<JobId>{});
  ASSERT_TRUE(s->add_worker(1, 8).is_ok());
  std::vector<TaskKey> keys;
  EXPECT_EQ(assigned(*s, &keys), (Ids{3, 4, 5}));  // finished 1 and 2 never run again
  for (const TaskKey& k : keys) {
    EXPECT_EQ(k.instance, 1u);
    ASSERT_TRUE(s->task_finished(1, k, 20));
  }
  s->check_invariants();
  keys.clear();
  EXPECT_EQ(assigned(*s, &keys), (Ids{6}));
  ASSERT_TRUE(s->task_finished(1, keys[0], 30));
  s->check_invariants();
  EXPECT_EQ(s->job_state(1), JobState::kFailed);
  EXPECT_EQ(s->counts(1)[TaskState::kFinished], 6u);
}

TEST(SchedulerGraphTest, RestoreAcrossAnEarlierRestartKeepsPendingTasksFresh) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(graph_spec(1, "1-3", {{2, {1}}, {3, {2}}})).is_ok());
  EXPECT_EQ(s.restore_restart(), 1u);  // a restart while 1 was ready: 1 gets instance 1
  ASSERT_TRUE(s.restore_started({1, 1, 1}, 1, 10));
  ASSERT_TRUE(s.restore_ended({1, 1, 1}, TaskState::kFinished, 11));
  EXPECT_EQ(s.finish_restore(), 1u);  // 2 was ready at the end
  s.check_invariants();
  EXPECT_EQ(s.task(1, 2)->instance, 1u);
  EXPECT_EQ(s.task(1, 3)->instance, 0u);
  EXPECT_EQ(s.waiting_tasks(), 1u);
}

// Random graphs (each task depends on a few earlier ones) under random finishes, failures,
// cancels and lost workers; the invariant checker after every step, and at the end every task
// ended, no task started before its dependencies finished, and every abort names an ended task.
TEST(SchedulerGraphTest, RandomGraphsUnderRandomEvents) {
  std::mt19937 rng(12);
  for (int round = 0; round < 20; ++round) {
    Scheduler s;
    WorkerId next_worker = 1;
    std::vector<WorkerId> workers;
    for (int w = 0; w < 3; ++w) {
      ASSERT_TRUE(s.add_worker(next_worker, 1 + rng() % 3).is_ok());
      workers.push_back(next_worker++);
    }
    const TaskId n = 20 + rng() % 60;
    std::vector<TaskDeps> deps;
    for (TaskId t = 2; t <= n; ++t) {
      TaskDeps d{t, {}};
      const int k = rng() % 4;
      for (int j = 0; j < k; ++j) d.deps.push_back(1 + rng() % (t - 1));
      std::sort(d.deps.begin(), d.deps.end());
      d.deps.erase(std::unique(d.deps.begin(), d.deps.end()), d.deps.end());
      deps.push_back(std::move(d));
    }
    JobSpec spec = graph_spec(1, "1-" + std::to_string(n), deps);
    if (round % 2 == 1) {
      // Heterogeneous: each task in one of up to three parts of other CPUs and priorities,
      // their ids interleaved, dependencies across parts.
      const uint32_t nparts = 2 + rng() % 2;
      std::vector<IdSetBuilder> ids(nparts);
      for (TaskId t = 1; t <= n; ++t) ids[rng() % nparts].add(t);
      for (uint32_t k = 0; k < nparts; ++k) {
        IdSet set = std::move(ids[k]).build();
        if (set.empty()) continue;
        spec.parts.push_back(
            PartSpec{std::move(set), 1 + k % 2, static_cast<int32_t>(rng() % 3), 0, {}, 0, 0});
      }
    }
    ASSERT_TRUE(s.add_job(spec).is_ok());
    s.check_invariants();
    std::vector<Assignment> held;
    int64_t now = 1;
    for (int step = 0; step < 2000 && !s.counts(1).complete(); ++step) {
      ++now;
      for (const Assignment& a : s.schedule(now).assign) {
        // Every dependency finished when it is handed out.
        EXPECT_TRUE(s.unfinished_dependencies(1, a.key.task).empty());
        held.push_back(a);
      }
      s.check_invariants();
      if (held.empty()) {
        if (rng() % 4 == 0) {
          ASSERT_TRUE(s.add_worker(next_worker, 2).is_ok());
          workers.push_back(next_worker++);
        }
        continue;
      }
      const size_t pick = rng() % held.size();
      const Assignment a = held[pick];
      held.erase(held.begin() + static_cast<std::ptrdiff_t>(pick));
      switch (rng() % 10) {
        case 0:
          s.task_failed(a.worker, a.key, now, "boom");
          break;
        case 1:
          s.cancel_tasks(1, IdSet::single(a.key.task), now);
          s.task_finished(a.worker, a.key, now);  // the worker reports the kill
          break;
        case 2: {
          s.remove_worker(a.worker, now, rng() % 2);
          std::erase_if(held, [&a](const Assignment& h) { return h.worker == a.worker; });
          std::erase(workers, a.worker);
          ASSERT_TRUE(s.add_worker(next_worker, 2).is_ok());
          workers.push_back(next_worker++);
          break;
        }
        default:
          s.task_started(a.worker, a.key, now);
          s.task_finished(a.worker, a.key, now);
      }
      s.check_invariants();
    }
    ASSERT_TRUE(s.counts(1).complete()) << "round " << round;
    s.for_each_task(1, [&](const TaskView& v) {
      if (v.state == TaskState::kFinished) {
        for (TaskId d : s.dependencies(1, v.id)) {
          EXPECT_EQ(s.task(1, d)->state, TaskState::kFinished);
        }
      }
      if (v.aborted_by) {
        const TaskState cause = s.task(1, v.aborted_by->task)->state;
        EXPECT_TRUE(cause == TaskState::kFailed || cause == TaskState::kCanceled);
      }
    });
  }
}

}  // namespace
}  // namespace hq::sched
