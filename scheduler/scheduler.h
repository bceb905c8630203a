#pragma once
// The scheduler: the job and task model, resource accounting, queues and assignment.
// Pure logic: no I/O, no clocks, no threads. Events go in as calls (times are arguments), and
// decisions come out as return values, so it can be driven deterministically by tests and
// benchmarks with millions of tasks.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "common/id_set.h"
#include "common/ids.h"
#include "common/job_spec.h"
#include "common/resources.h"
#include "common/result.h"
#include "common/task_graph.h"

namespace hq::sched {

// Numbering matches wire::TaskState.
enum class TaskState : uint8_t { kWaiting, kRunning, kFinished, kFailed, kCanceled, kAborted };
// Numbering matches wire::JobState.
enum class JobState : uint8_t {
  kWaiting,
  kRunning,
  kFinished,
  kFailed,
  kCanceled,
  kAborted,
  kOpened
};

const char* to_string(TaskState s);
const char* to_string(JobState s);

// Tasks of a job per state, indexed by TaskState.
struct TaskCounts {
  uint32_t by_state[6] = {};
  uint32_t operator[](TaskState s) const { return by_state[static_cast<int>(s)]; }
  uint32_t total() const;
  // No task is waiting or running.
  bool complete() const;
};

// running > waiting > failed > aborted > canceled > finished; an open job with nothing left to do
// is kOpened.
JobState derive_job_state(const TaskCounts& counts, bool open = false);

// Tasks of a job that share their scheduling parameters (see JobSpec for each field).
struct PartSpec {
  IdSet task_ids;
  uint32_t cpus = 1;
  int32_t priority = 0;
  uint32_t crash_limit = 0;
  ResourceRequest resources = {};
  uint64_t time_request_ms = 0;
  uint32_t nodes = 0;
  std::vector<ResourceRequest> variants = {};  // see JobSpec
};

struct JobSpec {
  JobId id = 0;
  IdSet task_ids;        // any order; duplicates are an error
  uint32_t cpus = 1;     // the request when `resources` is empty: this many CPUs, compact
  int32_t priority = 0;  // higher first
  // A task fails, rather than waiting again, when a worker is lost under it for the
  // crash_limit-th time; 0: never.
  uint32_t crash_limit = 0;
  // More failed tasks than this abort every task of the job not yet ended; negative: never.
  int64_t max_fails = -1;
  ResourceRequest resources = {};  // what each task needs (common/resources.h); empty: `cpus`
  // A task goes only to a worker that will live at least this long after it starts; 0: any.
  uint64_t time_request_ms = 0;
  // More than 1: each task takes this many whole workers of one group (`--nodes`); its request
  // is then all of each worker's CPUs.
  uint32_t nodes = 0;
  // Alternatives of `resources` (job files' several [[task.request]]): empty, or two or more
  // requests, the first used as `resources`. A task is placed with the first that fits the
  // worker (Assignment::variant). At most 255.
  std::vector<ResourceRequest> variants = {};
  // Dependencies between the job's tasks (ids of this job): a task waits until all of its own
  // have finished, and is aborted when one fails, is canceled or aborted. Tasks not listed have
  // none. Empty: no graph, and the job costs nothing more than an array job. Given to add_tasks,
  // a dependency may name any task the job already has.
  std::vector<TaskDeps> deps = {};
  // Heterogeneous tasks: when not empty, the job's tasks are these groups, and task_ids, cpus,
  // priority, crash_limit, resources, time_request_ms and nodes above are unused. The ids of
  // the groups must be disjoint.
  std::vector<PartSpec> parts = {};
  // An open job (`hq job open`): add_tasks may add tasks until close_job; it may start without
  // any task. Complete while open, it is kOpened.
  bool open = false;
};

// Normalizes the job's request (normalize_request) and returns what the scheduler is given of it:
// the one conversion that submit and restore share, which must agree for a restarted server to
// rebuild the campaign it acknowledged. A job file's tasks are grouped into parts by their
// scheduling parameters (request, time request, nodes, priority, crash limit); a plain submit's
// `submit_deps` become dependencies of each of its tasks.
// Fails when the description itself is inconsistent (normalize_request).
Result<JobSpec> job_spec(JobId id, JobDescriptionSpec& job);

struct Assignment {
  WorkerId worker = 0;
  TaskKey key;
  // A multi-node task: the other workers it spans (the task runs on `worker`, which must be told
  // them); empty otherwise.
  std::vector<WorkerId> others = {};
  // Of a task with alternatives (JobSpec::variants): the index of the one it runs with.
  uint8_t variant = 0;
};

struct Decisions {
  std::vector<Assignment> assign;   // send these tasks to these workers
  std::vector<Assignment> retract;  // ask these workers to give these tasks back
  bool empty() const { return assign.empty() && retract.empty(); }
};

// What the server may read about one task.
struct TaskView {
  TaskId id = 0;
  TaskState state = TaskState::kWaiting;
  InstanceId instance = 0;
  WorkerId worker = 0;  // holding it now, or the last one that ran it; 0 for none
  bool queued = false;  // held by a worker that has not reported its start yet
  int64_t start_time = 0;
  int64_t end_time = 0;
  uint32_t crashes = 0;  // workers lost while running it
  // After a restart: it may run on a worker that has not reattached yet (see reattach_task).
  bool orphan = false;
  const std::string* error = nullptr;  // failed tasks only; valid until the next call
  // Aborted tasks of a graph job only: the task whose failure or cancel aborted it (the first
  // along its dependencies that did not finish).
  std::optional<TaskRef> aborted_by = std::nullopt;
};

// Why a task can or cannot run on one worker (`hq task explain`).
struct WorkerFit {
  WorkerId worker = 0;
  bool fits_now = false;   // its request fits the worker's free resources now
  bool could_fit = false;  // it would fit the worker with nothing running
  std::string reason;      // empty when it fits now
  // A task with alternatives: the first that fits now (fits_now), each one's reason otherwise.
  uint8_t variant = 0;
};

struct SchedulerConfig {
  // A worker may hold queued tasks up to this many CPUs beyond its own count, so that it never
  // idles waiting for a round trip. 1.0: as many as it has.
  double queue_factor = 1.0;
  // The same for a job whose tasks are short (Job::short_tasks(): finished in under
  // kShortTaskMs on average): a deeper queue lets each round trip carry several ends and
  // assignments. Within it a CPU queues only Job::kQueuedWorkMs of such tasks' work, so that a
  // job behind them waits about that much longer at most. At most queue_factor (the default):
  // off.
  double short_task_queue_factor = 0.0;
};

// A worker that an allocation queue would start (`hq alloc add`'s worker options).
struct WorkerShape {
  // What it offers; none: not known before it starts (it detects its CPUs), so that it is
  // taken to offer any number of CPUs and nothing else.
  std::optional<ResourceDescriptor> resources = std::nullopt;
  uint64_t lifetime_ms = 0;  // how long it lives from its start; 0: unlimited
};

// The waiting tasks that such a worker could run (Scheduler::allocation_demand).
struct AllocationDemand {
  uint64_t tasks = 0;  // waiting, no worker holds them, dependencies finished, and they fit
  ResourceAmount cpu_amount = 0;  // their CPUs summed (1/kAmountUnit), whole-worker ones excluded
  uint64_t whole_workers = 0;     // workers taken whole by them: `--cpus all`, `--nodes N`
  // Why the other ready tasks could never run on such a worker, one line per job part:
  // "job 3: needs 2 of gpus, has 0 (4 tasks)".
  std::vector<std::string> unfit;
};

class Job;
struct WorkerSlot;

class Scheduler {
 public:
  explicit Scheduler(SchedulerConfig config = {});
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // --- Workers --------------------------------------------------------------------------------
  // Fails when the id is already known (connected or removed), or the worker has no CPUs.
  // `end_time`: when the worker will stop (Unix ms, its `--time-limit`); 0: never.
  // `group`: multi-node tasks span workers of one group only.
  Status add_worker(WorkerId id, const ResourceDescriptor& resources, int64_t end_time = 0,
                    std::string group = "default");
  Status add_worker(WorkerId id, uint32_t cpus);  // CPUs 0..cpus-1 in one group, nothing else
  // The worker is gone. Tasks it was running or held queued go back to waiting with instance + 1;
  // canceled tasks it still held are released. Returns the tasks put back (with their new
  // instance). When `lost` (not stopped on purpose), each running task's crash counter goes up,
  // and a task reaching its job's crash limit fails at `now` instead (take_crash_failures()).
  std::vector<TaskKey> remove_worker(WorkerId id, int64_t now = 0, bool lost = true);

