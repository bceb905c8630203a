#include "scheduler/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace hq::sched {
namespace {

std::string message_of(const Status& s) { return s.is_ok() ? std::string() : s.message(); }

// The scheduler under test; every call that may change state is followed by check_invariants().
class Sim {
 public:
  explicit Sim(SchedulerConfig config = {}) : s(config) { s.check_invariants(); }

  void add_worker(WorkerId id, uint32_t cpus) {
    Status st = s.add_worker(id, cpus);
    EXPECT_TRUE(st.is_ok()) << message_of(st);
    s.check_invariants();
  }
  Status try_add_worker(WorkerId id, uint32_t cpus) {
    Status st = s.add_worker(id, cpus);
    s.check_invariants();
    return st;
  }
  std::vector<TaskKey> remove_worker(WorkerId id) {
    auto out = s.remove_worker(id);
    s.check_invariants();
    return out;
  }
  void add_job(JobId id, const std::string& ids, uint32_t cpus = 1, int32_t priority = 0) {
    Status st = try_add_job(id, ids, cpus, priority);
    EXPECT_TRUE(st.is_ok()) << message_of(st);
  }
  Status try_add_job(JobId id, const std::string& ids, uint32_t cpus = 1, int32_t priority = 0) {
    Result<IdSet> set = IdSet::parse(ids);
    EXPECT_TRUE(set.is_ok()) << ids;
    Status st = s.add_job({id, set.is_ok() ? *set : IdSet(), cpus, priority});
    s.check_invariants();
    return st;
  }
  std::vector<Assignment> cancel_job(JobId id, int64_t now) {
    auto out = s.cancel_job(id, now);
    s.check_invariants();
    return out;
  }
  bool started(WorkerId w, TaskKey k, int64_t t = 1) {
    bool r = s.task_started(w, k, t);
    s.check_invariants();
    return r;
  }
  bool finished(WorkerId w, TaskKey k, int64_t t = 2) {
    bool r = s.task_finished(w, k, t);
    s.check_invariants();
    return r;
  }
  bool failed(WorkerId w, TaskKey k, int64_t t, std::string error) {
    bool r = s.task_failed(w, k, t, std::move(error));
    s.check_invariants();
    return r;
  }
  bool retracted(WorkerId w, TaskKey k) {
    bool r = s.task_retracted(w, k);
    s.check_invariants();
    return r;
  }
  Decisions schedule() {
    Decisions d = s.schedule();
    s.check_invariants();
    return d;
  }
  std::vector<JobId> take_completed() {
    auto out = s.take_completed_jobs();
    s.check_invariants();
    return out;
  }
  // Starts and finishes every assignment of `d`.
  void run_all(const Decisions& d, int64_t t = 10) {
    for (const Assignment& a : d.assign) {
      EXPECT_TRUE(started(a.worker, a.key, t));
      EXPECT_TRUE(finished(a.worker, a.key, t + 1));
    }
  }
  TaskView view(JobId job, TaskId task) const {
    std::optional<TaskView> v = s.task(job, task);
    EXPECT_TRUE(v.has_value()) << "job " << job << " task " << task;
    return v.value_or(TaskView{});
  }

  Scheduler s;
};

std::vector<TaskRef> refs(const std::vector<Assignment>& as) {
  std::vector<TaskRef> out;
  for (const Assignment& a : as) out.push_back(a.key.ref());
  return out;
}

std::map<WorkerId, uint32_t> tasks_per_worker(const std::vector<Assignment>& as) {
  std::map<WorkerId, uint32_t> out;
  for (const Assignment& a : as) ++out[a.worker];
  return out;
}

// Every user-visible fact, to prove that a call changed nothing.
std::string snapshot(const Scheduler& s, const std::vector<WorkerId>& workers) {
  std::string out;
  for (JobId j : s.job_ids()) {
    TaskCounts c = s.counts(j);
    out += "job " + std::to_string(j) + ":";
    for (uint32_t n : c.by_state) out += " " + std::to_string(n);
    s.for_each_task(j, [&](const TaskView& v) {
      out += " [" + std::to_string(v.id) + " " + to_string(v.state) + " i" +
             std::to_string(v.instance) + " w" + std::to_string(v.worker) + (v.queued ? " q" : "") +
             " " + std::to_string(v.start_time) + "-" + std::to_string(v.end_time) +
             (v.error ? " " + *v.error : "") + "]";
    });
    out += "\n";
  }
  for (WorkerId w : workers) {
    out += "worker " + std::to_string(w) + ": " + std::to_string(s.held_tasks(w)) + " " +
           std::to_string(s.running_tasks(w)) + "\n";
  }
  out += "waiting " + std::to_string(s.waiting_tasks());
  return out;
}

TaskCounts make_counts(std::initializer_list<std::pair<TaskState, uint32_t>> items) {
  TaskCounts c;
  for (auto [s, n] : items) c.by_state[static_cast<int>(s)] = n;
  return c;
}

// --- Pure functions -----------------------------------------------------------------------------

TEST(SchedulerTest, DeriveJobStateTable) {
  using S = TaskState;
  using J = JobState;
  struct Row {
    TaskCounts counts;
    bool open;
    JobState expected;
  };
  const Row rows[] = {
      {make_counts({}), false, J::kFinished},
      {make_counts({{S::kFinished, 3}}), false, J::kFinished},
      {make_counts({{S::kFinished, 3}, {S::kCanceled, 1}}), false, J::kCanceled},
      {make_counts({{S::kCanceled, 1}, {S::kAborted, 1}}), false, J::kAborted},
      {make_counts({{S::kAborted, 1}, {S::kFailed, 1}, {S::kCanceled, 4}}), false, J::kFailed},
      {make_counts({{S::kFailed, 9}, {S::kWaiting, 1}}), false, J::kWaiting},
      {make_counts({{S::kWaiting, 9}, {S::kRunning, 1}, {S::kFailed, 1}}), false, J::kRunning},
      {make_counts({{S::kRunning, 1}}), false, J::kRunning},
      {make_counts({}), true, J::kOpened},
      {make_counts({{S::kFinished, 2}, {S::kFailed, 1}}), true, J::kOpened},
      {make_counts({{S::kWaiting, 2}}), true, J::kWaiting},
      {make_counts({{S::kRunning, 2}, {S::kWaiting, 1}}), true, J::kRunning},
  };
  for (const Row& r : rows) {
    EXPECT_EQ(derive_job_state(r.counts, r.open), r.expected)
        << "expected " << to_string(r.expected) << " got "
        << to_string(derive_job_state(r.counts, r.open));
  }
  TaskCounts c = make_counts({{S::kWaiting, 1}, {S::kFinished, 2}, {S::kCanceled, 3}});
  EXPECT_EQ(c.total(), 6u);
  EXPECT_FALSE(c.complete());
  EXPECT_TRUE(make_counts({{S::kFinished, 2}, {S::kCanceled, 3}}).complete());
  EXPECT_FALSE(make_counts({{S::kRunning, 1}}).complete());
  EXPECT_STREQ(to_string(TaskState::kAborted), "aborted");
  EXPECT_STREQ(to_string(JobState::kOpened), "opened");
}

// --- Jobs and ids -------------------------------------------------------------------------------

TEST(SchedulerTest, RejectsBadJobsAndWorkers) {
  Sim sim;
  EXPECT_FALSE(sim.try_add_job(1, "1-5,3").is_ok());        // duplicate id
  EXPECT_FALSE(sim.try_add_job(1, "1-9:2,5").is_ok());      // duplicate inside a stepped range
  EXPECT_FALSE(sim.try_add_job(1, "1-3", 0).is_ok());       // zero CPUs
  EXPECT_FALSE(sim.try_add_job(0, "1-3").is_ok());          // reserved id
  EXPECT_FALSE(sim.s.add_job({1, IdSet(), 1, 0}).is_ok());  // no tasks
  EXPECT_FALSE(sim.s.add_job({1, IdSet({IdRange{1, 5, 0}}), 1, 0}).is_ok());  // zero step
  EXPECT_FALSE(sim.s.add_job({1, IdSet({IdRange{5, 1, 1}}), 1, 0}).is_ok());  // reversed
  sim.s.check_invariants();
  EXPECT_FALSE(sim.s.has_job(1));
  EXPECT_EQ(sim.s.last_job_id(), 0u);
  EXPECT_TRUE(sim.try_add_job(1, "1-9:2,2-10:2").is_ok());  // interleaved, no duplicate
  EXPECT_EQ(sim.s.counts(1).total(), 10u);
  Status again = sim.try_add_job(1, "1");
  ASSERT_FALSE(again.is_ok());
  EXPECT_NE(again.message().find("job 1"), std::string::npos) << again.message();

  EXPECT_FALSE(sim.try_add_worker(0, 4).is_ok());
  EXPECT_FALSE(sim.try_add_worker(1, 0).is_ok());
  sim.add_worker(1, 4);
  EXPECT_FALSE(sim.try_add_worker(1, 4).is_ok());
  EXPECT_EQ(sim.s.waiting_tasks(), 10u);
}

TEST(SchedulerTest, SparseIdsMapBothWays) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_job(7, "30-40:2,20,1-10,41", 1, 0);
  EXPECT_TRUE(sim.s.has_job(7));
  EXPECT_EQ(sim.s.last_job_id(), 7u);
  EXPECT_EQ(sim.s.counts(7).total(), 18u);
  std::vector<TaskId> expected = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30, 32, 34, 36, 38, 40, 41};
  std::vector<TaskId> seen;
  sim.s.for_each_task(7, [&](const TaskView& v) {
    seen.push_back(v.id);
    EXPECT_EQ(v.state, TaskState::kWaiting);
    EXPECT_EQ(v.worker, 0u);
    EXPECT_FALSE(v.queued);
  });
  EXPECT_EQ(seen, expected);
  EXPECT_FALSE(sim.s.task(7, 0).has_value());
  EXPECT_FALSE(sim.s.task(7, 11).has_value());
  EXPECT_FALSE(sim.s.task(7, 31).has_value());
  EXPECT_FALSE(sim.s.task(7, 42).has_value());
  EXPECT_FALSE(sim.s.task(8, 1).has_value());
  EXPECT_EQ(sim.view(7, 38).id, 38u);

  // Assigned one at a time in increasing id order.
  sim.add_worker(1, 1);
  std::vector<TaskId> order;
  for (int i = 0; i < 30; ++i) {
    Decisions d = sim.schedule();
    if (d.assign.empty()) break;
    ASSERT_EQ(d.assign.size(), 1u);
    order.push_back(d.assign[0].key.task);
    EXPECT_EQ(sim.view(7, d.assign[0].key.task).worker, 1u);
    sim.run_all(d);
  }
  EXPECT_EQ(order, expected);
  EXPECT_EQ(sim.s.counts(7)[TaskState::kFinished], 18u);
}

