#pragma once
// Private to scheduler/: how one job's tasks are stored. A job costs a few bytes per id range,
// its task records (task_table.h: nothing per waiting task, 32 bytes per task in flight, a few
// bytes per ended one) and an error string for each failed task.

#include <algorithm>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/id_set.h"
#include "common/ids.h"
#include "common/result.h"
#include "scheduler/graph.h"
#include "scheduler/scheduler.h"
#include "scheduler/task_table.h"

namespace hq::sched {

struct WorkerSlot;

// A job's task ids as sorted, disjoint ranges, mapping ids to dense indices 0..size()-1 (in
// increasing id order) and back in O(log ranges).
class TaskIdMap {
 public:
  // Fails on an empty set, a zero step, a reversed range, or an id listed twice.
  static Result<TaskIdMap> build(const IdSet& ids);

  uint32_t size() const { return first_.empty() ? 0 : first_.back(); }
  const std::vector<IdRange>& ranges() const { return ranges_; }
  // The index of the first id of ranges()[r]; first_index(ranges().size()) == size().
  uint32_t first_index(size_t r) const { return first_[r]; }
  // index < size().
  TaskId id_at(uint32_t index) const;
  std::optional<uint32_t> index_of(TaskId id) const;

 private:
  std::vector<IdRange> ranges_;  // sorted, disjoint, end == last(), step 1 for single ids
  std::vector<uint32_t> first_;  // ranges_.size() + 1 entries
};

struct UserJob;

// One part of a user job: tasks that share their scheduling parameters (one request, priority,
// crash limit, time request and node count), with their own ids, slots and ready queue. An array
// job is one part; a job file's tasks are grouped into parts by those parameters, and each submit
// into an open job adds parts. Every part of a job is filed under the job's id; the scheduler's
// queues and workers point at parts.
class Job {
 public:
  // `cursor`: fresh tasks are taken through a cursor (see fresh_begin()); else every ready task
  // is requeued, as in a job with dependencies. The owner's graph must cover the part already
  // when it is not null.
  Job(UserJob& job_owner, uint32_t part_number, uint32_t first, uint32_t job_cpus,
      int32_t job_priority, TaskIdMap task_ids, bool use_cursor);

  UserJob& owner;
  const JobId id;
  const uint32_t part;  // index in owner.parts
  const uint32_t base;  // the job-wide index of its first task (owner.graph indexes by it)
  // CPUs per task, a share counted whole (its cost in a worker's queue budget); 0: `--cpus all`.
  // TODO(perf): costs in whole CPUs let a worker hold no more `--cpus 0.25` tasks than it has
  // CPUs (plus its queue), where its pool would fit four per CPU. Costs counted in
  // 1/kAmountUnit would lift that.
  const uint32_t cpus;
  uint32_t request = 0;  // index of its resource request in the scheduler's table
  // Its alternatives (JobSpec::variants) as indices like `request` (the first is `request`),
  // and their CPUs as `cpus`; empty: none.
  std::vector<uint32_t> variants;
  std::vector<uint32_t> variant_cpus;
  WorkerSlot* reservation = nullptr;           // the worker kept free for it (no starvation)
  std::vector<WorkerSlot*> node_reservations;  // the same for a multi-node job: `nodes` workers
  const int32_t priority;
  uint32_t crash_limit = 0;      // see JobSpec
  uint64_t time_request_ms = 0;  // see JobSpec
  uint32_t nodes = 1;            // whole workers per task; see JobSpec
  const bool cursor;
  const TaskIdMap ids;
  TaskTable tasks;    // by index
  TaskCounts counts;  // of this part (the owner counts the whole job)
  std::unordered_map<uint32_t, std::string> errors;  // by index, failed tasks only
  bool in_ready_set = false;                         // owned by the scheduler's ready set

  // A task of this part finished after running `ms` (its start to its end as reported).
  void note_run(int64_t ms) {
    const double d = static_cast<double>(std::max<int64_t>(ms, 0));
    mean_run_ms = runs == 0 ? d : mean_run_ms + (d - mean_run_ms) / 8;  // the last few weigh most
    if (runs < kShortTaskRuns) ++runs;
  }
  // Whether its tasks are short: kShortTaskRuns of them finished, in under kShortTaskMs on
  // average lately (SchedulerConfig::short_task_queue_factor).
  bool short_tasks() const { return runs >= kShortTaskRuns && mean_run_ms < kShortTaskMs; }
  static constexpr uint32_t kShortTaskRuns = 8;
  static constexpr double kShortTaskMs = 50;
  // How many tasks a CPU of a worker may have queued while its tasks are short: as many as make
  // up kQueuedWorkMs of work (at most the worker's short-task limit), so that a job behind them
  // waits about that long at most.
  static constexpr double kQueuedWorkMs = 50;
  static constexpr uint32_t kMaxQueuedPerCpu = 1024;
  uint32_t queued_per_cpu() const {
    return static_cast<uint32_t>(
        std::min(kQueuedWorkMs / std::max(mean_run_ms, 0.01), double{kMaxQueuedPerCpu}));
  }
  uint32_t runs = 0;  // finished tasks, up to kShortTaskRuns
  double mean_run_ms = 0;