  // --- Jobs -----------------------------------------------------------------------------------
  // Fails on a known job id, an empty or duplicated id set, zero CPUs.
  Status add_job(const JobSpec& spec);
  // What add_job would refuse in the spec itself (all but the id's novelty), without adding it.
  static Status validate_job(const JobSpec& spec);
  // Adds the spec's tasks (and their parts) to the open job spec.id at `now`. Fails, changing
  // nothing, on an unknown or closed job, ids the job already has (named), or a dependency on
  // an id the job does not have. A new task depending on a task that already ended unfinished
  // is aborted at once, naming the cause; one on a finished task has that dependency satisfied.
  Status add_tasks(const JobSpec& spec, int64_t now = 0);
  // What add_tasks would refuse, without adding anything.
  Status validate_tasks(const JobSpec& spec) const;
  // An open job takes no more tasks. False for an unknown or already closed job.
  bool close_job(JobId id);
  bool job_open(JobId id) const;
  // The job's highest task id; nullopt for a job without tasks or an unknown job.
  std::optional<TaskId> max_task_id(JobId id) const;
  // Every task not yet ended becomes canceled at `now`. Returns the ones held by workers, which
  // the server must tell to kill them (they keep occupying the worker until it reports their
  // end).
  std::vector<Assignment> cancel_job(JobId id, int64_t now);
  // The same for the job's tasks in `tasks` (ids it does not have are skipped); their
  // dependants, transitively, become aborted. O(size) of the job when a canceled task was
  // queued (its queue is rebuilt).
  std::vector<Assignment> cancel_tasks(JobId id, const IdSet& tasks, int64_t now);
  // Forgets a complete job (`hq job forget`): everything the scheduler holds for it is freed,
  // and its id is unknown from then on (never reused by add_job's callers). Fails, changing
  // nothing, for an unknown job, one with a task waiting or running, and one whose canceled
  // tasks a worker still holds (it has not reported their end yet).
  Status remove_job(JobId id);