// --- Ordering -----------------------------------------------------------------------------------

TEST(SchedulerTest, PriorityThenJobIdThenTaskId) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_job(3, "1-2", 1, 5);
  sim.add_job(1, "1-2", 1, 0);
  sim.add_job(4, "1", 1, -1);
  sim.add_job(2, "5,4", 1, 5);
  sim.add_worker(1, 1);
  std::vector<TaskRef> order;
  for (int i = 0; i < 10; ++i) {
    Decisions d = sim.schedule();
    if (d.assign.empty()) break;
    ASSERT_EQ(d.assign.size(), 1u);
    order.push_back(d.assign[0].key.ref());
    sim.run_all(d);
  }
  std::vector<TaskRef> expected = {{2, 4}, {2, 5}, {3, 1}, {3, 2}, {1, 1}, {1, 2}, {4, 1}};
  EXPECT_EQ(order, expected);
  EXPECT_EQ(sim.s.job_ids(), (std::vector<JobId>{1, 2, 3, 4}));
}

TEST(SchedulerTest, RequeuedTasksGoBeforeFreshOnes) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_job(1, "1-10");
  sim.add_worker(1, 1);
  sim.add_worker(2, 1);
  sim.add_worker(3, 1);
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 3u);  // one task per worker
  EXPECT_EQ(tasks_per_worker(d.assign), (std::map<WorkerId, uint32_t>{{1, 1}, {2, 1}, {3, 1}}));
  std::map<WorkerId, TaskKey> on;
  for (const Assignment& a : d.assign) on[a.worker] = a.key;
  EXPECT_TRUE(sim.started(3, on[3]));
  // Lose workers 3 then 1: their tasks come back, and are reassigned lowest id first.
  auto back3 = sim.remove_worker(3);
  auto back1 = sim.remove_worker(1);
  ASSERT_EQ(back3.size(), 1u);
  ASSERT_EQ(back1.size(), 1u);
  EXPECT_EQ(back3[0], (TaskKey{1, on[3].task, 1}));
  EXPECT_EQ(back1[0], (TaskKey{1, on[1].task, 1}));
  sim.add_worker(4, 3);
  d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 3u);
  TaskId lo = std::min(on[1].task, on[3].task), hi = std::max(on[1].task, on[3].task);
  EXPECT_EQ(d.assign[0].key, (TaskKey{1, lo, 1}));
  EXPECT_EQ(d.assign[1].key, (TaskKey{1, hi, 1}));
  EXPECT_EQ(d.assign[2].key, (TaskKey{1, 4, 0}));  // then the fresh ones, by id
}

// --- Capacity -----------------------------------------------------------------------------------

TEST(SchedulerTest, FillsRealCapacityOfEveryWorkerBeforeQueueing) {
  {
    // A small and a big worker: the big one must not idle while the small one queues.
    Sim sim;
    sim.add_worker(1, 2);
    sim.add_worker(2, 8);
    sim.add_job(1, "1-10");
    Decisions d = sim.schedule();
    EXPECT_EQ(tasks_per_worker(d.assign), (std::map<WorkerId, uint32_t>{{1, 2}, {2, 8}}));
    EXPECT_EQ(sim.s.queued_tasks(1), 2u);
    EXPECT_TRUE(sim.schedule().empty());
  }
  {
    // Beyond the real capacity, the queue part spreads too: 8 real + 2 queued.
    Sim sim;
    sim.add_worker(1, 4);
    sim.add_worker(2, 4);
    sim.add_job(1, "1-10");
    Decisions d = sim.schedule();
    EXPECT_EQ(tasks_per_worker(d.assign), (std::map<WorkerId, uint32_t>{{1, 5}, {2, 5}}));
  }
  {
    // queue_factor 1.0: a worker holds twice its CPUs; the rest waits.
    Sim sim;
    sim.add_worker(1, 4);
    sim.add_worker(2, 4);
    sim.add_job(1, "1-100");
    Decisions d = sim.schedule();
    EXPECT_EQ(tasks_per_worker(d.assign), (std::map<WorkerId, uint32_t>{{1, 8}, {2, 8}}));
    EXPECT_EQ(sim.s.waiting_tasks(), 84u);
    EXPECT_EQ(sim.s.counts(1)[TaskState::kWaiting], 100u);  // queued ones count as waiting
    EXPECT_TRUE(sim.schedule().empty());
    // One task ends: exactly one CPU comes free, and one more task is assigned there.
    const Assignment a = d.assign[0];
    EXPECT_TRUE(sim.started(a.worker, a.key));
    EXPECT_TRUE(sim.finished(a.worker, a.key));
    d = sim.schedule();
    ASSERT_EQ(d.assign.size(), 1u);
    EXPECT_EQ(d.assign[0].worker, a.worker);
  }
  for (auto [factor, expected] : {std::pair{0.0, 8u}, {0.5, 12u}, {0.3, 10u}, {2.0, 24u}}) {
    Sim sim(SchedulerConfig{.queue_factor = factor});
    sim.add_worker(1, 4);
    sim.add_worker(2, 4);
    sim.add_job(1, "1-100");
    EXPECT_EQ(sim.schedule().assign.size(), expected) << "queue_factor " << factor;
  }
}

