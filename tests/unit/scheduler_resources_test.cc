// Resource-aware scheduling (Scheduler with common/resources.h requests and descriptors): requests
// go only where they fit, allocation policies on groups, fractions and sums, priorities, the
// reservation that keeps big tasks from starving, explain(), and randomized churn.
//
// Workers are simulated as worker/daemon.cc runs them, without processes: each keeps its own
// ResourcePool and starts the tasks it received, in order, while they fit it: the first that
// does not fit waits, and the tasks behind it wait too. The scheduler's own view of a worker (what
// it placed, what only waits there) is probed with explain() on a throwaway job. check_invariants()
// runs after every step.

#include "scheduler/scheduler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include "common/resource_pool.h"
#include "common/resources.h"

namespace hq::sched {
namespace {

ResourceRequest request_of(const std::vector<std::string>& entries) {
  std::vector<ResourceRequestEntry> parsed;
  for (const std::string& e : entries) {
    Result<ResourceRequestEntry> r = parse_named_request(e);
    EXPECT_TRUE(r.is_ok()) << e << ": " << (r.is_ok() ? "" : r.message());
    if (r.is_ok()) parsed.push_back(*r);
  }
  Result<ResourceRequest> made = make_request(std::move(parsed));
  EXPECT_TRUE(made.is_ok()) << (made.is_ok() ? "" : made.message());
  return made.is_ok() ? *made : ResourceRequest{};
}

// "2x4" plus definitions such as "gpus=[0,1]" or "mem=sum(100)".
ResourceDescriptor descriptor_of(std::string_view cpus, const std::vector<std::string>& others) {
  ResourceDescriptor d;
  Result<ResourceDefinition> c = parse_cpu_definition(cpus);
  EXPECT_TRUE(c.is_ok()) << cpus;
  if (c.is_ok()) d.set(*c);
  for (const std::string& o : others) {
    Result<ResourceDefinition> def = parse_resource_definition(o);
    EXPECT_TRUE(def.is_ok()) << o;
    if (def.is_ok()) d.set(*def);
  }
  return d;
}

// One simulated worker, run as worker/daemon.cc runs one.
struct SimWorker {
  ResourceDescriptor resources;
  ResourcePool pool;
  std::vector<TaskKey> queue;  // received, not started, in order
  struct Running {
    TaskKey key;
    Allocation alloc;
    bool killed = false;  // canceled: ends at the next report
  };
  std::vector<Running> running;  // in start order
};

// The scheduler under test and its simulated workers; every call that may change state is
// followed by check_invariants().
class Sim {
 public:
  explicit Sim(SchedulerConfig config = {}) : s(config) { s.check_invariants(); }

  void add_worker(WorkerId id, std::string_view cpus, const std::vector<std::string>& others = {}) {
    ResourceDescriptor d = descriptor_of(cpus, others);
    Status st = s.add_worker(id, d);
    EXPECT_TRUE(st.is_ok()) << (st.is_ok() ? "" : st.message());
    s.check_invariants();
    SimWorker& w = workers[id];
    w.resources = d;
    w.pool = ResourcePool(d, names_);
  }
  // The worker is lost: what it held waits again.
  std::vector<TaskKey> remove_worker(WorkerId id) {
    workers.erase(id);
    std::erase_if(pending_retractions_, [id](const Assignment& a) { return a.worker == id; });
    std::vector<TaskKey> back = s.remove_worker(id, now_);
    s.check_invariants();
    return back;
  }

  void add_job(JobId id, uint32_t tasks, const std::vector<std::string>& request,
               int32_t priority = 0) {
    add_job(id, tasks, request_of(request), priority);
  }
  void add_job(JobId id, uint32_t tasks, const ResourceRequest& request, int32_t priority) {
    JobSpec spec;
    spec.id = id;
    spec.task_ids = IdSet::range(1, tasks);
    spec.priority = priority;
    spec.resources = request;
    Status st = s.add_job(spec);
    EXPECT_TRUE(st.is_ok()) << (st.is_ok() ? "" : st.message());
    s.check_invariants();
    requests_[id] = intern_request(request, names_);
  }
  void cancel_job(JobId id) {
    for (const Assignment& a : s.cancel_job(id, ++now_)) {
      s.check_invariants();
      SimWorker& w = workers.at(a.worker);
      auto q = std::find(w.queue.begin(), w.queue.end(), a.key);
      if (q != w.queue.end()) {
        // Never started: giving it back releases its place, as the daemon does.
        w.queue.erase(q);
        EXPECT_TRUE(s.task_retracted(a.worker, a.key));
        continue;
      }
      auto r = std::find_if(w.running.begin(), w.running.end(),
                            [&](const SimWorker::Running& r) { return r.key == a.key; });
      ASSERT_NE(r, w.running.end()) << "worker " << a.worker << " never got the canceled task";
      r->killed = true;
    }
    s.check_invariants();
  }