  // --- Worker reports -------------------------------------------------------------------------
  // Each returns false, and changes nothing, when the report is stale or unknown: another
  // instance, a task the worker does not hold, or (for start) one already ended.
  // A report for a canceled task only releases the worker's resources.
  bool task_started(WorkerId worker, TaskKey key, int64_t time);
  bool task_finished(WorkerId worker, TaskKey key, int64_t time);
  bool task_failed(WorkerId worker, TaskKey key, int64_t time, std::string error);
  // The worker gave back a queued task it never started: waiting again, same instance.
  bool task_retracted(WorkerId worker, TaskKey key);

  // --- Restoring from the journal -------------------------------------------------------------
  // After a restart, the server replays its history into jobs added with add_job, before any
  // worker connects: the calls below set a task's recorded state directly (no worker holds it).
  // Each returns false, changing nothing, for an unknown job or task. Queues are stale until
  // finish_restore(), which must come before any other call but add_job and cancel_job.
  // The task ran as key.instance on `worker` from `time`.
  bool restore_started(TaskKey key, WorkerId worker, int64_t time);
  // The task ended as key.instance at `time`: kFinished, kFailed (with `error`) or kCanceled;
  // on `worker` unless 0.
  bool restore_ended(TaskKey key, TaskState state, int64_t time, std::string error = {},
                     WorkerId worker = 0);
  // The task went back to waiting, to run next as key.instance, after `crashes` lost workers.
  bool restore_requeued(TaskKey key, uint32_t crashes);
  // The first `tasks` tasks of the job (dense index, id order) may have been handed to workers.
  void restore_reserved(JobId id, uint32_t tasks);
  // A server restart in the history: tasks running then, and waiting tasks within their job's
  // reservation, wait again with instance + 1 (they may have run as the old one); reservations
  // start anew. Returns how many tasks got a new instance. finish_restore() ends with one.
  uint64_t restore_restart();
  // Ends the restore with restore_restart() (the server that ran the running tasks is gone;
  // crash counts are kept), then rebuilds every job's queue. Jobs already complete are not reported
  // by take_completed_jobs(). Returns how many tasks got a new instance.
  // With `reattach`, the restore ends with restore_orphans() instead of restore_restart(): the
  // tasks that may be running keep their instance and wait for their workers (reattach_task)
  // until end_reattach().
  uint64_t finish_restore(bool reattach = false);
  // How many tasks of the job (dense index, id order) have ever been taken from its queue of
  // fresh tasks: assignments never go beyond this. 0 for an unknown job and for a job with
  // dependencies, which has no such queue: at each restart, every one of its waiting tasks whose
  // dependencies had all finished gets a new instance instead (it may have been handed out).
  uint32_t fresh_cursor(JobId id) const;