TEST(SchedulerTest, MultiCpuTasksRespectWorkerSize) {
  Sim sim;  // queue_factor 1: worker 1 may hold 6 CPUs, but never a task of more than 3
  sim.add_worker(1, 3);
  sim.add_worker(2, 8);
  sim.add_job(1, "1-10", 4);
  Decisions d = sim.schedule();
  // Worker 1 (3 CPUs) can never run a 4-CPU task; worker 2 takes two, plus two queued.
  EXPECT_EQ(tasks_per_worker(d.assign), (std::map<WorkerId, uint32_t>{{2, 4}}));
  EXPECT_EQ(sim.s.job_cpus(1), 4u);
  EXPECT_EQ(sim.s.job_cpus(99), 0u);
}

TEST(SchedulerTest, TooBigTasksWaitWithoutBlockingSmallerOnes) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(1, 4);
  sim.add_worker(2, 2);
  sim.add_job(1, "1-3", 8, 10);  // fits no worker
  sim.add_job(2, "1-3", 4, 5);   // fits worker 1 only
  sim.add_job(4, "1-2", 8, 3);   // fits no worker, after one that filled the only fitting one
  sim.add_job(3, "1-10", 1, 0);  // fits anywhere
  Decisions d = sim.schedule();
  std::map<JobId, std::map<WorkerId, uint32_t>> got;
  for (const Assignment& a : d.assign) ++got[a.key.job][a.worker];
  EXPECT_EQ(got, (std::map<JobId, std::map<WorkerId, uint32_t>>{{2, {{1, 1}}}, {3, {{2, 2}}}}));
  EXPECT_EQ(sim.s.counts(1)[TaskState::kWaiting], 3u);
  EXPECT_EQ(sim.s.job_state(1), JobState::kWaiting);
  EXPECT_EQ(sim.s.waiting_tasks(), 3u + 2u + 2u + 8u);
  // A worker big enough arrives: the big job goes first there, by priority.
  sim.add_worker(3, 8);
  d = sim.schedule();
  ASSERT_FALSE(d.assign.empty());
  EXPECT_EQ(d.assign[0].key.ref(), (TaskRef{1, 1}));
  EXPECT_EQ(d.assign[0].worker, 3u);
}

// --- Reports ------------------------------------------------------------------------------------

TEST(SchedulerTest, StartFinishFailTransitionsAndTimes) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(5, 3);
  sim.add_job(1, "1-4");
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 3u);
  for (TaskId t = 1; t <= 3; ++t) {
    EXPECT_EQ(d.assign[t - 1].key, (TaskKey{1, t, 0}));
    TaskView v = sim.view(1, t);
    EXPECT_EQ(v.state, TaskState::kWaiting);
    EXPECT_TRUE(v.queued);
    EXPECT_EQ(v.worker, 5u);
  }
  EXPECT_EQ(sim.s.job_state(1), JobState::kWaiting);
  EXPECT_EQ(sim.s.queued_tasks(5), 3u);

  EXPECT_TRUE(sim.started(5, {1, 1, 0}, 100));
  TaskView v = sim.view(1, 1);
  EXPECT_EQ(v.state, TaskState::kRunning);
  EXPECT_FALSE(v.queued);
  EXPECT_EQ(v.start_time, 100);
  EXPECT_EQ(sim.s.running_tasks(5), 1u);
  EXPECT_EQ(sim.s.queued_tasks(5), 2u);
  EXPECT_EQ(sim.s.job_state(1), JobState::kRunning);
  EXPECT_EQ(sim.s.counts(1)[TaskState::kRunning], 1u);
  EXPECT_EQ(sim.s.counts(1)[TaskState::kWaiting], 3u);

  EXPECT_TRUE(sim.finished(5, {1, 1, 0}, 150));
  v = sim.view(1, 1);
  EXPECT_EQ(v.state, TaskState::kFinished);
  EXPECT_EQ(v.start_time, 100);
  EXPECT_EQ(v.end_time, 150);
  EXPECT_EQ(v.worker, 5u);
  EXPECT_EQ(v.error, nullptr);
  EXPECT_EQ(sim.s.held_tasks(5), 2u);
  EXPECT_EQ(sim.s.running_tasks(5), 0u);

  EXPECT_TRUE(sim.started(5, {1, 2, 0}, 110));
  EXPECT_TRUE(sim.failed(5, {1, 2, 0}, 160, "exit code 3"));
  v = sim.view(1, 2);
  EXPECT_EQ(v.state, TaskState::kFailed);
  EXPECT_EQ(v.end_time, 160);
  ASSERT_NE(v.error, nullptr);
  EXPECT_EQ(*v.error, "exit code 3");

  // The end without a start (events batched by the worker) is accepted.
  EXPECT_TRUE(sim.finished(5, {1, 3, 0}, 170));
  v = sim.view(1, 3);
  EXPECT_EQ(v.state, TaskState::kFinished);
  EXPECT_EQ(v.start_time, 170);
  EXPECT_EQ(v.end_time, 170);
  EXPECT_EQ(sim.s.held_tasks(5), 0u);

  // The CPUs came back: the last task goes out.
  d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 1u);
  EXPECT_EQ(d.assign[0].key, (TaskKey{1, 4, 0}));
  EXPECT_TRUE(sim.started(5, d.assign[0].key, 200));
  EXPECT_TRUE(sim.failed(5, d.assign[0].key, 210, ""));
  EXPECT_EQ(sim.s.job_state(1), JobState::kFailed);
  EXPECT_EQ(sim.s.counts(1)[TaskState::kFinished], 2u);
  EXPECT_EQ(sim.s.counts(1)[TaskState::kFailed], 2u);
  EXPECT_EQ(sim.take_completed(), (std::vector<JobId>{1}));
}