  // Schedules, delivers the assignments to the workers' queues, and (unless deferred) answers
  // retractions of tasks not started yet.
  Decisions schedule() {
    Decisions d = s.schedule();
    s.check_invariants();
    for (const Assignment& a : d.assign) {
      SimWorker& w = workers.at(a.worker);
      // The daemon fails a task that can never run on it: the scheduler must not send one.
      EXPECT_TRUE(w.pool.could_fit(requests_.at(a.key.job)))
          << "job " << a.key.job << " sent to worker " << a.worker << ", which cannot run it";
      w.queue.push_back(a.key);
    }
    pending_retractions_.insert(pending_retractions_.end(), d.retract.begin(), d.retract.end());
    if (!defer_retractions) answer_retractions();
    return d;
  }
  void answer_retractions() {
    for (const Assignment& a : pending_retractions_) {
      SimWorker& w = workers.at(a.worker);
      auto q = std::find(w.queue.begin(), w.queue.end(), a.key);
      if (q == w.queue.end()) continue;  // started meanwhile: its start report said so
      w.queue.erase(q);
      EXPECT_TRUE(s.task_retracted(a.worker, a.key));
      s.check_invariants();
    }
    pending_retractions_.clear();
  }

  // Every worker starts, in order, the received tasks while they fit it now. Returns them.
  std::vector<Assignment> start() {
    std::vector<Assignment> out;
    for (auto& [id, w] : workers) {
      for (auto it = w.queue.begin(); it != w.queue.end();) {
        const PoolRequest& r = requests_.at(it->job);
        Allocation alloc;
        if (!w.pool.allocate(r, alloc)) {
          EXPECT_TRUE(w.pool.could_fit(r)) << "worker " << id << " holds a task it cannot run";
          break;
        }
        EXPECT_TRUE(s.task_started(id, *it, ++now_)) << "job " << it->job << " task " << it->task;
        s.check_invariants();
        out.push_back({id, *it});
        w.running.push_back({*it, std::move(alloc)});
        it = w.queue.erase(it);
      }
    }
    return out;
  }
  // The worker reports the end of its k-th running task (start order).
  TaskKey finish(WorkerId id, size_t k = 0, bool fail = false) {
    SimWorker& w = workers.at(id);
    SimWorker::Running r = std::move(w.running.at(k));
    w.running.erase(w.running.begin() + static_cast<std::ptrdiff_t>(k));
    w.pool.release(r.alloc);
    bool ok =
        fail ? s.task_failed(id, r.key, ++now_, "failed") : s.task_finished(id, r.key, ++now_);
    EXPECT_TRUE(ok);
    s.check_invariants();
    return r.key;
  }
  void finish_all() {
    for (auto& [id, w] : workers) {
      while (!w.running.empty()) finish(id);
    }
  }

  // Whether the scheduler's own model of the worker has room for `request` now: explain() of a
  // throwaway job that comes before every other (so no reservation stands in its way), canceled
  // before anything else happens.
  bool model_fits(WorkerId worker, const std::vector<std::string>& request) {
    const JobId probe = next_probe_++;
    JobSpec spec;
    spec.id = probe;
    spec.task_ids = IdSet::single(1);
    spec.priority = std::numeric_limits<int32_t>::max();
    spec.resources = request_of(request);
    EXPECT_TRUE(s.add_job(spec).is_ok());
    bool fits = false;
    for (const WorkerFit& f : s.explain(probe)) {
      if (f.worker == worker) fits = f.fits_now;
    }
    EXPECT_TRUE(s.cancel_job(probe, now_).empty());
    s.check_invariants();
    return fits;
  }
  WorkerFit fit(JobId job, WorkerId worker) const {
    for (const WorkerFit& f : s.explain(job)) {
      if (f.worker == worker) return f;
    }
    ADD_FAILURE() << "explain(" << job << ") does not list worker " << worker;
    return {};
  }

  TaskView view(JobId job, TaskId task) const {
    std::optional<TaskView> v = s.task(job, task);
    EXPECT_TRUE(v.has_value()) << "job " << job << " task " << task;
    return v.value_or(TaskView{});
  }
  // Waiting and held by no worker.
  bool unheld(JobId job, TaskId task) const {
    TaskView v = view(job, task);
    return v.state == TaskState::kWaiting && !v.queued;
  }
  size_t running(WorkerId id) const { return workers.at(id).running.size(); }
  bool all_complete() const {
    for (JobId j : s.job_ids()) {
      if (!s.counts(j).complete()) return false;
    }
    return true;
  }
  // Rounds of schedule, start, finish everything until every job is complete; false when it
  // takes more than `max_rounds`.
  bool drain(int max_rounds = 1000) {
    for (int round = 0; round < max_rounds; ++round) {
      if (all_complete()) return true;
      schedule();
      answer_retractions();
      start();
      for (auto& [id, w] : workers) {
        while (!w.running.empty()) finish(id);
      }
    }
    return all_complete();
  }
  int64_t now() const { return now_; }

  Scheduler s;
  std::map<WorkerId, SimWorker> workers;
  bool defer_retractions = false;

