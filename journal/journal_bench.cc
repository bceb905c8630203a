// Journal throughput with sync on, bytes per task event on disk, replay speed.
//
//   journal_bench                                  # everything (the replay setup writes 2M events)
//   journal_bench --benchmark_filter=Commit        # group commit only
//
// Journals go to a fresh directory under $TMPDIR (or /tmp): put it on the disk the server will
// use, since sync cost is the whole story. Callbacks run on the journal thread (no Options::post),
// and the benchmark thread plays the server's event loop.

#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

#include <benchmark/benchmark.h>

#include "journal/journal.h"

namespace hq::journal {
namespace {

class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "hq-journal-bench-XXXXXX").string();
    if (!mkdtemp(pattern.data())) abort();
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::unique_ptr<Journal> open_or_die(const fs::path& path, bool sync = true) {
  Options options;
  options.sync = sync;
  auto opened = Journal::open(path, options);
  if (!opened) {
    fprintf(stderr, "%s\n", opened.message().c_str());
    abort();
  }
  return std::move(*opened);
}

// Counts commits in flight; the benchmark thread waits for room, the journal thread makes it.
class InFlight {
 public:
  Done done() {
    {
      std::lock_guard lock(mu_);
      ++count_;
    }
    return [this](Status s) {
      if (!s) abort();
      std::lock_guard lock(mu_);
      --count_;
      cv_.notify_all();
    };
  }
  void wait_below(int limit) {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [&] { return count_ < limit; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int count_ = 0;
};

void append_task_event(Journal& journal, JobId job, TaskId task, bool start) {
  EventMessage message(1'700'000'000'000 + task);
  if (start) {
    auto e = message.event().initTaskStarted();
    e.setJob(job);
    e.setTask(task);
    e.setWorker(1);
  } else {
    auto e = message.event().initTaskFinished();
    e.setJob(job);
    e.setTask(task);
  }
  if (!journal.append(message.message())) abort();
}

void set_counters(benchmark::State& state, const JournalStats& before, const JournalStats& after,
                  uint64_t events) {
  const double commits = static_cast<double>(after.commits - before.commits);
  const double batches = static_cast<double>(after.batches - before.batches);
  state.counters["commits/s"] = benchmark::Counter(commits, benchmark::Counter::kIsRate);
  state.counters["syncs/s"] = benchmark::Counter(batches, benchmark::Counter::kIsRate);
  state.counters["events/s"] =
      benchmark::Counter(static_cast<double>(events), benchmark::Counter::kIsRate);
  state.counters["commits/sync"] = batches > 0 ? commits / batches : 0;
}

// One request at a time: append one event, commit, wait for the sync. The sync latency bound.
void BM_CommitOneAtATime(benchmark::State& state) {
  TempDir dir;
  auto journal = open_or_die(dir.path());
  InFlight in_flight;
  const auto before = journal->stats();
  TaskId task = 0;
  for (auto _ : state) {
    append_task_event(*journal, 1, task++, true);
    journal->commit(in_flight.done());
    in_flight.wait_below(1);
  }
  set_counters(state, before, journal->stats(), task);
}
BENCHMARK(BM_CommitOneAtATime)->UseRealTime()->MinTime(2);

// Many clients: up to range(0) commits of one event each in flight, as when many submissions
// arrive while a sync runs. Group commit merges them into one batch per sync.
void BM_CommitConcurrent(benchmark::State& state) {
  TempDir dir;
  auto journal = open_or_die(dir.path());
  InFlight in_flight;
  const int limit = static_cast<int>(state.range(0));
  const auto before = journal->stats();
  TaskId task = 0;
  for (auto _ : state) {
    in_flight.wait_below(limit);
    append_task_event(*journal, 1, task++, true);
    journal->commit(in_flight.done());
  }
  in_flight.wait_below(1);
  set_counters(state, before, journal->stats(), task);
}
BENCHMARK(BM_CommitConcurrent)->Arg(1)->Arg(16)->Arg(256)->Arg(4096)->UseRealTime()->MinTime(2);

// The server's shape: every loop turn appends the start and end of range(0) tasks and commits
// once; up to 4 turns in flight. An iteration is one task (two events).
void BM_TaskEvents(benchmark::State& state) {
  TempDir dir;
  auto journal = open_or_die(dir.path());
  InFlight in_flight;
  const TaskId per_commit = static_cast<TaskId>(state.range(0));
  const auto before = journal->stats();
  TaskId task = 0;
  for (auto _ : state) {
    append_task_event(*journal, 1, task, true);
    append_task_event(*journal, 1, task, false);
    if (++task % per_commit == 0) {
      in_flight.wait_below(4);
      journal->commit(in_flight.done());
    }
  }
  journal->commit(in_flight.done());
  in_flight.wait_below(1);
  set_counters(state, before, journal->stats(), 2ull * task);
  state.SetItemsProcessed(task);
}
BENCHMARK(BM_TaskEvents)->Arg(100)->Arg(1000)->UseRealTime()->MinTime(2);

// Bytes per task event: in the WAL batches, and on disk once flushed and compacted.
void BM_BytesPerTaskEvent(benchmark::State& state) {
  constexpr TaskId kTasks = 500'000;
  for (auto _ : state) {
    TempDir dir;
    auto journal = open_or_die(dir.path());
    InFlight in_flight;
    for (TaskId task = 0; task < kTasks; ++task) {
      append_task_event(*journal, 1 + task / 10'000, task, true);
      append_task_event(*journal, 1 + task / 10'000, task, false);
      if (task % 10'000 == 9'999) journal->commit(in_flight.done());
    }
    in_flight.wait_below(1);
    const auto stats = journal->stats();
    journal->compact(in_flight.done());
    in_flight.wait_below(1);
    const double events = 2.0 * kTasks;
    state.counters["wal_bytes/event"] = static_cast<double>(stats.bytes_written) / events;
    state.counters["disk_bytes/event"] = static_cast<double>(journal->size_on_disk()) / events;
  }
}
BENCHMARK(BM_BytesPerTaskEvent)->Iterations(1)->Unit(benchmark::kMillisecond);

// Restart: open a journal of 1,000,000 tasks (one job; each started and finished: 2,000,001
// events, left in the WAL and memtables as after a kill -9) and replay it.
void BM_RestartReplay(benchmark::State& state) {
  constexpr TaskId kTasks = 1'000'000;
  TempDir dir;
  {
    auto journal = open_or_die(dir.path(), /*sync=*/false);
    InFlight in_flight;
    EventMessage submit(1'700'000'000'000);
    auto job = submit.event().initJobSubmitted();
    job.setJob(1);
    auto ids = job.initDescription().initTaskIds(1);
    ids[0].setStart(0);
    ids[0].setEnd(kTasks - 1);
    ids[0].setStep(1);
    if (!journal->append(submit.message())) abort();
    for (TaskId task = 0; task < kTasks; ++task) {
      append_task_event(*journal, 1, task, true);
      append_task_event(*journal, 1, task, false);
      if (task % 10'000 == 9'999) journal->commit(in_flight.done());
    }
    journal->commit(in_flight.done());
    in_flight.wait_below(1);
  }
  uint64_t events = 0;
  bool first = true;
  for (auto _ : state) {
    auto start = std::chrono::steady_clock::now();
    auto journal = open_or_die(dir.path());
    auto opened = std::chrono::steady_clock::now();
    uint64_t finished = 0;
    auto stats = journal->replay({}, [&](Seq, schema::Event::Reader e) {
      finished += e.which() == schema::Event::TASK_FINISHED;
    });
    if (!stats || finished != kTasks) abort();
    events = stats->events;
    const double open_ms = std::chrono::duration<double, std::milli>(opened - start).count();
    if (first) state.counters["first_open_ms"] = open_ms;  // recovers the WAL
    first = false;
    state.counters["open_ms"] = open_ms;
    state.counters["replay_ms"] = stats->elapsed.count() / 1000.0;
  }
  state.counters["events"] = static_cast<double>(events);
}
BENCHMARK(BM_RestartReplay)->Iterations(3)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace hq::journal

BENCHMARK_MAIN();