  // Whether the task may be queued and handed to a worker as far as dependencies go.
  bool deps_done(uint32_t index) const;
  uint32_t size() const { return tasks.size(); }
  // The record of task `index` to change (TaskTable::at); tasks.get(index) to read it.
  TaskSlot& task(uint32_t index) {
    if (TaskSlot* s = tasks.dense_at(index)) return *s;
    return unpacked_task(index);
  }
  // Changes the state of task `index`, whose record is `slot`, in this part's counts and the
  // owner's.
  void set_state(uint32_t index, TaskSlot& slot, TaskState to);
  // The same for every task of uniform chunk `c` of `tasks` (none of them held).
  void set_uniform_state(uint32_t c, TaskState to);
  // Packs the chunks whose tasks have all ended (TaskTable::pack); false while some of them
  // are still held. Called by the scheduler between its calls, when no record is referenced.
  bool pack_ended();
  // Where the part files itself when a chunk's last task ends (the scheduler's list of parts
  // to pack); null: nowhere.
  std::vector<Job*>* pack_list = nullptr;
  bool in_pack_list = false;

  // --- Ready queue: the waiting tasks no worker holds ----------------------------------------
  // Requeued tasks (put back) in increasing id order, then fresh ones (never assigned) in
  // increasing id order through a cursor (parts with a cursor only).
  uint32_t ready() const { return static_cast<uint32_t>(requeued_.size()) + (size() - fresh_); }
  struct Next {
    uint32_t index;
    TaskId id;
  };
  // ready() > 0.
  Next take_ready();
  // The task at `index` is waiting again and held by nobody.
  void put_back(uint32_t index);
  // Every ready task leaves the queue (the caller changes their states).
  void clear_ready();
  // Queues exactly the waiting tasks, after their states were set directly (restore): the tail of
  // fresh tasks (waiting, instance 0, never run) behind the cursor, the others requeued. Without
  // a cursor, the ready ones only (pending counters must be right), all requeued.
  void rebuild_ready();
  // Tasks at indices >= fresh_begin() were never taken from the queue.
  uint32_t fresh_begin() const { return fresh_; }
  const std::vector<uint32_t>& requeued() const { return requeued_; }
  // Aborts when the queue's own structure is broken; see Scheduler::check_invariants.
  void check_queue() const;

 private:
  void note_full(uint32_t chunk);
  TaskSlot& unpacked_task(uint32_t index);
  std::vector<uint32_t> full_chunks_;  // of `tasks`, all ended since it was last packed
  uint32_t fresh_ = 0;
  uint32_t fresh_range_ = 0;        // the range holding index fresh_ (ranges().size() at the end)
  std::vector<uint32_t> requeued_;  // min-heap of indices
};

// A job as users see it: its parts, and what holds for all its tasks together (counts, state,
// max-fails, completion, dependencies, open or closed).
struct UserJob {
  explicit UserJob(JobId job_id) : id(job_id) {}
  const JobId id;
  std::vector<std::unique_ptr<Job>> parts;  // in `base` order
  TaskCounts counts;
  bool open = false;  // more tasks may come (open jobs): complete jobs are kOpened
  int64_t max_fails = -1;
  uint32_t reserved = 0;          // restore only: see Scheduler::restore_reserved
  bool completion_noted = false;  // reported (or to be reported) by take_completed_jobs
  // Dependencies between its tasks by job-wide index (part base + index), across parts; null
  // for a job without any (array jobs).
  std::unique_ptr<DepGraph> graph;

  uint32_t size() const { return parts.empty() ? 0 : parts.back()->base + parts.back()->size(); }
  struct Loc {
    Job* part;
    uint32_t index;
  };
  // The part and index of a task id; O(log ranges).
  std::optional<Loc> find(TaskId task) const;
  // The part holding job-wide index `global` < size().
  Loc at(uint32_t global) const;
  TaskId id_at(uint32_t global) const {
    Loc l = at(global);
    return l.part->ids.id_at(l.index);
  }
  // Files a new part's id ranges for find() (after it was appended to `parts`).
  void index_part(const Job& part);
  // Whether the completion is to be reported now: no task left to do, and not an open job that
  // never had any.
  bool done() const { return counts.complete() && !(open && counts.total() == 0); }

 private:
  struct IdEntry {
    TaskId start;
    TaskId end;
    uint32_t part;
    uint32_t range;  // in that part's ranges
  };
  // Every part's ranges by start, with the largest end so far (ranges of several parts may
  // interleave when they have steps). Empty while the job has one part.
  std::vector<IdEntry> index_;
  std::vector<TaskId> max_end_;
};

// Prints the message and aborts: for broken invariants only.
[[noreturn]] void invariant_failed(const std::string& message);

}  // namespace hq::sched