 private:
  ResourceNames names_;  // the workers' side
  std::map<JobId, PoolRequest> requests_;
  std::vector<Assignment> pending_retractions_;
  JobId next_probe_ = 1'000'000;
  int64_t now_ = 1;
};

std::map<WorkerId, uint32_t> per_worker(const std::vector<Assignment>& as) {
  std::map<WorkerId, uint32_t> out;
  for (const Assignment& a : as) ++out[a.worker];
  return out;
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// --- Fit ----------------------------------------------------------------------------------------

TEST(SchedulerResourcesTest, CpuRequestsGoOnlyToWorkersBigEnough) {
  Sim sim;
  sim.add_worker(1, "2");
  sim.add_worker(2, "8");
  sim.add_job(1, 20, {"cpus=4"});
  for (int round = 0; round < 50 && !sim.all_complete(); ++round) {
    Decisions d = sim.schedule();
    for (const Assignment& a : d.assign) EXPECT_EQ(a.worker, 2u) << "a 4-CPU task on 2 CPUs";
    sim.start();
    EXPECT_LE(sim.running(2), 2u);
    sim.finish_all();
  }
  EXPECT_TRUE(sim.all_complete());
  WorkerFit small = sim.fit(1, 1);
  EXPECT_FALSE(small.could_fit);
  EXPECT_EQ(sim.s.reserved_for(1), 0u);
}

TEST(SchedulerResourcesTest, GpuRequestsGoOnlyToWorkersWithGpus) {
  Sim sim;
  sim.add_worker(1, "4");
  sim.add_worker(2, "4", {"gpus=[0,1]"});
  sim.add_worker(3, "4", {"mem=sum(1000)"});
  sim.add_job(1, 12, {"gpus=1"});
  sim.add_job(2, 12, {"cpus=1"});
  std::map<JobId, std::map<WorkerId, uint32_t>> got;
  for (int round = 0; round < 50 && !sim.all_complete(); ++round) {
    for (const Assignment& a : sim.schedule().assign) ++got[a.key.job][a.worker];
    sim.start();
    sim.finish_all();
  }
  EXPECT_TRUE(sim.all_complete());
  EXPECT_EQ(got[1], (std::map<WorkerId, uint32_t>{{2, 12}}));
  EXPECT_GT(got[2].size(), 1u) << "CPU-only tasks may go anywhere";
}

TEST(SchedulerResourcesTest, RequestNoWorkerCouldFitWaitsForOneThatCan) {
  Sim sim;
  sim.add_worker(1, "4");
  sim.add_worker(2, "2x2", {"mem=sum(100)"});
  sim.add_job(1, 2, {"cpus=2", "gpus=1"}, 5);  // no worker has gpus
  sim.add_job(2, 1, {"cpus=8"}, 5);            // no worker has 8 CPUs
  sim.add_job(3, 1, {"mem=200"}, 5);           // no worker has that much memory
  sim.add_job(4, 3, {"cpus=1"}, 0);            // behind them, fits anywhere
  for (int round = 0; round < 3; ++round) {
    for (const Assignment& a : sim.schedule().assign) EXPECT_EQ(a.key.job, 4u);
    // Nothing is kept free for requests no worker could ever run: job 4 is not held back.
    EXPECT_EQ(sim.s.reserved_for(1), 0u);
    EXPECT_EQ(sim.s.reserved_for(2), 0u);
    sim.start();
    sim.finish_all();
  }
  EXPECT_TRUE(sim.s.counts(4).complete());
  for (JobId j : {1u, 2u, 3u}) {
    EXPECT_EQ(sim.s.counts(j)[TaskState::kWaiting], sim.s.counts(j).total()) << "job " << j;
    for (const WorkerFit& f : sim.s.explain(j)) EXPECT_FALSE(f.could_fit) << "job " << j;
  }
  EXPECT_EQ(sim.s.waiting_tasks(), 4u);

  // A worker that can run the first arrives: it is assigned there at once (the task that does
  // not fit now may wait in its queue), and a bigger one then takes the others.
  sim.add_worker(3, "4", {"gpus=[0]"});
  Decisions d = sim.schedule();
  ASSERT_FALSE(d.assign.empty());
  for (const Assignment& a : d.assign) {
    EXPECT_EQ(a.key.job, 1u);
    EXPECT_EQ(a.worker, 3u);
  }
  sim.add_worker(4, "8", {"mem=sum(500)"});
  d = sim.schedule();
  ASSERT_FALSE(d.assign.empty());
  EXPECT_EQ(d.assign[0].key.ref(), (TaskRef{2, 1}));
  for (const Assignment& a : d.assign) EXPECT_EQ(a.worker, a.key.job == 1 ? 3u : 4u);
  EXPECT_EQ(sim.start().size(), 2u);  // job 1 on worker 3, job 2 on worker 4
  EXPECT_TRUE(sim.drain());
}

// --- Policies on groups -------------------------------------------------------------------------

TEST(SchedulerResourcesTest, ForceCompactWaitsForAWholeGroup) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(1, "2x4");
  sim.add_job(1, 1, {"cpus=3 compact!"});  // 3 of one group
  sim.add_job(2, 1, {"cpus=2"});           // 2 of the other
  ASSERT_EQ(sim.schedule().assign.size(), 2u);
  ASSERT_EQ(sim.start().size(), 2u);
  // 3 CPUs free, but 1 + 2 in two groups.
  EXPECT_TRUE(sim.model_fits(1, {"cpus=3"}));
  EXPECT_FALSE(sim.model_fits(1, {"cpus=3 compact!"}));
  EXPECT_FALSE(sim.model_fits(1, {"cpus=3 tight!"}));

  sim.add_job(3, 1, {"cpus=3 compact!"});
  WorkerFit f = sim.fit(3, 1);
  EXPECT_FALSE(f.fits_now);
  EXPECT_TRUE(f.could_fit);
  EXPECT_TRUE(contains(f.reason, "not in the required shape")) << f.reason;
  // It may wait in the worker's queue (its CPUs are within the worker's limit), but the
  // scheduler places nothing for it: the 3 free CPUs stay free in its model, and the worker
  // does not start it.
  sim.schedule();
  EXPECT_TRUE(sim.start().empty());
  EXPECT_EQ(sim.view(3, 1).state, TaskState::kWaiting);
  EXPECT_TRUE(sim.model_fits(1, {"cpus=3"})) << "compact! 3 placed across two groups";
  sim.finish(1, 0);  // the first task (3 CPUs) ends: group 0 frees
  sim.schedule();
  std::vector<Assignment> started = sim.start();
  ASSERT_EQ(started.size(), 1u);
  EXPECT_EQ(started[0].key.job, 3u);
  EXPECT_EQ(sim.view(3, 1).state, TaskState::kRunning);
  EXPECT_FALSE(sim.model_fits(1, {"cpus=4"})) << "2 + 3 of 8 CPUs are in use";
  EXPECT_TRUE(sim.drain());
}

TEST(SchedulerResourcesTest, AllTakesAWorkerOnlyWhenEntirelyFree) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(1, "2x2", {"gpus=[0]"});
  sim.add_job(1, 1, {"cpus=1"});
  ASSERT_EQ(sim.schedule().assign.size(), 1u);
  ASSERT_EQ(sim.start().size(), 1u);
  sim.add_job(2, 1, {"cpus=all"}, 1);
  sim.add_job(3, 4, {"cpus=1"}, 0);
  EXPECT_EQ(sim.s.job_cpus(2), 0u);
  for (int round = 0; round < 3; ++round) {
    // 3 of 4 CPUs are free: not enough for `all`, and kept free for it.
    EXPECT_TRUE(sim.schedule().assign.empty());
    EXPECT_EQ(sim.s.reserved_for(1), 2u);
    EXPECT_FALSE(sim.fit(2, 1).fits_now);
  }
  sim.finish(1);
  Decisions d = sim.schedule();
  ASSERT_EQ(d.assign.size(), 1u);
  EXPECT_EQ(d.assign[0].key.job, 2u);
  ASSERT_EQ(sim.start().size(), 1u);
  EXPECT_FALSE(sim.model_fits(1, {"cpus=1"}));
  EXPECT_TRUE(sim.schedule().assign.empty());
  sim.finish(1);
  d = sim.schedule();
  EXPECT_EQ(per_worker(d.assign), (std::map<WorkerId, uint32_t>{{1, 4}}));
  EXPECT_TRUE(sim.drain());
}

// --- Fractions and sums -------------------------------------------------------------------------

TEST(SchedulerResourcesTest, FractionsShareUnits) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(1, "8", {"gpus=[0,1]"});
  sim.add_job(1, 5, {"gpus=0.5"});
  Decisions d = sim.schedule();
  // Four placed at once; the fifth waits, in the worker's queue (it is within the worker's CPU
  // limit) or unassigned.
  ASSERT_GE(d.assign.size(), 4u);
  // The scheduler placed exactly four (4 of 8 CPUs in use), sharing the two GPUs.
  EXPECT_TRUE(sim.model_fits(1, {"cpus=4"}));
  EXPECT_FALSE(sim.model_fits(1, {"cpus=5"}));
  EXPECT_FALSE(sim.model_fits(1, {"gpus=0.5"}));
  WorkerFit f = sim.fit(1, 1);
  EXPECT_TRUE(contains(f.reason, "needs 0.5 of gpus, 0 free now")) << f.reason;
  std::vector<Assignment> started = sim.start();
  EXPECT_EQ(started.size(), 4u);
  EXPECT_EQ(sim.s.running_tasks(1), 4u);
  EXPECT_EQ(sim.view(1, 5).state, TaskState::kWaiting);
  // An idle worker with a GPU arrives: the fifth goes there (taken back from worker 1's queue if
  // it waited there: it was never placed).
  sim.add_worker(2, "1", {"gpus=[0]"});
  d = sim.schedule();
  if (!d.retract.empty()) {
    ASSERT_EQ(d.retract.size(), 1u);
    EXPECT_EQ(d.retract[0].key.task, 5u);
    d = sim.schedule();
  }
  ASSERT_EQ(d.assign.size(), 1u);
  EXPECT_EQ(d.assign[0].key.task, 5u);
  EXPECT_EQ(d.assign[0].worker, 2u);
  EXPECT_TRUE(sim.drain());
}