TEST(SchedulerTest, StaleReportsChangeNothing) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(1, 2);
  sim.add_worker(2, 1);
  sim.add_job(1, "1-6");
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 3u);
  std::map<TaskId, WorkerId> holder;
  for (const Assignment& a : d.assign) holder[a.key.task] = a.worker;
  // Task 1 on worker 1: running; task 3 on worker 1 queued; task 2 on worker 2 finished.
  ASSERT_EQ(holder[1], 1u);
  ASSERT_EQ(holder[2], 2u);
  ASSERT_EQ(holder[3], 1u);
  EXPECT_TRUE(sim.started(1, {1, 1, 0}, 10));
  EXPECT_TRUE(sim.started(2, {1, 2, 0}, 10));
  EXPECT_TRUE(sim.finished(2, {1, 2, 0}, 20));
  const std::vector<WorkerId> workers = {1, 2, 3};
  const std::string before = snapshot(sim.s, workers);

  EXPECT_FALSE(sim.started(2, {1, 1, 0}, 11));      // another worker
  EXPECT_FALSE(sim.finished(2, {1, 1, 0}, 11));     // another worker
  EXPECT_FALSE(sim.started(1, {1, 1, 1}, 11));      // another instance
  EXPECT_FALSE(sim.finished(1, {1, 1, 1}, 11));     // another instance
  EXPECT_FALSE(sim.failed(1, {1, 3, 7}, 11, "x"));  // another instance
  EXPECT_FALSE(sim.started(1, {1, 1, 0}, 12));      // started twice
  EXPECT_FALSE(sim.started(1, {1, 4, 0}, 11));      // waiting, not held
  EXPECT_FALSE(sim.finished(1, {1, 4, 0}, 11));     // waiting, not held
  EXPECT_FALSE(sim.started(2, {1, 2, 0}, 30));      // already ended
  EXPECT_FALSE(sim.finished(2, {1, 2, 0}, 30));     // already ended
  EXPECT_FALSE(sim.failed(2, {1, 2, 0}, 30, "x"));  // already ended
  EXPECT_FALSE(sim.retracted(2, {1, 2, 0}));        // already ended
  EXPECT_FALSE(sim.retracted(1, {1, 1, 0}));        // running: cannot be given back
  EXPECT_FALSE(sim.finished(1, {1, 99, 0}, 11));    // no such task
  EXPECT_FALSE(sim.finished(1, {9, 1, 0}, 11));     // no such job
  EXPECT_FALSE(sim.finished(3, {1, 1, 0}, 11));     // no such worker
  EXPECT_TRUE(sim.remove_worker(3).empty());
  EXPECT_TRUE(sim.cancel_job(9, 5).empty());
  EXPECT_EQ(snapshot(sim.s, workers), before);

  // After the worker is lost, its late reports about the old instance are stale too.
  auto back = sim.remove_worker(1);
  EXPECT_EQ(back.size(), 2u);
  const std::string after_loss = snapshot(sim.s, workers);
  EXPECT_FALSE(sim.finished(1, {1, 1, 0}, 40));
  EXPECT_FALSE(sim.started(1, {1, 3, 0}, 40));
  EXPECT_FALSE(sim.retracted(1, {1, 3, 0}));
  EXPECT_FALSE(sim.finished(1, {1, 1, 1}, 40));  // even with the new instance: not held by it
  EXPECT_EQ(snapshot(sim.s, workers), after_loss);
}

// --- Cancel -------------------------------------------------------------------------------------

TEST(SchedulerTest, CancelWaitingAndHeldTasks) {
  Sim sim;  // queue_factor 1: the 2-CPU worker holds 4 tasks
  sim.add_worker(1, 2);
  sim.add_job(1, "1-6");
  sim.add_job(2, "1-2");
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 4u);
  for (const Assignment& a : d.assign) EXPECT_EQ(a.key.job, 1u);
  EXPECT_TRUE(sim.started(1, {1, 1, 0}, 10));
  EXPECT_TRUE(sim.started(1, {1, 2, 0}, 10));
  EXPECT_TRUE(sim.finished(1, {1, 1, 0}, 20));
  d = sim.schedule();  // one CPU came free: task 5
  ASSERT_EQ(d.assign.size(), 1u);
  EXPECT_EQ(d.assign[0].key, (TaskKey{1, 5, 0}));

  auto kill = sim.cancel_job(1, 500);
  // Held: 2 (running), 3, 4, 5 (queued). Task 6 was waiting, task 1 finished.
  std::set<TaskRef> killed;
  for (const Assignment& a : kill) {
    EXPECT_EQ(a.worker, 1u);
    killed.insert(a.key.ref());
  }
  EXPECT_EQ(killed, (std::set<TaskRef>{{1, 2}, {1, 3}, {1, 4}, {1, 5}}));
  EXPECT_EQ(sim.s.counts(1)[TaskState::kCanceled], 5u);
  EXPECT_EQ(sim.s.counts(1)[TaskState::kFinished], 1u);
  EXPECT_EQ(sim.s.job_state(1), JobState::kCanceled);
  EXPECT_EQ(sim.take_completed(), (std::vector<JobId>{1}));
  EXPECT_EQ(sim.view(1, 6).end_time, 500);
  EXPECT_EQ(sim.view(1, 6).worker, 0u);
  EXPECT_EQ(sim.view(1, 2).worker, 1u);
  EXPECT_EQ(sim.view(1, 1).state, TaskState::kFinished);
  EXPECT_EQ(sim.s.waiting_tasks(), 2u);  // job 2 only

  // The canceled tasks keep their CPUs until the worker reports them.
  EXPECT_EQ(sim.s.held_tasks(1), 4u);
  EXPECT_TRUE(sim.schedule().assign.empty());
  EXPECT_FALSE(sim.started(1, {1, 3, 0}, 501));  // too late to start
  EXPECT_TRUE(sim.finished(1, {1, 2, 0}, 510));  // killed: only releases
  EXPECT_TRUE(sim.retracted(1, {1, 3, 0}));
  EXPECT_TRUE(sim.failed(1, {1, 4, 0}, 511, "killed"));
  for (TaskId t : {2, 3, 4}) {
    TaskView v = sim.view(1, t);
    EXPECT_EQ(v.state, TaskState::kCanceled);
    EXPECT_EQ(v.end_time, 500);
    EXPECT_EQ(v.error, nullptr);
  }
  EXPECT_FALSE(sim.finished(1, {1, 2, 0}, 512));  // released already
  EXPECT_EQ(sim.s.held_tasks(1), 1u);
  d = sim.schedule();  // 3 of the 4 slots are free again: both tasks of job 2
  EXPECT_EQ(refs(d.assign), (std::vector<TaskRef>{{2, 1}, {2, 2}}));
  EXPECT_TRUE(sim.finished(1, {1, 5, 0}, 513));
  EXPECT_EQ(sim.s.held_tasks(1), 2u);

  EXPECT_TRUE(sim.cancel_job(1, 600).empty());  // nothing left to cancel
  EXPECT_EQ(sim.view(1, 6).end_time, 500);
  EXPECT_TRUE(sim.take_completed().empty());
}

// --- Lost workers -------------------------------------------------------------------------------

TEST(SchedulerTest, RemoveWorkerRequeuesWithNewInstance) {
  Sim sim;
  sim.add_worker(1, 2);
  sim.add_job(1, "1-4");
  sim.add_job(2, "1");
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 4u);
  EXPECT_TRUE(sim.started(1, {1, 1, 0}, 10));
  EXPECT_TRUE(sim.started(1, {1, 2, 0}, 10));
  EXPECT_TRUE(sim.finished(1, {1, 2, 0}, 11));
  d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 1u);
  EXPECT_EQ(d.assign[0].key, (TaskKey{2, 1, 0}));
  EXPECT_EQ(sim.cancel_job(2, 12).size(), 1u);  // canceled but still held by worker 1

  auto back = sim.remove_worker(1);
  std::sort(back.begin(), back.end());
  EXPECT_EQ(back, (std::vector<TaskKey>{{1, 1, 1}, {1, 3, 1}, {1, 4, 1}}));
  EXPECT_EQ(sim.s.crash_count(1, 1), 1u);  // was running
  EXPECT_EQ(sim.s.crash_count(1, 3), 0u);  // was only queued
  EXPECT_EQ(sim.s.crash_count(1, 2), 0u);
  EXPECT_EQ(sim.s.counts(1)[TaskState::kWaiting], 3u);
  EXPECT_EQ(sim.s.counts(1)[TaskState::kRunning], 0u);
  EXPECT_EQ(sim.s.counts(2)[TaskState::kCanceled], 1u);
  TaskView v = sim.view(1, 1);
  EXPECT_EQ(v.state, TaskState::kWaiting);
  EXPECT_EQ(v.instance, 1u);
  EXPECT_FALSE(v.queued);
  EXPECT_EQ(v.worker, 0u);
  EXPECT_EQ(v.start_time, 0);
  EXPECT_EQ(sim.s.held_tasks(1), 0u);
  EXPECT_EQ(sim.s.waiting_tasks(), 3u);
  EXPECT_FALSE(sim.try_add_worker(1, 2).is_ok());  // ids are never reused
  EXPECT_TRUE(sim.remove_worker(1).empty());
  EXPECT_TRUE(sim.schedule().empty());  // no worker at all

  sim.add_worker(2, 1);
  d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 2u);
  EXPECT_EQ(d.assign[0].key, (TaskKey{1, 1, 1}));
  EXPECT_TRUE(sim.started(2, {1, 1, 1}, 20));
  back = sim.remove_worker(2);
  std::sort(back.begin(), back.end());
  EXPECT_EQ(back, (std::vector<TaskKey>{{1, 1, 2}, {1, 3, 2}}));
  EXPECT_EQ(sim.s.crash_count(1, 1), 2u);
  EXPECT_EQ(sim.s.crash_count(1, 3), 0u);
  EXPECT_EQ(sim.view(1, 4).instance, 1u);
}