  // --- Reattaching workers after a restart (scheduler/reattach.cc) ---------------------------
  // A server restart after which workers may come back with their tasks: every task that may be
  // running on a worker (running; waiting within its job's reservation, or ready in a graph job)
  // becomes an orphan: it keeps its instance, no worker holds it, and schedule() never hands
  // it out. Reservations start anew. Returns how many tasks are orphans now (restore only: see
  // restore_restart()).
  uint64_t restore_orphans();
  // The journal says `worker` claimed orphan `key` (its very instance) as running since `time`:
  // running there again, an orphan no longer. False, changing nothing, for a task that is not
  // an orphan of that instance.
  bool restore_reattached(TaskKey key, WorkerId worker, int64_t time);
  // The journal says the grace ended: what end_reattach() does, before finish_restore().
  uint64_t restore_reattach_ended();
  // Worker `worker` (added, connected) is back after a restart and says it runs `key` since
  // `start_time`. Accepted only when the task is an orphan of that very instance, and, when the
  // journal had it running, on this worker (a single-node task): then the worker holds it as
  // running, same instance, and its resources are taken from the worker's pool at once (beyond
  // the pool, as place_started does, when they do not fit). Otherwise (an unknown job or task,
  // another instance, a task canceled, requeued, held or run elsewhere) nothing changes, and
  // the worker must kill it. A task it already holds as that instance is accepted again.
  // `variant`: the resource variant it runs with (refused when the task has no such variant).
  bool reattach_task(WorkerId worker, TaskKey key, int64_t start_time, uint8_t variant = 0);
  // The grace is over: every orphan left waits again with instance + 1 (crash counters kept),
  // as after a restart without reattach. Returns them, with their new instance.
  std::vector<TaskKey> end_reattach();
  // Tasks that are orphans now. O(size).
  uint64_t orphan_count() const;

  // --- Decisions ------------------------------------------------------------------------------
  // Assigns waiting tasks to workers with room (priority first, then lower job id, then lower
  // task id; requeued tasks of a job before its fresh ones), and retracts queued tasks from
  // overloaded workers when another worker idles. Assigned tasks are held by their worker from
  // now on.
  // `now` (Unix ms) is compared with workers' end times for jobs with a time request.
  Decisions schedule(int64_t now = 0);