TEST(SchedulerResourcesTest, FractionsAboveOneShareTheirLastUnit) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(1, "4", {"gpus=[0,1,2]"});
  sim.add_job(1, 3, {"gpus=1.5"});
  // Two placed at once (1.5 + 1.5 = all three GPUs); the third waits, in the worker's queue
  // (it is within the worker's CPU limit) or unassigned.
  Decisions d = sim.schedule();
  ASSERT_GE(d.assign.size(), 2u);
  std::vector<Assignment> started = sim.start();
  ASSERT_EQ(started.size(), 2u);
  EXPECT_EQ(sim.s.running_tasks(1), 2u);
  EXPECT_EQ(sim.view(1, 3).state, TaskState::kWaiting);
  EXPECT_FALSE(sim.model_fits(1, {"gpus=0.0001"}));
  EXPECT_TRUE(sim.model_fits(1, {"cpus=2"}));  // CPUs are not the limit
  WorkerFit f = sim.fit(1, 1);
  EXPECT_TRUE(contains(f.reason, "needs 1.5 of gpus, 0 free now")) << f.reason;
  // One ends: the third takes the GPU it left whole and the half it shared.
  TaskKey ended = sim.finish(1);
  sim.schedule();
  started = sim.start();
  ASSERT_EQ(started.size(), 1u);
  EXPECT_EQ(started[0].key.task, 3u);
  EXPECT_NE(ended.task, 3u);
  EXPECT_EQ(sim.s.running_tasks(1), 2u);
  EXPECT_TRUE(sim.drain());
}