// --- Retraction ---------------------------------------------------------------------------------

TEST(SchedulerTest, RetractsQueuedTasksForAnIdleWorker) {
  Sim sim;  // queue_factor 1
  sim.add_worker(1, 2);
  sim.add_job(1, "1-4");
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 4u);
  EXPECT_TRUE(sim.started(1, {1, 1, 0}, 10));
  EXPECT_TRUE(sim.started(1, {1, 2, 0}, 10));

  sim.add_worker(2, 2);
  d = sim.schedule();
  EXPECT_TRUE(d.assign.empty());
  std::set<TaskRef> asked;
  for (const Assignment& a : d.retract) {
    EXPECT_EQ(a.worker, 1u);
    EXPECT_EQ(a.key.instance, 0u);
    asked.insert(a.key.ref());
  }
  EXPECT_EQ(asked, (std::set<TaskRef>{{1, 3}, {1, 4}}));
  EXPECT_TRUE(sim.schedule().empty());  // never twice while pending

  // Worker 1 gives task 4 back; it goes to worker 2 with the same instance.
  EXPECT_TRUE(sim.retracted(1, {1, 4, 0}));
  TaskView v = sim.view(1, 4);
  EXPECT_EQ(v.state, TaskState::kWaiting);
  EXPECT_FALSE(v.queued);
  EXPECT_EQ(v.instance, 0u);
  EXPECT_FALSE(sim.retracted(1, {1, 4, 0}));  // not held any more
  d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 1u);
  EXPECT_EQ(d.assign[0].worker, 2u);
  EXPECT_EQ(d.assign[0].key, (TaskKey{1, 4, 0}));
  EXPECT_TRUE(d.retract.empty());

  // Worker 1 started task 3 meanwhile: the retraction is moot.
  EXPECT_TRUE(sim.started(1, {1, 3, 0}, 12));
  EXPECT_FALSE(sim.retracted(1, {1, 3, 0}));
  EXPECT_EQ(sim.view(1, 3).state, TaskState::kRunning);
  EXPECT_TRUE(sim.schedule().empty());
  EXPECT_EQ(sim.s.crash_count(1, 4), 0u);
}

TEST(SchedulerTest, RetractsOnlyWhatFitsAndWhatIsNeeded) {
  {
    // The idle worker is too small for the queued tasks: nothing to retract.
    Sim sim;
    sim.add_worker(1, 4);
    sim.add_job(1, "1-2", 4);
    ASSERT_EQ(sim.schedule().assign.size(), 2u);
    EXPECT_TRUE(sim.started(1, {1, 1, 0}));
    sim.add_worker(2, 2);
    EXPECT_TRUE(sim.schedule().empty());
    // A worker that fits arrives: now the queued one is asked back.
    sim.add_worker(3, 4);
    Decisions d = sim.schedule();
    ASSERT_EQ(d.retract.size(), 1u);
    EXPECT_EQ(d.retract[0].worker, 1u);
    EXPECT_EQ(d.retract[0].key, (TaskKey{1, 2, 0}));
  }
  {
    // Only the overload is asked back: 4 CPUs, 3 started, 5 queued. One of the queued can start
    // on the worker's free CPU; the other four go back for the idle worker.
    Sim sim;
    sim.add_worker(1, 4);
    sim.add_job(1, "1-8");
    ASSERT_EQ(sim.schedule().assign.size(), 8u);
    for (TaskId t = 1; t <= 3; ++t) EXPECT_TRUE(sim.started(1, {1, t, 0}));
    sim.add_worker(2, 8);
    Decisions d = sim.schedule();
    EXPECT_EQ(d.retract.size(), 4u);
    EXPECT_TRUE(sim.schedule().empty());
  }
  {
    // A queued task too big for what its worker's started tasks leave free is asked back even
    // when it is larger than the overload: 3 of 4 CPUs run, a 4-CPU task is queued (7 > 4).
    Sim sim;
    sim.add_worker(1, 4);
    sim.add_job(1, "1-3", 1, 1);
    sim.add_job(2, "1", 4, 0);
    Decisions d = sim.schedule();
    ASSERT_EQ(d.assign.size(), 4u);
    for (TaskId t = 1; t <= 3; ++t) EXPECT_TRUE(sim.started(1, {1, t, 0}));
    sim.add_worker(2, 4);
    d = sim.schedule();
    ASSERT_EQ(d.retract.size(), 1u);
    EXPECT_EQ(d.retract[0].key, (TaskKey{2, 1, 0}));
    EXPECT_TRUE(sim.retracted(1, {2, 1, 0}));
    d = sim.schedule();
    ASSERT_EQ(d.assign.size(), 1u);
    EXPECT_EQ(d.assign[0].worker, 2u);
  }
  {
    // 4 CPUs, 1 started, two 2-CPU tasks queued: one of them can start there, the other is
    // asked back for the idle worker.
    Sim sim;
    sim.add_worker(1, 4);
    sim.add_job(1, "1", 1, 1);
    sim.add_job(2, "1-2", 2, 0);
    ASSERT_EQ(sim.schedule().assign.size(), 3u);
    EXPECT_TRUE(sim.started(1, {1, 1, 0}));
    sim.add_worker(2, 2);
    Decisions d = sim.schedule();
    ASSERT_EQ(d.retract.size(), 1u);
    EXPECT_EQ(d.retract[0].key.job, 2u);
    EXPECT_TRUE(sim.schedule().empty());
  }
  {
    // Idle workers of 2 CPUs: of a queued 4-CPU and a queued 1-CPU task, only the latter.
    Sim sim(SchedulerConfig{.queue_factor = 2});
    sim.add_worker(1, 4);
    sim.add_job(1, "1-4", 1, 2);
    sim.add_job(2, "1", 4, 1);
    sim.add_job(3, "1", 1, 0);
    ASSERT_EQ(sim.schedule().assign.size(), 6u);
    for (TaskId t = 1; t <= 4; ++t) EXPECT_TRUE(sim.started(1, {1, t, 0}));
    for (WorkerId w = 2; w <= 4; ++w) sim.add_worker(w, 2);
    Decisions d = sim.schedule();
    EXPECT_EQ(refs(d.retract), (std::vector<TaskRef>{{3, 1}}));
  }
  {
    // Pending retractions count: more idle CPUs later ask back only the difference.
    Sim sim;
    sim.add_worker(1, 8);
    sim.add_job(1, "1-16");
    ASSERT_EQ(sim.schedule().assign.size(), 16u);
    for (TaskId t = 1; t <= 8; ++t) EXPECT_TRUE(sim.started(1, {1, t, 0}));
    sim.add_worker(2, 2);
    EXPECT_EQ(sim.schedule().retract.size(), 2u);
    EXPECT_TRUE(sim.schedule().empty());
    sim.add_worker(3, 2);
    EXPECT_EQ(sim.schedule().retract.size(), 2u);
    EXPECT_TRUE(sim.schedule().empty());
  }
  {
    // 3 idle CPUs and queued 2-CPU tasks: one is asked back, and a second one never is (its CPUs
    // would exceed what the idle worker still lacks).
    Sim sim;
    sim.add_worker(1, 8);
    sim.add_job(1, "1-8", 1, 1);
    sim.add_job(2, "1-4", 2, 0);
    ASSERT_EQ(sim.schedule().assign.size(), 12u);
    for (TaskId t = 1; t <= 8; ++t) EXPECT_TRUE(sim.started(1, {1, t, 0}));
    sim.add_worker(2, 3);
    EXPECT_EQ(sim.schedule().retract.size(), 1u);
    EXPECT_TRUE(sim.schedule().empty());
  }
  {
    // A waiting task that fits the idle worker is assigned there instead of retracting.
    Sim sim;
    sim.add_worker(1, 1);
    sim.add_job(1, "1-2");
    ASSERT_EQ(sim.schedule().assign.size(), 2u);
    sim.add_job(2, "1");
    sim.add_worker(2, 1);
    Decisions d = sim.schedule();
    EXPECT_TRUE(d.retract.empty());
    EXPECT_EQ(refs(d.assign), (std::vector<TaskRef>{{2, 1}}));
  }
  {
    // Two idle CPUs ask back two 1-CPU tasks, not all four queued ones.
    Sim sim;
    sim.add_worker(1, 4);
    sim.add_job(1, "1-8");
    ASSERT_EQ(sim.schedule().assign.size(), 8u);
    sim.add_worker(2, 2);
    Decisions d = sim.schedule();
    EXPECT_EQ(d.retract.size(), 2u);
    // Lost while retractions are pending: everything it held comes back, once.
    auto back = sim.remove_worker(1);
    EXPECT_EQ(back.size(), 8u);
    d = sim.schedule();
    EXPECT_TRUE(d.retract.empty());
    EXPECT_EQ(d.assign.size(), 4u);
  }
  {
    // A canceled queued task is never retracted; cancel clears a pending retraction.
    Sim sim;
    sim.add_worker(1, 1);
    sim.add_job(1, "1-2");
    ASSERT_EQ(sim.schedule().assign.size(), 2u);
    sim.add_worker(2, 1);
    Decisions d = sim.schedule();
    ASSERT_EQ(d.retract.size(), 1u);
    EXPECT_EQ(sim.cancel_job(1, 5).size(), 2u);
    EXPECT_TRUE(sim.retracted(1, d.retract[0].key));  // only releases
    EXPECT_EQ(sim.view(1, d.retract[0].key.task).state, TaskState::kCanceled);
    EXPECT_TRUE(sim.schedule().empty());
  }
}