  // Jobs that became complete (no waiting or running task) since the last call, in id order.
  std::vector<JobId> take_completed_jobs();
  // Tasks failed by their crash limit since the last call (their error says so).
  std::vector<TaskKey> take_crash_failures();
  // Jobs whose remaining tasks were aborted by their max-fails limit since the last call, in
  // order, and the aborted tasks that workers hold, which the server must tell them to kill.
  std::vector<JobId> take_aborted_jobs();
  std::vector<Assignment> take_kills();
  // Every task of the job not yet ended becomes aborted at `now` (restore of a journaled abort).
  // Returns the held ones, as cancel_job does.
  std::vector<Assignment> abort_job(JobId id, int64_t now);

  // --- Queries --------------------------------------------------------------------------------
  bool has_job(JobId id) const;
  JobId last_job_id() const;           // 0 when there is none
  std::vector<JobId> job_ids() const;  // increasing
  TaskCounts counts(JobId id) const;
  JobState job_state(JobId id) const;
  uint32_t job_cpus(JobId id) const;  // whole CPUs per task; 0 for `all`
  // For each connected worker (increasing id), whether the task's request fits it and why not.
  // `task`: the task whose request is explained (jobs with several parts); none: the first part.
  std::vector<WorkerFit> explain(JobId job, int64_t now = 0,
                                 std::optional<TaskId> task = std::nullopt) const;
  // The multi-node task the worker serves as a secondary node; nullopt: none.
  std::optional<TaskKey> serving(WorkerId id) const;
  // The job the worker is kept free for (its tasks fit nowhere now and it comes first); 0: none.
  JobId reserved_for(WorkerId id) const;
  // Calls f(const TaskView&) for every task of the job in increasing task id order.
  void for_each_task(JobId id, const std::function<void(const TaskView&)>& f) const;
  // The same for the tasks with an id >= `from`, until f returns false. O(log ranges) to start.
  void for_each_task_from(JobId id, TaskId from,
                          const std::function<bool(const TaskView&)>& f) const;
  // The task, if the job has it.
  std::optional<TaskView> task(JobId job, TaskId task) const;
  // Tasks held by the worker (queued or running, canceled ones not yet ended included).
  uint32_t held_tasks(WorkerId id) const;
  // Heap bytes of the job's task records (task_table.h), ids and errors aside; 0 for an
  // unknown job. Ended tasks' records are packed by schedule().
  size_t task_record_bytes(JobId id) const;
  uint32_t running_tasks(WorkerId id) const;  // held tasks in state kRunning
  // Held tasks the worker has not reported started (queued; canceled ones excluded).
  uint32_t queued_tasks(WorkerId id) const;
  // Waiting tasks that no worker holds, over all jobs: what schedule() may still assign.
  uint32_t waiting_tasks() const;
  // The ready tasks (waiting, held by no worker, dependencies finished) that a worker of this
  // shape could run with nothing else running there; tasks waiting on dependencies are never
  // in it. O(parts with ready tasks). In alloc_demand.cc.
  AllocationDemand allocation_demand(const WorkerShape& shape) const;
  // The job has dependencies between its tasks, and how many (0 for none or an unknown job).
  uint64_t dependency_count(JobId id) const;
  // The task's dependencies, in increasing id order; empty for none or an unknown task.
  std::vector<TaskId> dependencies(JobId job, TaskId task) const;
  // Those of them that have not finished (what a waiting task waits for).
  std::vector<TaskId> unfinished_dependencies(JobId job, TaskId task) const;
  // How many times a worker was lost while running the task; 0 for an unknown task.
  uint32_t crash_count(JobId job, TaskId task) const;

  // Aborts with a message when an internal invariant does not hold: counts match states, every
  // held task is held by exactly the worker it names, worker CPU use equals the sum of its tasks'
  // CPUs and stays within its limit, each pool's free amounts equal its total minus the placed
  // tasks' allocations, queues hold exactly the waiting tasks (of a graph job, exactly those whose
  // dependencies all finished), each pending counter equals the task's unfinished dependencies,
  // and every task aborted by a dependency names an ended cause. O(size): for tests.
  void check_invariants() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hq::sched