TEST(SchedulerResourcesTest, FractionalCpusShareACpu) {
  Sim sim(SchedulerConfig{.queue_factor = 1});
  sim.add_worker(1, "2");
  sim.add_job(1, 3, {"cpus=0.5"});
  sim.add_job(2, 1, {"cpus=1.5"});
  sim.schedule();
  sim.start();
  // Job 1's three halves take 1.5 CPUs, job 2's 1.5 does not fit the 0.5 left.
  EXPECT_EQ(sim.s.running_tasks(1), 3u);
  EXPECT_FALSE(sim.model_fits(1, {"cpus=1"}));
  EXPECT_TRUE(sim.model_fits(1, {"cpus=0.5"}));
  EXPECT_TRUE(sim.drain());
}

TEST(SchedulerResourcesTest, SumResourcesRunOneAtATime) {
  Sim sim;
  sim.add_worker(1, "4", {"mem=sum(100)"});
  sim.add_worker(2, "4", {"mem=sum(100)"});
  sim.add_job(1, 6, {"mem=60"});
  int rounds = 0;
  while (!sim.all_complete() && rounds < 10) {
    ++rounds;
    sim.schedule();
    sim.start();
    for (WorkerId w : {1u, 2u}) {
      EXPECT_EQ(sim.running(w), 1u) << "round " << rounds;
      EXPECT_EQ(sim.s.running_tasks(w), 1u) << "round " << rounds;
      // The scheduler's model holds exactly one 60 of the 100.
      EXPECT_TRUE(sim.model_fits(w, {"mem=40"}));
      EXPECT_FALSE(sim.model_fits(w, {"mem=41"}));
    }
    sim.finish_all();
  }
  EXPECT_TRUE(sim.all_complete());
  EXPECT_EQ(rounds, 3);
}

// --- Priorities ---------------------------------------------------------------------------------

TEST(SchedulerResourcesTest, HigherPriorityFirstThenLowerJobId) {
  Sim sim(SchedulerConfig{.queue_factor = 0});
  sim.add_worker(1, "1", {"gpus=[0]", "mem=sum(10)"});
  sim.add_job(3, 2, {"cpus=1", "mem=5"}, 5);
  sim.add_job(1, 2, {"cpus=1 scatter"}, 0);
  sim.add_job(4, 1, {"gpus=0.5"}, -1);
  sim.add_job(2, 2, {"cpus=1 compact!", "gpus=1"}, 5);
  sim.add_job(5, 1, {"cpus=1 tight"}, 7);
  std::vector<TaskRef> order;
  for (int i = 0; i < 20 && !sim.all_complete(); ++i) {
    Decisions d = sim.schedule();
    ASSERT_EQ(d.assign.size(), 1u);
    order.push_back(d.assign[0].key.ref());
    ASSERT_EQ(sim.start().size(), 1u);
    sim.finish_all();
  }
  std::vector<TaskRef> expected = {{5, 1}, {2, 1}, {2, 2}, {3, 1}, {3, 2}, {1, 1}, {1, 2}, {4, 1}};
  EXPECT_EQ(order, expected);
}

// --- No starvation ------------------------------------------------------------------------------