// --- Completion ---------------------------------------------------------------------------------

TEST(SchedulerTest, TakeCompletedJobsOncePerJobInIdOrder) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(1, 10);
  sim.add_job(3, "1-2");
  sim.add_job(1, "1");
  sim.add_job(2, "1-3");
  EXPECT_TRUE(sim.take_completed().empty());
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 6u);
  for (const Assignment& a : d.assign) {
    if (a.key.job == 2) continue;
    EXPECT_TRUE(sim.started(a.worker, a.key, 1));
    if (a.key == TaskKey{3, 2, 0}) {
      EXPECT_TRUE(sim.failed(a.worker, a.key, 2, "bad"));
    } else {
      EXPECT_TRUE(sim.finished(a.worker, a.key, 2));
    }
  }
  EXPECT_EQ(sim.take_completed(), (std::vector<JobId>{1, 3}));
  EXPECT_TRUE(sim.take_completed().empty());
  EXPECT_EQ(sim.s.job_state(3), JobState::kFailed);
  EXPECT_EQ(sim.s.job_state(1), JobState::kFinished);
  EXPECT_TRUE(sim.started(1, {2, 1, 0}, 3));
  EXPECT_TRUE(sim.finished(1, {2, 1, 0}, 4));
  EXPECT_TRUE(sim.take_completed().empty());  // job 2 still has work
  EXPECT_EQ(sim.cancel_job(2, 5).size(), 2u);
  EXPECT_EQ(sim.take_completed(), (std::vector<JobId>{2}));
  EXPECT_TRUE(sim.finished(1, {2, 2, 0}, 6));
  EXPECT_TRUE(sim.take_completed().empty());
}

// --- Scale --------------------------------------------------------------------------------------

TEST(SchedulerTest, LargeArrayJob) {
  Sim sim;
  sim.add_job(1, "0-1999999");
  sim.add_worker(1, 64);
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 128u);
  EXPECT_EQ(d.assign.back().key, (TaskKey{1, 127, 0}));
  EXPECT_EQ(sim.s.waiting_tasks(), 2000000u - 128u);
  EXPECT_EQ(sim.view(1, 1999999).state, TaskState::kWaiting);
  EXPECT_EQ(sim.cancel_job(1, 9).size(), 128u);
  EXPECT_EQ(sim.s.counts(1)[TaskState::kCanceled], 2000000u);
  EXPECT_EQ(sim.s.waiting_tasks(), 0u);
}

// --- Randomized simulation ----------------------------------------------------------------------

// Drives the scheduler with random workers, jobs and reports, keeping its own model of what each
// worker holds, and checks every decision against it.
class RandomSim {
 public:
  RandomSim(uint32_t seed, double queue_factor, double short_factor = 0)
      : sim_({queue_factor, short_factor}), rng_(seed) {
    factor_ = queue_factor;
    short_factor_ = short_factor;
  }

  void run(int steps) {
    for (int i = 0; i < 4; ++i) add_worker();
    for (int i = 0; i < 3; ++i) add_job();
    for (int step = 0; step < steps; ++step) {
      now_ += 1;
      int r = pick(100);
      if (r < 3) {
        add_worker();
      } else if (r < 5) {
        remove_worker();
      } else if (r < 9) {
        add_job();
      } else if (r < 10) {
        cancel_job();
      } else if (r < 35) {
        schedule();
      } else if (r < 55) {
        start_some();
      } else if (r < 80) {
        end_some();
      } else if (r < 88) {
        answer_retractions();
      } else {
        stale_report();
      }
    }
    // Drain: no more losses; everything must complete.
    if (live_workers().empty()) add_worker();
    uint32_t biggest = 0;
    for (auto& [id, w] : workers_) {
      if (w.connected) biggest = std::max(biggest, w.cpus);
    }
    for (auto& [id, job] : jobs_) {
      if (job.cpus > biggest) cancel_job_id(id);
    }
    for (int round = 0; round < 100000; ++round) {
      schedule();
      answer_retractions();
      bool any = false;
      for (auto& [id, w] : workers_) {
        for (auto& [ref, t] : std::map<TaskRef, Held>(w.held)) {
          any = true;
          if (!t.running) {
            EXPECT_TRUE(sim_.started(id, {ref.job, ref.task, t.instance}, now_));
            w.held[ref].running = true;
          }
          end(id, ref, pick(2) == 0);
        }
      }
      if (!any && sim_.s.waiting_tasks() == 0) break;
    }
    for (auto& [id, job] : jobs_) {
      EXPECT_TRUE(sim_.s.counts(id).complete()) << "job " << id;
    }
    for (JobId j : sim_.take_completed()) completed_.push_back(j);
    std::vector<JobId> sorted = completed_;
    std::sort(sorted.begin(), sorted.end());
    EXPECT_EQ(std::adjacent_find(sorted.begin(), sorted.end()), sorted.end())
        << "a job was reported complete twice";
    EXPECT_EQ(sorted.size(), jobs_.size());
    EXPECT_GT(assignments_, 100u);
  }

