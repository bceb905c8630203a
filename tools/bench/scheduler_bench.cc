// Throughput and memory of the scheduler alone (DESIGN.md budgets: >= 1,000,000 assignments/s,
// <= 64 bytes per waiting task of an array job; issue 15: <= 1 byte per waiting and <= 4 bytes
// per ended task).
//
//   scheduler_bench                       # all
//   scheduler_bench --benchmark_filter=Memory

#include <malloc.h>

#include <cstdint>
#include <cstdlib>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <benchmark/benchmark.h>

#include "common/resource_pool.h"
#include "common/resources.h"
#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

constexpr uint32_t kWorkers = 1000;

std::unique_ptr<Scheduler> make_cluster() {
  auto s = std::make_unique<Scheduler>();
  for (WorkerId w = 1; w <= kWorkers; ++w) {
    // 8..32 CPUs.
    if (!s->add_worker(w, 8 + (w * 7) % 25).is_ok()) std::abort();
  }
  return s;
}

// Runs the cluster until no task is left: each round schedules, lets every worker start its
// held tasks in order while they fit its CPUs, and finishes all started ones. Returns the number
// of assignments.
uint64_t drain(Scheduler& s, benchmark::State& state) {
  std::vector<std::deque<TaskKey>> queues(kWorkers + 1);
  std::vector<uint32_t> cpus(s.last_job_id() + 1);
  std::vector<uint32_t> worker_cpus(kWorkers + 1);
  for (WorkerId w = 1; w <= kWorkers; ++w) worker_cpus[w] = 8 + (w * 7) % 25;
  for (JobId j : s.job_ids()) cpus[j] = s.job_cpus(j);
  uint64_t assigned = 0, rounds = 0;
  int64_t now = 1;
  std::vector<std::pair<WorkerId, TaskKey>> started;
  for (;;) {
    Decisions d = s.schedule();
    ++rounds;
    assigned += d.assign.size();
    for (const Assignment& a : d.assign) queues[a.worker].push_back(a.key);
    started.clear();
    for (WorkerId w = 1; w <= kWorkers; ++w) {
      uint32_t used = 0;
      std::deque<TaskKey>& q = queues[w];
      while (!q.empty() && used + cpus[q.front().job] <= worker_cpus[w]) {
        used += cpus[q.front().job];
        if (!s.task_started(w, q.front(), now)) std::abort();
        started.push_back({w, q.front()});
        q.pop_front();
      }
    }
    if (started.empty() && d.assign.empty()) break;
    ++now;
    for (const auto& [w, key] : started) {
      if (!s.task_finished(w, key, now)) std::abort();
    }
  }
  if (s.waiting_tasks() != 0) std::abort();
  state.counters["rounds"] = static_cast<double>(rounds);
  return assigned;
}

// Times drain() of a fresh cluster into which `add` (not timed) put the jobs; items are the
// assignments.
template <typename Add>
void drain_benchmark(benchmark::State& state, const Add& add) {
  uint64_t total = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto s = make_cluster();
    add(*s);
    state.ResumeTiming();
    total += drain(*s, state);
    state.PauseTiming();
    s.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<int64_t>(total));
}