// A big task of a higher-priority job arrives while small tasks keep a worker busy. Each round
// one running task per worker ends, then schedule() and the workers start what they can. The big
// task must start within as many rounds as there were tasks held by the worker kept for it (plus
// one): the reservation holds everything else off that worker meanwhile.
TEST(SchedulerResourcesTest, BigTaskIsNotStarvedBySmallOnes) {
  Sim sim;  // queue_factor 1: the worker holds 8 CPUs of tasks, 4 of them waiting in its queue
  sim.add_worker(1, "4");
  sim.add_job(1, 10'000, {"cpus=1"}, 0);
  sim.schedule();
  ASSERT_EQ(sim.start().size(), 4u);
  const uint32_t held = sim.s.held_tasks(1);
  EXPECT_EQ(held, 8u);
  sim.add_job(2, 1, {"cpus=4"}, 1);
  const int bound = static_cast<int>(held) + 1;
  int rounds = 0, assigned_at = 0, reserved_rounds = 0;
  while (sim.view(2, 1).state == TaskState::kWaiting && rounds < 100) {
    ++rounds;
    if (sim.running(1) > 0) sim.finish(1);
    Decisions d = sim.schedule();
    for (const Assignment& a : d.assign) {
      if (a.key.job == 2 && !assigned_at) assigned_at = rounds;
    }
    if (sim.unheld(2, 1)) {
      // What keeps the small tasks off the worker while the big one waits.
      EXPECT_EQ(sim.s.reserved_for(1), 2u) << "round " << rounds;
      ++reserved_rounds;
    }
    sim.start();
  }
  EXPECT_EQ(sim.view(2, 1).state, TaskState::kRunning);
  EXPECT_GT(reserved_rounds, 0);
  EXPECT_LE(assigned_at, bound) << "assigned in round " << assigned_at;
  // Once assigned, the big task waits at the head of the worker's queue: nothing behind it starts
  // and nothing new is placed there, so it starts as soon as its CPUs are free.
  EXPECT_LE(rounds, bound) << "the 4-CPU task started in round " << rounds << " (assigned in "
                           << assigned_at << ")";
}

TEST(SchedulerResourcesTest, BigTaskIsNotStarvedOnMixedWorkers) {
  Sim sim;
  sim.add_worker(1, "4");
  sim.add_worker(2, "2x4", {"gpus=[0,1]"});
  sim.add_worker(3, "8", {"mem=sum(1000)"});
  sim.add_job(1, 5'000, {"cpus=1"}, 0);
  sim.add_job(2, 2'000, {"cpus=2 scatter"}, 0);
  sim.add_job(3, 2'000, {"cpus=1", "gpus=0.5"}, 0);
  sim.add_job(4, 2'000, {"cpus=2", "mem=300"}, 0);
  sim.add_job(5, 2'000, {"cpus=1 tight"}, 0);
  for (int i = 0; i < 3; ++i) {
    sim.schedule();
    sim.start();
  }
  uint32_t held = 0;
  for (WorkerId w : {1u, 2u, 3u}) {
    EXPECT_GT(sim.s.queued_tasks(w), 0u) << "worker " << w << " should be overloaded";
    held = std::max(held, sim.s.held_tasks(w));
  }
  sim.add_job(6, 1, {"cpus=8 compact!"}, 3);  // fits workers 2 and 3 only
  const int bound = static_cast<int>(held) + 1;
  int rounds = 0, reserved_rounds = 0;
  while (sim.view(6, 1).state == TaskState::kWaiting && rounds < 200) {
    ++rounds;
    for (WorkerId w : {1u, 2u, 3u}) {
      if (sim.running(w) > 0) sim.finish(w);
    }
    sim.schedule();
    if (sim.unheld(6, 1)) {
      EXPECT_TRUE(sim.s.reserved_for(2) == 6 || sim.s.reserved_for(3) == 6) << "round " << rounds;
      EXPECT_NE(sim.s.reserved_for(1), 6u) << "worker 1 could never run it";
      ++reserved_rounds;
    }
    sim.start();
  }
  EXPECT_EQ(sim.view(6, 1).state, TaskState::kRunning);
  EXPECT_GT(reserved_rounds, 0);
  EXPECT_LE(rounds, bound) << "the 8-CPU task started in round " << rounds;
}

// Backfill: 9 CPUs are free while the only GPU is busy. Jobs of several priorities wait for the
// GPU; CPU-only jobs of lower priority must start on the free CPUs meanwhile. The reservation of
// the first GPU job keeps back only what that job needs (one CPU and the GPU), not the worker.
TEST(SchedulerResourcesTest, CpuOnlyTasksBackfillWhileHigherPriorityJobsWaitForAGpu) {
  Sim sim;
  sim.add_worker(1, "10", {"gpus=[0]"});
  sim.add_job(1, 1, {"cpus=1", "gpus=1"}, 0);  // takes the GPU and keeps it
  sim.schedule();
  ASSERT_EQ(sim.start().size(), 1u);
  sim.add_job(2, 3, {"cpus=1", "gpus=1"}, 9);
  sim.add_job(3, 2, {"cpus=2", "gpus=1"}, 5);
  for (JobId j = 4; j < 16; ++j) sim.add_job(j, 1, {"cpus=1"}, static_cast<int32_t>(j % 3));
  sim.add_job(16, 1, {"cpus=1", "gpus=1"}, 4);
  uint32_t cpu_only_started = 0;
  for (int round = 0; round < 5; ++round) {
    sim.schedule();
    for (const Assignment& a : sim.start()) {
      EXPECT_TRUE(a.key.job >= 4 && a.key.job < 16) << "job " << a.key.job << " needs the GPU";
      ++cpu_only_started;
    }
  }
  // The reserved job needs one CPU: the other 8 free CPUs run CPU-only tasks.
  EXPECT_EQ(cpu_only_started, 8u);
  EXPECT_EQ(sim.s.reserved_for(1), 2u);
  // The CPU-only tasks end; the rest of them take their place.
  while (sim.running(1) > 1) sim.finish(1, 1);
  for (int round = 0; round < 5; ++round) {
    sim.schedule();
    for (const Assignment& a : sim.start()) {
      EXPECT_TRUE(a.key.job >= 4 && a.key.job < 16) << "job " << a.key.job << " needs the GPU";
      ++cpu_only_started;
    }
  }
  EXPECT_EQ(cpu_only_started, 12u);
  // The GPU frees: the GPU jobs run in priority order, none starved by the CPU-only ones.
  sim.finish(1, 0);
  std::vector<JobId> gpu_order;
  for (int round = 0; round < 50 && !sim.all_complete(); ++round) {
    sim.schedule();
    for (const Assignment& a : sim.start()) {
      if (a.key.job < 4 || a.key.job == 16) gpu_order.push_back(a.key.job);
    }
    sim.finish_all();
  }
  EXPECT_TRUE(sim.all_complete());
  EXPECT_EQ(gpu_order, (std::vector<JobId>{2, 2, 2, 3, 3, 16}));
}

// A reservation never holds what its job cannot use: a job waiting for a GPU on a worker that has
// none free keeps that worker's spare CPUs from nobody, and when several blocked jobs each keep
// a worker, every worker still runs CPU-only work on what the blocked jobs do not need.
TEST(SchedulerResourcesTest, ReservationsKeepBackOnlyTheBlockedJobsRequest) {
  Sim sim;
  sim.add_worker(1, "4", {"gpus=[0]"});
  sim.add_worker(2, "4", {"gpus=[0]"});
  sim.add_job(1, 2, {"cpus=1", "gpus=1"}, 0);
  sim.schedule();
  ASSERT_EQ(sim.start().size(), 2u);  // both GPUs busy
  sim.add_job(2, 1, {"cpus=2", "gpus=1"}, 3);
  sim.add_job(3, 1, {"cpus=1", "gpus=1"}, 2);
  sim.add_job(4, 100, {"cpus=1"}, 1);
  sim.schedule();
  std::map<WorkerId, uint32_t> started = per_worker(sim.start());
  // Worker kept for job 2: 3 free CPUs, 2 kept back. For job 3: 3 free, 1 kept back.
  EXPECT_EQ(started[1] + started[2], 3u);
  EXPECT_NE(sim.s.reserved_for(1), 0u);
  EXPECT_NE(sim.s.reserved_for(2), 0u);
  EXPECT_NE(sim.s.reserved_for(1), sim.s.reserved_for(2));
}

// --- explain() ----------------------------------------------------------------------------------

TEST(SchedulerResourcesTest, ExplainSaysWhyEachWorkerCannotRunATask) {
  Sim sim;
  sim.add_worker(2, "4", {"gpus=[0]"});
  sim.add_job(1, 1, {"cpus=2"});
  ASSERT_EQ(per_worker(sim.schedule().assign), (std::map<WorkerId, uint32_t>{{2, 1}}));
  sim.start();
  sim.add_worker(1, "2", {"gpus=[0]"});  // too small
  sim.add_worker(3, "8");                // no gpus
  sim.add_worker(4, "4", {"gpus=[0,1]"});
  sim.add_job(2, 1, {"cpus=4", "gpus=1"});
  std::vector<WorkerFit> fits = sim.s.explain(2);
  ASSERT_EQ(fits.size(), 4u);
  EXPECT_EQ(fits[0].worker, 1u);
  EXPECT_FALSE(fits[0].fits_now);
  EXPECT_FALSE(fits[0].could_fit);
  EXPECT_TRUE(contains(fits[0].reason, "needs 4 of cpus, has 2")) << fits[0].reason;
  EXPECT_EQ(fits[1].worker, 2u);
  EXPECT_FALSE(fits[1].fits_now);
  EXPECT_TRUE(fits[1].could_fit);
  EXPECT_TRUE(contains(fits[1].reason, "needs 4 of cpus, 2 free now")) << fits[1].reason;
  EXPECT_EQ(fits[2].worker, 3u);
  EXPECT_FALSE(fits[2].fits_now);
  EXPECT_FALSE(fits[2].could_fit);
  EXPECT_TRUE(contains(fits[2].reason, "no resource 'gpus'")) << fits[2].reason;
  EXPECT_EQ(fits[3].worker, 4u);
  EXPECT_TRUE(fits[3].fits_now);
  EXPECT_TRUE(fits[3].could_fit);
  EXPECT_EQ(fits[3].reason, "");
  EXPECT_TRUE(sim.s.explain(99).empty());
}

// --- Randomized churn ---------------------------------------------------------------------------

class Churn {
 public:
  explicit Churn(uint32_t seed) : rng_(seed) {
    // Worker 1 stays and can run every request made below.
    sim_.add_worker(1, "4x8", {"gpus=[[0,1],[2,3]]", "mem=sum(16000)"});
    last_worker_ = 1;
    sim_.defer_retractions = true;
  }

  void run(int steps) {
    for (int i = 0; i < steps && !::testing::Test::HasFailure(); ++i) step();
    sim_.answer_retractions();
    // Workers stay from now on: everything ends.
    EXPECT_TRUE(sim_.drain(2000)) << "not drained: " << sim_.s.waiting_tasks() << " waiting";
    for (const auto& [id, w] : sim_.workers) {
      EXPECT_EQ(sim_.s.held_tasks(id), 0u) << "worker " << id;
      EXPECT_TRUE(w.queue.empty() && w.running.empty()) << "worker " << id;
    }
    for (JobId j : sim_.s.job_ids()) {
      const TaskCounts c = sim_.s.counts(j);
      EXPECT_TRUE(c.complete()) << "job " << j;
      ended_ += c.total();
    }
  }

  uint64_t assignments_ = 0, retractions_ = 0, ended_ = 0;

 private:
  uint32_t pick(uint32_t n) { return std::uniform_int_distribution<uint32_t>(0, n - 1)(rng_); }
  template <typename T>
  const T& one_of(const std::vector<T>& v) {
    return v[pick(static_cast<uint32_t>(v.size()))];
  }

  void step() {
    switch (pick(12)) {
      case 0:
        if (sim_.workers.size() < 7) add_worker();
        break;
      case 1:
        if (sim_.workers.size() > 1 && pick(2) == 0) remove_worker();
        break;
      case 2:
      case 3:
        add_job();
        break;
      case 4:
        if (last_job_ > 0 && pick(3) == 0) sim_.cancel_job(1 + pick(last_job_));
        break;
      case 5:
        sim_.answer_retractions();
        break;
      case 6:
      case 7: {
        Decisions d = sim_.schedule();
        assignments_ += d.assign.size();
        retractions_ += d.retract.size();
        break;
      }
      case 8:
      case 9:
        sim_.start();
        break;
      default:
        finish_some();
    }
  }

  void add_worker() {
    static const std::vector<std::string> cpus = {"1", "4", "2x4", "4x4", "2x8", "8", "3x2"};
    static const std::vector<std::string> gpus = {"", "", "gpus=[0,1]", "gpus=[[0,1],[2,3]]",
                                                  "gpus=[0]"};
    static const std::vector<std::string> mem = {"", "", "mem=sum(4000)", "mem=sum(16000)"};
    std::vector<std::string> others;
    for (const std::string& o : {one_of(gpus), one_of(mem)}) {
      if (!o.empty()) others.push_back(o);
    }
    sim_.add_worker(++last_worker_, one_of(cpus), others);
  }

  void remove_worker() {
    std::vector<WorkerId> ids;
    for (const auto& [id, w] : sim_.workers) {
      if (id != 1) ids.push_back(id);
    }
    sim_.remove_worker(one_of(ids));
  }

  // Requests worker 1 can always run: at most 8 CPUs (a group), 2 GPUs (a group), 16000 mem.
  void add_job() {
    static const std::vector<std::string> policies = {"", " compact!", " tight", " tight!",
                                                      " scatter"};
    std::vector<std::string> entries;
    if (pick(20) == 0) {
      entries.push_back("cpus=all");
    } else if (pick(8) == 0) {
      static const std::vector<std::string> shares = {"0.5", "1.5", "2.25 scatter", "0.75 tight"};
      entries.push_back("cpus=" + one_of(shares));
    } else {
      static const std::vector<uint32_t> amounts = {1, 1, 1, 2, 2, 3, 4, 8};
      entries.push_back("cpus=" + std::to_string(one_of(amounts)) + one_of(policies));
    }
    switch (pick(6)) {
      case 0:
        entries.push_back(pick(3) == 0 ? "gpus=1.5 tight" : pick(2) ? "gpus=0.5" : "gpus=0.25");
        break;
      case 1:
        entries.push_back("gpus=" + std::to_string(1 + pick(2)) + one_of(policies));
        break;
      case 2:
        if (pick(4) == 0) entries.push_back("gpus=all");
        break;
      default:
        break;
    }
    if (pick(3) == 0) {
      entries.push_back(pick(10) == 0 ? "mem=all" : "mem=" + std::to_string(100 * (1 + pick(40))));
    }
    sim_.add_job(++last_job_, 1 + pick(15), entries, static_cast<int32_t>(pick(4)) - 1);
  }

  void finish_some() {
    for (auto& [id, w] : sim_.workers) {
      for (size_t k = w.running.size(); k-- > 0;) {
        if (w.running[k].killed || pick(3) == 0) sim_.finish(id, k, pick(8) == 0);
      }
    }
  }

  Sim sim_;
  std::mt19937 rng_;
  WorkerId last_worker_ = 0;
  JobId last_job_ = 0;
};

TEST(SchedulerResourcesTest, RandomizedChurnWithMixedRequests) {
  uint64_t assignments = 0, retractions = 0, ended = 0;
  for (uint32_t seed = 1; seed <= 8; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    Churn churn(seed);
    churn.run(1500);
    assignments += churn.assignments_;
    retractions += churn.retractions_;
    ended += churn.ended_;
    if (HasFailure()) break;
  }
  EXPECT_GT(assignments, 1000u);
  EXPECT_GT(retractions, 0u) << "the churn never exercised retraction";
  RecordProperty("assignments", std::to_string(assignments));
  RecordProperty("tasks", std::to_string(ended));
}

}  // namespace
}  // namespace hq::sched