  uint64_t assignments_ = 0;
  uint64_t retractions_ = 0;

 private:
  struct Held {
    InstanceId instance;
    bool running = false;
    bool canceled = false;
    bool retracting = false;
  };
  struct ModelWorker {
    uint32_t cpus = 0;
    bool connected = true;
    std::map<TaskRef, Held> held = {};
  };
  struct ModelJob {
    uint32_t cpus = 0;
  };

  uint32_t pick(uint32_t n) { return std::uniform_int_distribution<uint32_t>(0, n - 1)(rng_); }
  std::vector<WorkerId> live_workers() const {
    std::vector<WorkerId> out;
    for (auto& [id, w] : workers_) {
      if (w.connected) out.push_back(id);
    }
    return out;
  }
  uint32_t held_cpus(const ModelWorker& w) const {
    uint32_t n = 0;
    for (auto& [ref, t] : w.held) n += jobs_.at(ref.job).cpus;
    return n;
  }

  void add_worker() {
    WorkerId id = ++last_worker_;
    uint32_t cpus = 1 + pick(12);
    sim_.add_worker(id, cpus);
    workers_[id] = {cpus};
  }
  void remove_worker() {
    auto live = live_workers();
    if (live.size() <= 1) return;
    WorkerId id = live[pick(live.size())];
    ModelWorker& w = workers_[id];
    std::set<TaskKey> expected;
    for (auto& [ref, t] : w.held) {
      if (!t.canceled) expected.insert({ref.job, ref.task, t.instance + 1});
    }
    auto back = sim_.remove_worker(id);
    EXPECT_EQ(std::set<TaskKey>(back.begin(), back.end()), expected);
    EXPECT_EQ(back.size(), expected.size());
    w.held.clear();
    w.connected = false;
  }
  void add_job() {
    JobId id = ++last_job_;
    std::string ids;
    int parts = 1 + pick(3);
    uint32_t base = pick(5);
    for (int p = 0; p < parts; ++p) {
      uint32_t len = pick(15);
      uint32_t step = 1 + pick(3);
      if (!ids.empty()) ids += ",";
      ids += std::to_string(base) + "-" + std::to_string(base + len * step) + ":" +
             std::to_string(step);
      base += len * step + 1 + pick(10);
    }
    uint32_t cpus = 1 + (pick(4) == 0 ? pick(8) : 0);
    sim_.add_job(id, ids, cpus, static_cast<int32_t>(pick(3)) - 1);
    jobs_[id] = {cpus};
  }
  void cancel_job() {
    if (jobs_.empty()) return;
    auto it = jobs_.begin();
    std::advance(it, pick(jobs_.size()));
    cancel_job_id(it->first);
  }
  void cancel_job_id(JobId id) {
    auto kill = sim_.cancel_job(id, now_);
    std::set<TaskRef> expected, got;
    for (auto& [wid, w] : workers_) {
      for (auto& [ref, t] : w.held) {
        if (ref.job == id && !t.canceled) {
          expected.insert(ref);
          t.canceled = true;
          t.retracting = false;
        }
      }
    }
    for (const Assignment& a : kill) {
      got.insert(a.key.ref());
      EXPECT_TRUE(workers_[a.worker].held.contains(a.key.ref()));
    }
    EXPECT_EQ(got, expected);
  }

  void schedule() {
    Decisions d = sim_.schedule();
    for (const Assignment& a : d.assign) {
      ++assignments_;
      ASSERT_TRUE(workers_.contains(a.worker));
      ModelWorker& w = workers_[a.worker];
      EXPECT_TRUE(w.connected);
      EXPECT_GE(w.cpus, jobs_[a.key.job].cpus);
      EXPECT_FALSE(w.held.contains(a.key.ref()));
      w.held[a.key.ref()] = {a.key.instance};
    }
    for (const Assignment& a : d.retract) {
      ++retractions_;
      ModelWorker& w = workers_[a.worker];
      ASSERT_TRUE(w.held.contains(a.key.ref()));
      Held& t = w.held[a.key.ref()];
      EXPECT_FALSE(t.running);
      EXPECT_FALSE(t.canceled);
      EXPECT_FALSE(t.retracting) << "retracted twice";
      EXPECT_EQ(t.instance, a.key.instance);
      t.retracting = true;
    }
    // Work-conserving: no worker keeps room for a task that is waiting unassigned.
    std::map<uint32_t, bool> ready_cpus;
    for (auto& [id, job] : jobs_) {
      const uint32_t cpus = job.cpus;
      sim_.s.for_each_task(id, [&](const TaskView& v) {
        if (v.state == TaskState::kWaiting && !v.queued) ready_cpus[cpus] = true;
      });
    }
    for (auto& [id, w] : workers_) {
      if (!w.connected) continue;
      uint32_t held = held_cpus(w);
      // Jobs of short tasks may queue up to the deeper limit, every job up to the base one.
      uint32_t limit = w.cpus + static_cast<uint32_t>(factor_ * w.cpus);
      uint32_t deep = w.cpus + static_cast<uint32_t>(std::max(factor_, short_factor_) * w.cpus);
      EXPECT_LE(held, deep) << "worker " << id;
      // A worker kept free for a blocked job ahead takes nothing from the jobs behind it.
      if (sim_.s.reserved_for(id) != 0) continue;
      for (auto [cpus, unused] : ready_cpus) {
        if (cpus > w.cpus) break;
        EXPECT_GT(held + cpus, limit)
            << "worker " << id << " holds " << held << " of " << limit << " while a " << cpus
            << "-CPU task waits" << debug(id, cpus);
      }
      EXPECT_EQ(sim_.s.held_tasks(id), w.held.size());
    }
  }

