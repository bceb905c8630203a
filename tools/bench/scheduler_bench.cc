// Throughput and memory of the scheduler alone (DESIGN.md budgets: >= 1,000,000 assignments/s,
// <= 64 bytes per waiting task of an array job).
//
//   scheduler_bench                       # all
//   scheduler_bench --benchmark_filter=Memory

#include <malloc.h>

#include <cstdint>
#include <deque>
#include <memory>
#include <vector>

#include <benchmark/benchmark.h>

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

// 1,000,000 tasks in four array jobs requesting 1, 2 and 4 CPUs, on 1,000 workers.
void BM_AssignAndFinish(benchmark::State& state) {
  uint64_t total = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto s = make_cluster();
    const JobSpec jobs[] = {
        {1, IdSet::range(0, 399'999), 1, 0},
        {2, IdSet::range(0, 299'999), 2, 0},
        {3, IdSet::range(0, 199'999), 4, 0},
        {4, IdSet({IdRange{0, 199'998, 2}}), 1, 1},  // 100,000 sparse ids, higher priority
    };
    for (const JobSpec& j : jobs) {
      if (!s->add_job(j).is_ok()) std::abort();
    }
    state.ResumeTiming();
    total += drain(*s, state);
    state.PauseTiming();
    s.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<int64_t>(total));
  state.SetLabel("assignments (schedule + start + finish)");
}
BENCHMARK(BM_AssignAndFinish)->Unit(benchmark::kMillisecond);

// The same million tasks as 100,000 jobs of 10 tasks with mixed priorities.
void BM_ManySmallJobs(benchmark::State& state) {
  uint64_t total = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto s = make_cluster();
    for (JobId j = 1; j <= 100'000; ++j) {
      const uint32_t cpus[] = {1, 1, 2, 4};
      if (!s->add_job({j, IdSet::range(1, 10), cpus[j % 4], static_cast<int32_t>(j % 3)}).is_ok()) {
        std::abort();
      }
    }
    state.ResumeTiming();
    total += drain(*s, state);
    state.PauseTiming();
    s.reset();
    state.ResumeTiming();
  }
  state.SetItemsProcessed(static_cast<int64_t>(total));
}
BENCHMARK(BM_ManySmallJobs)->Unit(benchmark::kMillisecond);

// Heap bytes per waiting task of one 10,000,000-task array job (sparse ids, so the id ranges
// count too).
void BM_MemoryPerWaitingTask(benchmark::State& state) {
  constexpr uint32_t kTasks = 10'000'000;
  double per_task = 0;
  for (auto _ : state) {
    // Small blocks (uordblks) plus large mmap'ed ones (hblkhd).
    auto heap = [] {
      struct mallinfo2 m = mallinfo2();
      return m.uordblks + m.hblkhd;
    };
    size_t before = heap();
    auto s = std::make_unique<Scheduler>();
    // 10,000 ranges of 1,000 ids with gaps.
    std::vector<IdRange> ranges;
    for (uint32_t r = 0; r < kTasks / 1000; ++r) ranges.push_back({r * 1500, r * 1500 + 999, 1});
    if (!s->add_job({1, IdSet(std::move(ranges)), 1, 0}).is_ok()) std::abort();
    size_t after = heap();
    per_task = static_cast<double>(after - before) / kTasks;
    benchmark::DoNotOptimize(s->waiting_tasks());
  }
  state.counters["bytes_per_task"] = per_task;
}
BENCHMARK(BM_MemoryPerWaitingTask)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace hq::sched

BENCHMARK_MAIN();