// 1,000,000 tasks in four array jobs requesting 1, 2 and 4 CPUs, on 1,000 workers.
void BM_AssignAndFinish(benchmark::State& state) {
  drain_benchmark(state, [](Scheduler& s) {
    const JobSpec jobs[] = {
        {1, IdSet::range(0, 399'999), 1, 0},
        {2, IdSet::range(0, 299'999), 2, 0},
        {3, IdSet::range(0, 199'999), 4, 0},
        {4, IdSet({IdRange{0, 199'998, 2}}), 1, 1},  // 100,000 sparse ids, higher priority
    };
    for (const JobSpec& j : jobs) {
      if (!s.add_job(j).is_ok()) std::abort();
    }
  });
  state.SetLabel("assignments (schedule + start + finish)");
}
BENCHMARK(BM_AssignAndFinish)->Unit(benchmark::kMillisecond);

// The same million tasks as 100,000 jobs of 10 tasks with mixed priorities.
void BM_ManySmallJobs(benchmark::State& state) {
  drain_benchmark(state, [](Scheduler& s) {
    for (JobId j = 1; j <= 100'000; ++j) {
      const uint32_t cpus[] = {1, 1, 2, 4};
      if (!s.add_job({j, IdSet::range(1, 10), cpus[j % 4], static_cast<int32_t>(j % 3)}).is_ok()) {
        std::abort();
      }
    }
  });
}
BENCHMARK(BM_ManySmallJobs)->Unit(benchmark::kMillisecond);

// --- Mixed resource requests ---------------------------------------------------------------------

template <typename T>
T must(Result<T> r) {
  if (!r.is_ok()) std::abort();
  return std::move(r).value();
}

// Worker w of the mixed cluster: groups of CPUs, some with GPUs, some with memory.
ResourceDescriptor mixed_worker(WorkerId w) {
  ResourceDescriptor d;
  d.set(must(parse_cpu_definition(w % 2 ? "4x8" : "2x16")));
  if (w % 4 == 0 || w % 4 == 3) d.set(must(parse_resource_definition("gpus=[0,1,2,3]")));
  if (w % 4 == 1 || w % 4 == 3) d.set(must(parse_resource_definition("mem=sum(64000)")));
  return d;
}

ResourceRequest mixed_request(uint32_t kind) {
  static const std::vector<std::vector<std::string>> kinds = {
      {"cpus=1"},
      {"cpus=4 compact!"},
      {"cpus=2 scatter"},
      {"cpus=1", "gpus=0.5"},
      {"cpus=2", "mem=4000"},
      {"cpus=2 tight"},
  };
  std::vector<ResourceRequestEntry> entries;
  for (const std::string& e : kinds[kind % kinds.size()]) {
    entries.push_back(must(parse_named_request(e)));
  }
  return must(make_request(std::move(entries)));
}

// The workers of the mixed cluster, run as worker/daemon.cc runs them: each starts the tasks it
// holds, in order, as they fit its own pool (skipping the others). Their bookkeeping is not the
// scheduler's work: the caller excludes it from the timing.
class MixedWorkers {
 public:
  explicit MixedWorkers(const Scheduler& s) : workers_(kWorkers + 1) {
    for (WorkerId w = 1; w <= kWorkers; ++w) {
      workers_[w].pool = ResourcePool(mixed_worker(w), names_);
    }
    requests_.resize(s.last_job_id() + 1);
    for (JobId j : s.job_ids()) requests_[j] = intern_request(mixed_request(j), names_);
  }
  void receive(const Assignment& a) { workers_[a.worker].queue.push_back(a.key); }
  // Whether the worker still holds the task unstarted; if so it gives it back.
  bool give_back(const Assignment& a) {
    std::deque<TaskKey>& q = workers_[a.worker].queue;
    for (auto it = q.begin(); it != q.end(); ++it) {
      if (*it == a.key) {
        q.erase(it);
        return true;
      }
    }
    return false;
  }
  // Which held tasks every worker starts now.
  void start(std::vector<Assignment>& out) {
    out.clear();
    for (WorkerId w = 1; w <= kWorkers; ++w) {
      Worker& k = workers_[w];
      for (auto it = k.queue.begin(); it != k.queue.end();) {
        Allocation alloc;
        if (!k.pool.allocate(requests_[it->job], alloc)) {
          ++it;
          continue;
        }
        out.push_back({w, *it});
        k.running.push_back(std::move(alloc));
        it = k.queue.erase(it);
      }
    }
  }
  // Every started task ends.
  void finish_all() {
    for (Worker& k : workers_) {
      for (const Allocation& a : k.running) k.pool.release(a);
      k.running.clear();
    }
  }

 private:
  struct Worker {
    ResourcePool pool;
    std::deque<TaskKey> queue;
    std::vector<Allocation> running;
  };
  ResourceNames names_;
  std::vector<PoolRequest> requests_;  // by job
  std::vector<Worker> workers_;
};

// 1,000,000 tasks in 1,000 jobs of six mixed requests (1 CPU; 4 CPUs compact!; 2 CPUs scatter;
// 1 CPU + half a GPU; 2 CPUs + 4000 mem; 2 CPUs tight) and three priorities, on 1,000 workers of
// 2x16 or 4x8 CPUs, half with 4 GPUs, half with 64000 mem. Rounds as in drain(): schedule, start
// what fits, finish everything started. The workers' own bookkeeping is not timed.
void BM_MixedRequests(benchmark::State& state) {
  constexpr JobId kJobs = 1000;
  uint64_t total = 0, rounds = 0, asked = 0, retracted = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto s = std::make_unique<Scheduler>();
    for (WorkerId w = 1; w <= kWorkers; ++w) {
      if (!s->add_worker(w, mixed_worker(w)).is_ok()) std::abort();
    }
    for (JobId j = 1; j <= kJobs; ++j) {
      JobSpec spec;
      spec.id = j;
      spec.task_ids = IdSet::range(1, 1000);
      spec.priority = static_cast<int32_t>(j % 3);
      spec.resources = mixed_request(j);
      if (!s->add_job(spec).is_ok()) std::abort();
    }
    MixedWorkers workers(*s);
    std::vector<Assignment> started, given_back;
    int64_t now = 1;
    rounds = asked = retracted = 0;
    state.ResumeTiming();
    for (;;) {
      Decisions d = s->schedule();
      ++rounds;
      total += d.assign.size();
      state.PauseTiming();
      for (const Assignment& a : d.assign) workers.receive(a);
      given_back.clear();
      asked += d.retract.size();
      for (const Assignment& a : d.retract) {
        if (workers.give_back(a)) given_back.push_back(a);
      }
      workers.start(started);
      state.ResumeTiming();
      for (const Assignment& a : given_back) {
        if (!s->task_retracted(a.worker, a.key)) std::abort();
      }
      retracted += given_back.size();
      if (started.empty() && d.assign.empty() && given_back.empty()) break;
      for (const Assignment& a : started) {
        if (!s->task_started(a.worker, a.key, now)) std::abort();
      }
      ++now;
      for (const Assignment& a : started) {
        if (!s->task_finished(a.worker, a.key, now)) std::abort();
      }
      state.PauseTiming();
      workers.finish_all();
      state.ResumeTiming();
    }
    state.PauseTiming();
    for (JobId j = 1; j <= kJobs; ++j) {
      if (!s->counts(j).complete()) std::abort();
    }
    s.reset();
    state.ResumeTiming();
  }
  state.counters["rounds"] = static_cast<double>(rounds);
  state.counters["retractions"] = static_cast<double>(asked);     // asked for
  state.counters["given_back"] = static_cast<double>(retracted);  // not started meanwhile
  state.SetItemsProcessed(static_cast<int64_t>(total));
  state.SetLabel("assignments (schedule + start + finish)");
}
BENCHMARK(BM_MixedRequests)->Unit(benchmark::kMillisecond);

// --- Dependencies ----------------------------------------------------------------------------

// About a million tasks in layers of fan-out and fan-in: a root, then ten times a wide layer of
// 100,000 tasks each depending on one task of the narrow layer before it (the root at first) and
// a narrow layer of 1,000 tasks each depending on 100 tasks of the wide layer before it.
constexpr uint32_t kWide = 100'000;
constexpr uint32_t kNarrow = 1'000;
constexpr uint32_t kLayerPairs = 10;

JobSpec layered_graph(JobId id) {
  JobSpec spec{id, {}, 1, 0};
  uint32_t next = 0;
  std::vector<uint32_t> narrow = {next++};  // the root
  spec.deps.reserve(1 + kLayerPairs * (kWide + kNarrow));
  spec.deps.push_back({narrow[0], {}});
  for (uint32_t pair = 0; pair < kLayerPairs; ++pair) {
    const uint32_t wide_begin = next;
    for (uint32_t i = 0; i < kWide; ++i) spec.deps.push_back({next++, {narrow[i % narrow.size()]}});
    narrow.clear();
    for (uint32_t j = 0; j < kNarrow; ++j) {
      TaskDeps& t = spec.deps.emplace_back(TaskDeps{next++, {}});
      narrow.push_back(t.id);
      for (uint32_t k = 0; k < kWide / kNarrow; ++k) t.deps.push_back(wide_begin + j * 100 + k);
    }
  }
  spec.task_ids = IdSet::range(0, next - 1);
  return spec;
}

// The layered graph drained as every task ends at once: each round assigns the ready tasks,
// every worker starts what fits and all started tasks finish, releasing their dependants.
// Items are assignments; compare with BM_ArrayOfTheSameSize.
void BM_GraphLayers(benchmark::State& state) {
  drain_benchmark(state, [](Scheduler& s) {
    if (!s.add_job(layered_graph(1)).is_ok()) std::abort();
  });
  state.SetLabel("assignments of graph tasks");
}
BENCHMARK(BM_GraphLayers)->Unit(benchmark::kMillisecond);

// The baseline of BM_GraphLayers: as many tasks in one array job, no dependencies.
void BM_ArrayOfTheSameSize(benchmark::State& state) {
  drain_benchmark(state, [](Scheduler& s) {
    const uint32_t n = 1 + kLayerPairs * (kWide + kNarrow);
    if (!s.add_job({1, IdSet::range(0, n - 1), 1, 0}).is_ok()) std::abort();
  });
  state.SetLabel("assignments of array tasks");
}
BENCHMARK(BM_ArrayOfTheSameSize)->Unit(benchmark::kMillisecond);

size_t heap_bytes() {
  struct mallinfo2 m = mallinfo2();
  return m.uordblks + m.hblkhd;  // small blocks plus large mmap'ed ones
}

// Heap bytes the scheduler holds per task of the layered graph, its dependencies included (the
// spec it is built from is not counted).
void BM_MemoryPerGraphTask(benchmark::State& state) {
  double per_task = 0, per_dep = 0;
  for (auto _ : state) {
    JobSpec spec = layered_graph(1);
    uint64_t deps = 0;
    for (const TaskDeps& t : spec.deps) deps += t.deps.size();
    const size_t before = heap_bytes();
    auto s = std::make_unique<Scheduler>();
    if (!s->add_job(spec).is_ok()) std::abort();
    const size_t after = heap_bytes();
    per_task = static_cast<double>(after - before) / static_cast<double>(spec.deps.size());
    per_dep = static_cast<double>(deps) / static_cast<double>(spec.deps.size());
    benchmark::DoNotOptimize(s->waiting_tasks());
  }
  state.counters["bytes_per_task"] = per_task;
  state.counters["deps_per_task"] = per_dep;
}
BENCHMARK(BM_MemoryPerGraphTask)->Iterations(1)->Unit(benchmark::kMillisecond);

// Heap bytes per waiting task of one 10,000,000-task array job (sparse ids, so the id ranges
// count too).
void BM_MemoryPerWaitingTask(benchmark::State& state) {
  constexpr uint32_t kTasks = 10'000'000;
  double per_task = 0;
  for (auto _ : state) {
    size_t before = heap_bytes();
    auto s = std::make_unique<Scheduler>();
    // 10,000 ranges of 1,000 ids with gaps.
    std::vector<IdRange> ranges;
    for (uint32_t r = 0; r < kTasks / 1000; ++r) ranges.push_back({r * 1500, r * 1500 + 999, 1});
    if (!s->add_job({1, IdSet(std::move(ranges)), 1, 0}).is_ok()) std::abort();
    size_t after = heap_bytes();
    per_task = static_cast<double>(after - before) / kTasks;
    benchmark::DoNotOptimize(s->waiting_tasks());
  }
  state.counters["bytes_per_task"] = per_task;
}
BENCHMARK(BM_MemoryPerWaitingTask)->Iterations(1)->Unit(benchmark::kMillisecond);

// Heap bytes per ended task of one 2,000,000-task array job that ran to its end on two workers,
// one task in 1,000 failing (each keeps its error text), measured after the schedule() that
// packs the ended tasks' records. Task durations of a few milliseconds, as a campaign of short
// tasks has them.
void BM_MemoryPerEndedTask(benchmark::State& state) {
  constexpr uint32_t kTasks = 2'000'000;
  double per_task = 0;
  for (auto _ : state) {
    auto s = std::make_unique<Scheduler>();
    for (WorkerId w = 1; w <= 2; ++w) {
      if (!s->add_worker(w, 64).is_ok()) std::abort();
    }
    s->schedule();
    size_t before = heap_bytes();
    if (!s->add_job({1, IdSet::range(1, kTasks), 1, 0}).is_ok()) std::abort();
    int64_t now = 1'700'000'000'000;
    uint32_t ended = 0;
    while (ended < kTasks) {
      Decisions d = s->schedule(now);
      for (const Assignment& a : d.assign) {
        if (!s->task_started(a.worker, a.key, ++now)) std::abort();
        const int64_t end = now + 1 + a.key.task % 4;
        const bool ok = a.key.task % 1000 != 0 ? s->task_finished(a.worker, a.key, end)
                                               : s->task_failed(a.worker, a.key, end, "exit 1");
        if (!ok) std::abort();
        ++ended;
      }
    }
    s->schedule(now);
    size_t after = heap_bytes();
    per_task = static_cast<double>(after - before) / kTasks;
    benchmark::DoNotOptimize(s->waiting_tasks());
  }
  state.counters["bytes_per_task"] = per_task;
}
BENCHMARK(BM_MemoryPerEndedTask)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace hq::sched

BENCHMARK_MAIN();