  std::string debug(WorkerId id, uint32_t cpus) {
    std::string out = " queued=" + std::to_string(sim_.s.queued_tasks(id)) +
                      " running=" + std::to_string(sim_.s.running_tasks(id));
    for (auto& [jid, job] : jobs_) {
      if (job.cpus != cpus) continue;
      for (auto& f : sim_.s.explain(jid))
        if (f.worker == id)
          out += " job " + std::to_string(jid) + ": " + (f.fits_now ? "fits" : f.reason) + ";";
    }
    return out;
  }
  // A worker starts held tasks in any order, but only while its CPUs suffice, as a real one does.
  void start_some() {
    for (auto& [id, w] : workers_) {
      uint32_t busy = 0;
      for (auto& [ref, t] : w.held) busy += t.running ? jobs_.at(ref.job).cpus : 0;
      for (auto& [ref, t] : w.held) {
        if (t.running || pick(3) != 0) continue;
        if (!t.canceled && busy + jobs_.at(ref.job).cpus > w.cpus) continue;
        if (!t.canceled) busy += jobs_.at(ref.job).cpus;
        bool ok = sim_.started(id, {ref.job, ref.task, t.instance}, now_);
        EXPECT_EQ(ok, !t.canceled);
        if (ok) {
          t.running = true;
          t.retracting = false;
          EXPECT_EQ(sim_.view(ref.job, ref.task).state, TaskState::kRunning);
        }
      }
    }
  }
  void end(WorkerId id, TaskRef ref, bool fail) {
    ModelWorker& w = workers_[id];
    Held t = w.held.at(ref);
    TaskKey key{ref.job, ref.task, t.instance};
    bool ok = fail ? sim_.failed(id, key, now_, "error " + std::to_string(now_))
                   : sim_.finished(id, key, now_);
    EXPECT_TRUE(ok);
    w.held.erase(ref);
    TaskView v = sim_.view(ref.job, ref.task);
    EXPECT_EQ(v.state, t.canceled ? TaskState::kCanceled
                                  : (fail ? TaskState::kFailed : TaskState::kFinished));
    EXPECT_EQ(v.worker, id);
  }
  void end_some() {
    for (auto& [id, w] : workers_) {
      std::vector<TaskRef> ending;
      for (auto& [ref, t] : w.held) {
        if ((t.running || t.canceled || pick(10) == 0) && pick(2) == 0) ending.push_back(ref);
      }
      for (TaskRef ref : ending) end(id, ref, pick(5) == 0);
    }
  }
  void answer_retractions() {
    for (auto& [id, w] : workers_) {
      std::vector<TaskRef> answered;
      uint32_t busy = 0;
      for (auto& [ref, t] : w.held) busy += t.running ? jobs_.at(ref.job).cpus : 0;
      for (auto& [ref, t] : w.held) {
        if (!t.retracting) continue;
        if (pick(4) == 0 && busy + jobs_.at(ref.job).cpus <= w.cpus) {
          busy += jobs_.at(ref.job).cpus;
          EXPECT_TRUE(sim_.started(id, {ref.job, ref.task, t.instance}, now_));
          t.running = true;
          t.retracting = false;
        } else {
          EXPECT_TRUE(sim_.retracted(id, {ref.job, ref.task, t.instance}));
          answered.push_back(ref);
        }
      }
      for (TaskRef ref : answered) {
        w.held.erase(ref);
        TaskView v = sim_.view(ref.job, ref.task);
        EXPECT_EQ(v.state, TaskState::kWaiting);
        EXPECT_FALSE(v.queued);
      }
    }
  }
  void stale_report() {
    if (jobs_.empty() || workers_.empty()) return;
    JobId job = 1 + pick(last_job_);
    TaskId task = pick(200);
    WorkerId worker = 1 + pick(last_worker_);
    auto it = workers_.find(worker);
    std::optional<TaskView> v = sim_.s.task(job, task);
    if (v && it != workers_.end() && it->second.held.contains({job, task})) return;
    InstanceId instance = v ? v->instance + pick(2) : 0;
    TaskKey key{job, task, instance};
    switch (pick(4)) {
      case 0:
        EXPECT_FALSE(sim_.started(worker, key, now_));
        break;
      case 1:
        EXPECT_FALSE(sim_.finished(worker, key, now_));
        break;
      case 2:
        EXPECT_FALSE(sim_.failed(worker, key, now_, "stale"));
        break;
      default:
        EXPECT_FALSE(sim_.retracted(worker, key));
    }
  }

  Sim sim_;
  std::mt19937 rng_;
  double factor_;
  double short_factor_;
  int64_t now_ = 1000;
  WorkerId last_worker_ = 0;
  JobId last_job_ = 0;
  std::map<WorkerId, ModelWorker> workers_;
  std::map<JobId, ModelJob> jobs_;
  std::vector<JobId> completed_;
};

TEST(SchedulerTest, RandomizedSimulation) {
  uint64_t assignments = 0, retractions = 0;
  for (uint32_t seed = 1; seed <= 10; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomSim sim(seed, seed % 3 == 0 ? 0.0 : (seed % 3 == 1 ? 1.0 : 0.5));
    sim.run(1500);
    assignments += sim.assignments_;
    retractions += sim.retractions_;
    if (HasFailure()) break;
  }
  EXPECT_GT(retractions, 0u) << "the simulation never exercised retraction";
  RecordProperty("assignments", std::to_string(assignments));
}

// The same with deeper queues for jobs of short tasks (SchedulerConfig::short_task_queue_factor).
TEST(SchedulerTest, RandomizedSimulationWithDeepQueuesForShortTasks) {
  for (uint32_t seed = 21; seed <= 26; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    RandomSim sim(seed, seed % 2 == 0 ? 1.0 : 0.0, 3.0);
    sim.run(1500);
    if (HasFailure()) break;
  }
}

}  // namespace
}  // namespace hq::sched

namespace hq::sched {
namespace {

// Runs one round: schedules at `now`, then every held task that `start` allows starts and ends
// `run_ms` later; returns how many tasks the worker held after the schedule.
uint32_t round_with(Scheduler& s, int64_t& now, int64_t run_ms) {
  Decisions d = s.schedule(now);
  const uint32_t held = s.held_tasks(1);
  for (const Assignment& a : d.assign) {
    EXPECT_TRUE(s.task_started(1, a.key, now));
    EXPECT_TRUE(s.task_finished(1, a.key, now + run_ms));
  }
  now += run_ms + 1;
  s.check_invariants();
  return held;
}

// SchedulerConfig::short_task_queue_factor: a job whose tasks finish in a few milliseconds
// queues deeper once enough of them finished; a job of long tasks keeps the usual queue, also
// on the same worker afterwards.
TEST(SchedulerTest, ShortTasksQueueDeeperOnceSeen) {
  Scheduler s(SchedulerConfig{1.0, 3.0});
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job({1, IdSet::range(1, 1000), 1, 0}).is_ok());
  int64_t now = 1000;
  EXPECT_EQ(round_with(s, now, 2), 4u);  // 2 CPUs and a queue as deep, nothing seen yet
  uint32_t most = 0;
  for (int i = 0; i < 10; ++i) most = std::max(most, round_with(s, now, 2));
  EXPECT_EQ(most, 8u);  // 2 CPUs and 3 times as many queued

  Scheduler t(SchedulerConfig{1.0, 3.0});
  ASSERT_TRUE(t.add_worker(1, 2).is_ok());
  ASSERT_TRUE(t.add_job({1, IdSet::range(1, 1000), 1, 0}).is_ok());
  most = 0;
  for (int i = 0; i < 10; ++i) most = std::max(most, round_with(t, now, 60'000));
  EXPECT_EQ(most, 4u);

  // The deeper queue holds about Job::kQueuedWorkMs of work per CPU: tasks of 20 ms queue two
  // per CPU beyond the one running, however deep the worker's limit.
  Scheduler v(SchedulerConfig{1.0, 8.0});
  ASSERT_TRUE(v.add_worker(1, 2).is_ok());
  ASSERT_TRUE(v.add_job({1, IdSet::range(1, 1000), 1, 0}).is_ok());
  most = 0;
  for (int i = 0; i < 12; ++i) most = std::max(most, round_with(v, now, 20));
  EXPECT_EQ(most, 6u);
  Scheduler w(SchedulerConfig{1.0, 8.0});
  ASSERT_TRUE(w.add_worker(1, 2).is_ok());
  ASSERT_TRUE(w.add_job({1, IdSet::range(1, 1000), 1, 0}).is_ok());
  most = 0;
  for (int i = 0; i < 12; ++i) most = std::max(most, round_with(w, now, 2));
  EXPECT_EQ(most, 18u);  // the limit: 2 CPUs and 8 times as many queued

  // Off by default: the same short tasks keep the usual queue.
  Scheduler u;
  ASSERT_TRUE(u.add_worker(1, 2).is_ok());
  ASSERT_TRUE(u.add_job({1, IdSet::range(1, 1000), 1, 0}).is_ok());
  most = 0;
  for (int i = 0; i < 10; ++i) most = std::max(most, round_with(u, now, 2));
  EXPECT_EQ(most, 4u);
}

}  // namespace
}  // namespace hq::sched
