#pragma once
// Private to scheduler/: the scheduler's state (Scheduler::Impl) and the per-worker records,
// shared by scheduler.cc (events and decisions), restore.cc (rebuilding from the journal) and
// invariants.cc (the checker the tests run after every step).

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/resource_pool.h"
#include "common/resources.h"
#include "scheduler/job.h"
#include "scheduler/scheduler.h"

namespace hq::sched {

// One task a worker holds: its CPU cost there (for the queue budget) and, once placed, what it
// got from the worker's pool.
struct HeldTask {
  Job* job;
  uint32_t index;
  uint32_t cpus;
  Allocation alloc;
  uint8_t variant = 0;  // of a job with alternatives (Job::variants): the one it holds
};

struct ReadyOrder {
  bool operator()(const Job* a, const Job* b) const {
    if (a->priority != b->priority) return a->priority > b->priority;
    return a->id != b->id ? a->id < b->id : a->part < b->part;
  }
};

inline uint32_t worker_limit(uint32_t cpus, double queue_factor) {
  double extra =
      std::isfinite(queue_factor) && queue_factor > 0 ? std::floor(queue_factor * cpus) : 0.0;
  double limit = static_cast<double>(cpus) + extra;
  constexpr uint32_t kMax = std::numeric_limits<uint32_t>::max();
  return limit >= static_cast<double>(kMax) ? kMax : static_cast<uint32_t>(limit);
}

// The id of "cpus" in Impl::names: interned first.
inline constexpr uint32_t kCpuResource = 0;

// A task held by a worker without an allocation: queued there until resources free up.
struct QueuedTask {
  Job* job;
  uint32_t index;
};

struct WorkerSlot {
  WorkerId id = 0;
  uint32_t cpus = 0;
  uint32_t limit = 0;       // CPUs it may hold: cpus + floor(factor * cpus), the larger factor
  uint32_t base_limit = 0;  // the same with queue_factor: the limit of jobs of long tasks
  bool connected = true;
  bool in_free_list = false;
  bool in_overloaded_list = false;
  int64_t end_time = 0;  // Unix ms when it stops (its time limit); 0: never
  std::string group;
  // A multi-node task held by another worker, which this one serves as a secondary node: it
  // takes nothing else meanwhile.
  Job* serves_job = nullptr;
  uint32_t serves_index = 0;
  uint32_t multi_held = 0;  // held tasks of multi-node jobs: it takes nothing else meanwhile
  ResourceDescriptor resources;
  ResourcePool pool;            // what placed tasks leave free
  Job* reserved_for = nullptr;  // a blocked job ahead of others waits for this worker
  std::vector<HeldTask> held;
  std::vector<QueuedTask> queue;  // held waiting tasks without an allocation, in assignment order
  uint32_t held_cpus = 0;         // CPUs of every held task
  uint32_t queued_cpus = 0;       // CPUs of the tasks in `queue`
  uint32_t retracting_cpus = 0;   // CPUs of queued tasks with a pending retraction
  uint32_t running = 0;           // held tasks in state kRunning
  uint32_t stuck = 0;             // queued_cpus - retracting_cpus
  uint32_t outside = 0;           // running tasks flagged kOutside: no new placements meanwhile

  // CPUs free for new tasks, a CPU partly free (shared by fractional requests) counted whole:
  // none while it serves a multi-node task or runs one outside the model. A hint for where to
  // look; the pool decides what fits.
  uint32_t real_free() const {
    if (serves_job || outside > 0) return 0;
    return static_cast<uint32_t>((pool.free_amount(kCpuResource) + kAmountUnit - 1) / kAmountUnit);
  }
  // Of variant `v` of a job with alternatives (Job::variants).
  uint32_t cost(const Job& job, uint8_t v = 0) const {
    const uint32_t c = v < job.variant_cpus.size() ? job.variant_cpus[v] : job.cpus;
    return c ? c : cpus;
  }
  // CPUs of tasks it may still hold, queued or placed: held_cpus never exceeds limit.
  uint32_t queue_room() const { return serves_job || multi_held ? 0 : limit - held_cpus; }
  // Whether it may queue one more task of `job`: up to its base limit, and for short tasks up to
  // its limit or Job::kQueuedWorkMs of queued work per CPU, whichever is less.
  bool may_queue(const Job& job) const {
    if (cost(job) > queue_room()) return false;
    const uint64_t held = uint64_t{held_cpus} + cost(job);
    if (held <= base_limit) return true;
    return job.short_tasks() &&
           held <= std::min<uint64_t>(limit, cpus + uint64_t{cpus} * job.queued_per_cpu());
  }
  // Whether the worker lives long enough for a task of `job` started at `now`.
  bool lives_for(const Job& job, int64_t now) const {
    return end_time == 0 || job.time_request_ms == 0 ||
           now + static_cast<int64_t>(job.time_request_ms) <= end_time;
  }
  // Whether a task of `job` can be placed now. Not while tasks wait in its queue: they come
  // first (the worker starts its queue in order), so that a big one is not starved.
  bool can_place(const Job& job, const PoolRequest& r, int64_t now, uint8_t v = 0) const {
    return outside == 0 && stuck == 0 && !serves_job && held_cpus + cost(job, v) <= limit &&
           lives_for(job, now) && pool.fits(r);
  }
  // Free for a whole multi-node task: holds nothing and serves none.
  bool wholly_idle() const { return connected && held.empty() && !serves_job && outside == 0; }
};

// A part of a job being added, checked (scheduler.cc).
struct PreparedPart {
  const PartSpec* spec;
  ResourceRequest request;
  std::vector<ResourceRequest> variants;  // empty, or 2+ with the first as `request`
  TaskIdMap ids;
  uint32_t base;  // job-wide index of its first task
};

struct Scheduler::Impl {
  SchedulerConfig config;
  // Whether jobs of short tasks queue deeper than others (SchedulerConfig).
  bool deep_queues() const { return config.short_task_queue_factor > config.queue_factor; }
  std::map<JobId, std::unique_ptr<UserJob>> jobs;  // owns them, in id order
  std::unordered_map<JobId, UserJob*> job_index;   // the same, for O(1) lookups by reports
  std::unordered_map<WorkerId, std::unique_ptr<WorkerSlot>> workers;

  // Resource names, and the distinct requests of all jobs (Job::request indexes them).
  ResourceNames names;
  std::vector<PoolRequest> requests;
  std::vector<ResourceRequest> request_specs;   // the same, as submitted
  std::vector<bool> cpu_only;                   // the same: it asks for CPUs only
  std::map<std::string, uint32_t> request_ids;  // by describe(request)

  // Jobs with ready tasks, in scheduling order.
  std::set<Job*, ReadyOrder> ready;
  uint64_t ready_tasks = 0;       // sum of Job::ready()
  uint32_t multi_node_ready = 0;  // jobs in `ready` with nodes > 1

  // Supersets, compacted by schedule(): connected workers with held_cpus < limit, and connected
  // workers with stuck > 0. Each worker appears at most once (its in_*_list flag).
  std::vector<WorkerSlot*> free_list;
  std::vector<WorkerSlot*> overloaded_list;
  uint64_t retracting_cpus = 0;  // over all workers

  std::set<JobId> completed;  // for take_completed_jobs
  // Parts with chunks of ended tasks to pack (Job::pack_list), at the next pack_ended().
  std::vector<Job*> to_pack;
  std::vector<TaskKey> crash_failures;
  std::vector<JobId> aborted_jobs;
  std::vector<Assignment> kills;

  // Scratch space of schedule(), kept to avoid reallocating.
  std::vector<WorkerSlot*> candidates;
  std::vector<uint64_t> unfit_pass;  // by request: the fill pass in which it fit nowhere
  // The same for jobs of long tasks only, which queue less deep (WorkerSlot::base_limit): where
  // one of them fits nowhere, a job of short tasks with the same request may still.
  std::vector<uint64_t> unfit_long_pass;
  uint64_t pass = 0;
  int64_t now = 0;  // of the running schedule()
  struct Retractable {
    WorkerSlot* worker;
    Job* job;
    uint32_t index;
  };
  std::vector<std::vector<Retractable>> retractable_by_request;
  std::vector<uint32_t> retractable_requests;  // those with a non-empty list
  std::vector<Allocation> tentative;
  Allocation scratch_alloc;

  explicit Impl(SchedulerConfig c) : config(c) { names.intern(kCpus); }

  UserJob* find_job(JobId id) const {
    auto it = job_index.find(id);
    return it == job_index.end() ? nullptr : it->second;
  }
  WorkerSlot* find_worker(WorkerId id) const {
    auto it = workers.find(id);
    return it == workers.end() ? nullptr : it->second.get();
  }
  const PoolRequest& request_of(const Job& job) const { return requests[job.request]; }
  // Variant `v` of the job's request (Job::variants); its request when it has none.
  const PoolRequest& request_of(const Job& job, uint8_t v) const {
    return v < job.variants.size() ? requests[job.variants[v]] : requests[job.request];
  }

  uint32_t intern_request(const ResourceRequest& r) {
    auto [it, added] = request_ids.emplace(describe(r), static_cast<uint32_t>(requests.size()));
    if (added) {
      requests.push_back(hq::intern_request(r, names));
      const PoolRequest& pooled = requests.back();
      cpu_only.push_back(std::all_of(pooled.begin(), pooled.end(), [](const PoolEntry& e) {
        return e.resource == kCpuResource;
      }));
      request_specs.push_back(r);
      unfit_pass.push_back(0);
      unfit_long_pass.push_back(0);
    }
    return it->second;
  }

  // --- Reservations --------------------------------------------------------------------------
  void drop_reservation(Job& job) {
    for (WorkerSlot* w : job.node_reservations) w->reserved_for = nullptr;
    job.node_reservations.clear();
    if (!job.reservation) return;
    job.reservation->reserved_for = nullptr;
    job.reservation = nullptr;
  }
  // Keeps `nodes` workers of one group for a multi-node job that found too few idle ones, so
  // that jobs behind it cannot keep them busy forever: the group with the most workers that can
  // serve it, and there the least loaded workers (lowest ids among equals).
  void reserve_nodes(Job& job) {
    if (!job.node_reservations.empty()) return;
    std::map<std::string_view, std::vector<WorkerSlot*>> groups;
    for (auto& [id, holder] : workers) {
      WorkerSlot* w = holder.get();
      if (!w->connected || !w->lives_for(job, now)) continue;
      if (w->reserved_for && !ReadyOrder()(&job, w->reserved_for)) continue;
      groups[w->group].push_back(w);
    }
    std::vector<WorkerSlot*>* best = nullptr;
    for (auto& [group, list] : groups) {
      if (list.size() >= job.nodes && (!best || list.size() > best->size())) best = &list;
    }
    if (!best) return;  // no group is big enough: it waits for more workers
    // Least loaded first; serving another multi-node task counts as fully loaded.
    auto load = [](const WorkerSlot* w) { return w->held_cpus + (w->serves_job ? w->cpus : 0); };
    std::sort(best->begin(), best->end(), [&load](const WorkerSlot* a, const WorkerSlot* b) {
      return load(a) != load(b) ? load(a) < load(b) : a->id < b->id;
    });
    for (uint32_t k = 0; k < job.nodes; ++k) {
      WorkerSlot* w = (*best)[k];
      if (w->reserved_for) drop_reservation(*w->reserved_for);
      w->reserved_for = &job;
      job.node_reservations.push_back(w);
    }
  }
  // Whether `w` is kept for a job ahead of `job`.
  static bool reserved_against(const WorkerSlot& w, const Job& job) {
    return w.reserved_for && w.reserved_for != &job && ReadyOrder()(w.reserved_for, &job);
  }
  // Backfill on a reserved worker: a task of a job behind the reserved one may take what the
  // reserved job does not need. The reservation keeps back one task's request of the reserved
  // job (by amounts), no more: of a resource it needs and finds short (the GPU it waits for),
  // nothing may be taken; of one it finds enough of, everything above its need.
  bool leaves_room_for_reserved(const WorkerSlot& w, const Job& job, uint8_t v = 0) const {
    const PoolRequest& take = request_of(job, v);
    const PoolRequest& keep = request_of(*w.reserved_for);
    size_t k = 0;
    for (const PoolEntry& e : take) {
      while (k < keep.size() && keep[k].resource < e.resource) ++k;
      if (k == keep.size() || keep[k].resource != e.resource) continue;
      const ResourceAmount kept = keep[k].policy == AllocationPolicy::kAll
                                      ? w.pool.total_amount(e.resource)
                                      : keep[k].amount;
      const ResourceAmount free = w.pool.free_amount(e.resource);
      const ResourceAmount amount =
          e.policy == AllocationPolicy::kAll ? w.pool.total_amount(e.resource) : e.amount;
      if (free < kept || amount > free - kept) return false;
    }
    return true;
  }

  // --- Ready set -----------------------------------------------------------------------------
  void enter_ready(Job& job) {
    if (job.in_ready_set || job.ready() == 0) return;
    ready.insert(&job);
    job.in_ready_set = true;
    if (job.nodes > 1) ++multi_node_ready;
  }
  std::set<Job*, ReadyOrder>::iterator leave_ready(Job& job) {
    drop_reservation(job);
    auto it = ready.find(&job);
    if (it == ready.end()) return it;
    job.in_ready_set = false;
    if (job.nodes > 1) --multi_node_ready;
    return ready.erase(it);
  }
  void put_back(Job& job, uint32_t index) {
    job.put_back(index);
    ++ready_tasks;
    enter_ready(job);
  }

  // Packs the records of ended tasks (task_table.h). Only between Scheduler calls: no
  // reference to a record may be alive.
  void pack_ended() {
    std::erase_if(to_pack, [](Job* part) {
      if (!part->pack_ended()) return false;
      part->in_pack_list = false;
      return true;
    });
  }

  // --- Workers -------------------------------------------------------------------------------
  // Refreshes the worker's cached figures and list memberships after its load changed.
  void touch(WorkerSlot& w) {
    if (!w.connected) return;
    w.stuck = w.queued_cpus - w.retracting_cpus;
    if (w.held_cpus < w.limit && !w.in_free_list) {
      free_list.push_back(&w);
      w.in_free_list = true;
    }
    if (w.stuck > 0 && !w.in_overloaded_list) {
      overloaded_list.push_back(&w);
      w.in_overloaded_list = true;
    }
  }
  // `alloc` empty and !placed: the task waits in the worker's queue.
  void hold(WorkerSlot& w, Job& job, uint32_t index, bool placed, Allocation alloc,
            uint8_t variant = 0) {
    TaskSlot& s = job.task(index);
    s.flags = kHeld | (placed ? kPlaced : 0);
    s.worker = w.id;
    s.held_pos = static_cast<uint32_t>(w.held.size());
    const uint32_t cost = w.cost(job, variant);
    w.held.push_back({&job, index, cost, std::move(alloc), variant});
    w.held_cpus += cost;
    if (job.nodes > 1) ++w.multi_held;
    if (!placed) {
      w.queue.push_back({&job, index});
      w.queued_cpus += cost;
    }
    touch(w);
  }
  void clear_retraction(WorkerSlot& w, TaskSlot& s) {
    if (!(s.flags & kRetracting)) return;
    s.flags &= ~kRetracting;
    const uint32_t cost = w.held[s.held_pos].cpus;
    w.retracting_cpus -= cost;
    retracting_cpus -= cost;
    touch(w);
  }
  void leave_queue(WorkerSlot& w, Job& job, uint32_t index) {
    for (auto it = w.queue.begin(); it != w.queue.end(); ++it) {
      if (it->job == &job && it->index == index) {
        w.queued_cpus -= w.held[job.task(index).held_pos].cpus;
        w.queue.erase(it);
        return;
      }
    }
  }
  // Queued tasks are placed in order while they fit the worker's pool, as the worker starts
  // them: the first that does not fit stops the rest (tasks given back or canceled aside), so
  // that a big task is never overtaken by smaller ones queued behind it.
  void promote(WorkerSlot& w) {
    for (size_t k = 0; k < w.queue.size() && w.outside == 0;) {
      auto [job, index] = w.queue[k];
      TaskSlot& s = job->task(index);
      if (s.state != TaskState::kWaiting || (s.flags & kRetracting)) {
        ++k;
        continue;
      }
      HeldTask& h = w.held[s.held_pos];
      if (!w.pool.allocate(request_of(*job, h.variant), scratch_alloc)) break;
      h.alloc = std::move(scratch_alloc);
      scratch_alloc = {};
      s.flags |= kPlaced;
      w.queued_cpus -= h.cpus;
      w.queue.erase(w.queue.begin() + static_cast<std::ptrdiff_t>(k));
    }
    touch(w);
  }
  // A queued task the worker reports started: it found the resources, so the model takes them
  // too when it can (the two views may differ for a moment).
  void place_started(WorkerSlot& w, Job& job, uint32_t index) {
    TaskSlot& s = job.task(index);
    if (s.flags & kPlaced) return;
    leave_queue(w, job, index);
    HeldTask& h = w.held[s.held_pos];
    const PoolRequest& r = request_of(job, h.variant);
    if (!w.pool.allocate(r, h.alloc)) {
      // The worker started it in place of placed tasks it has not started: those wait instead,
      // at the head of the queue, until the model has room for this one.
      for (size_t k = 0; k < w.held.size() && !w.pool.fits(r); ++k) {
        HeldTask& other = w.held[k];
        TaskSlot& o = other.job->task(other.index);
        if (!(o.flags & kPlaced) || o.state != TaskState::kWaiting) continue;
        w.pool.release(other.alloc);
        other.alloc.clear();
        o.flags &= ~kPlaced;
        w.queue.insert(w.queue.begin(), {other.job, other.index});
        w.queued_cpus += other.cpus;
      }
      if (!w.pool.allocate(r, w.held[s.held_pos].alloc)) {
        // The shapes differ (groups): it runs outside the model's pool, and nothing more is
        // placed on the worker until it ends.
        s.flags |= kOutside;
        ++w.outside;
        touch(w);
        return;
      }
      promote(w);
    }
    s.flags |= kPlaced;
    touch(w);
  }
  // The secondary nodes of a multi-node task take work again.
  void free_secondaries(const Job& job, uint32_t index) {
    if (job.nodes <= 1) return;
    for (auto& [id, holder] : workers) {
      WorkerSlot& w = *holder;
      if (w.serves_job == &job && w.serves_index == index) {
        w.serves_job = nullptr;
        w.serves_index = 0;
        touch(w);
      }
    }
  }
  void release(WorkerSlot& w, Job& job, uint32_t index) {
    free_secondaries(job, index);
    TaskSlot& s = job.task(index);
    clear_retraction(w, s);
    const bool placed = s.flags & kPlaced;
    HeldTask& h = w.held[s.held_pos];
    if (placed) {
      w.pool.release(h.alloc);
    } else if (s.flags & kOutside) {
      --w.outside;
    } else {
      leave_queue(w, job, index);
    }
    w.held_cpus -= h.cpus;
    if (job.nodes > 1) --w.multi_held;
    const uint32_t pos = s.held_pos;
    if (pos + 1 != w.held.size()) {
      w.held[pos] = std::move(w.held.back());
      w.held[pos].job->task(w.held[pos].index).held_pos = pos;
    }
    w.held.pop_back();
    s.flags = 0;
    s.held_pos = 0;
    if (placed || w.outside == 0) {
      promote(w);
    } else {
      touch(w);
    }
  }

  // The task the report names, when `worker` holds that instance of it.
  struct Held {
    WorkerSlot* w;
    Job* job;
    uint32_t index;
    TaskSlot* slot;
  };
  std::optional<Held> find_held(WorkerId worker, TaskKey key) {
    UserJob* job = find_job(key.job);
    if (!job) return std::nullopt;
    std::optional<UserJob::Loc> at = job->find(key.task);
    if (!at) return std::nullopt;
    TaskSlot* s = at->part->tasks.dense_at(at->index);  // a held task's chunk is dense
    if (!s || !(s->flags & kHeld) || s->worker != worker || s->instance != key.instance) {
      return std::nullopt;
    }
    return Held{find_worker(worker), at->part, at->index, s};
  }

  void note_completion(UserJob& job) {
    if (!job.completion_noted && job.done()) {
      job.completion_noted = true;
      completed.insert(job.id);
    }
  }

  bool end_task(WorkerId worker, TaskKey key, int64_t time, TaskState to, std::string* error) {
    std::optional<Held> h = find_held(worker, key);
    if (!h) return false;
    TaskSlot& s = *h->slot;
    if (ended(s.state)) {  // canceled while held: the worker only gives the resources back
      release(*h->w, *h->job, h->index);
      return true;
    }
    if (s.state == TaskState::kRunning) {
      --h->w->running;
    } else if (s.start_time == 0) {
      s.start_time = time;  // ended without a start report (batched): no known start
    }
    h->job->set_state(h->index, s, to);
    s.end_time = time;
    if (error) h->job->errors[h->index] = std::move(*error);
    release(*h->w, *h->job, h->index);
    if (to == TaskState::kFinished) {
      release_dependants(*h->job, h->index);
    } else {
      abort_dependants(*h->job, h->index, time);
    }
    if (to == TaskState::kFinished) h->job->note_run(time - s.start_time);
    if (to == TaskState::kFailed) check_max_fails(h->job->owner, time);
    note_completion(h->job->owner);
    return true;
  }

  // --- Dependencies --------------------------------------------------------------------------
  // Task `index` of part `job` finished: its dependants (of any part) with no other unfinished
  // dependency are ready.
  void release_dependants(Job& job, uint32_t index) {
    UserJob& owner = job.owner;
    if (!owner.graph) return;
    DepGraph& g = *owner.graph;
    const uint32_t gi = job.base + index;
    for (uint32_t k = g.dependant_begin[gi]; k < g.dependant_begin[gi + 1]; ++k) {
      const uint32_t d = g.dependants[k];
      if (--g.pending[d] != 0) continue;
      UserJob::Loc at = owner.at(d);
      if (at.part->tasks.get(at.index).state == TaskState::kWaiting) put_back(*at.part, at.index);
    }
  }
  // Task `index` of part `job` ended without finishing (failed, canceled, aborted): every task
  // that depends on it, transitively, and has not ended becomes aborted at `now`, naming the
  // first task of the chain that did not finish. None of them is queued or held: each has a
  // dependency that did not finish. O(the tasks reached and their dependants).
  void abort_dependants(Job& job, uint32_t index, int64_t now) {
    UserJob& owner = job.owner;
    if (!owner.graph) return;
    DepGraph& g = *owner.graph;
    const uint32_t gi = job.base + index;
    auto known = g.aborted_by.find(gi);
    const TaskId cause = known != g.aborted_by.end() ? known->second : job.ids.id_at(index);
    std::vector<uint32_t> stack{gi};
    while (!stack.empty()) {
      const uint32_t t = stack.back();
      stack.pop_back();
      for (uint32_t k = g.dependant_begin[t]; k < g.dependant_begin[t + 1]; ++k) {
        const uint32_t d = g.dependants[k];
        UserJob::Loc at = owner.at(d);
        if (ended(at.part->tasks.get(at.index).state)) continue;
        TaskSlot& s = at.part->task(at.index);
        at.part->set_state(at.index, s, TaskState::kAborted);
        s.end_time = now;
        g.aborted_by[d] = cause;
        stack.push_back(d);
      }
    }
  }

  // Every task of `job` not yet ended becomes `to` (canceled or aborted) at `now`; the held ones
  // are appended to `held` (their workers must kill them).
  void end_job(UserJob& owner, TaskState to, int64_t now, std::vector<Assignment>& held) {
    for (auto& part : owner.parts) {
      Job& job = *part;
      ready_tasks -= job.ready();
      job.clear_ready();
      leave_ready(job);
      for (uint32_t c = 0; c < job.tasks.chunks(); ++c) {
        if (TaskSlot* u = job.tasks.uniform(c)) {
          // Tasks that never left the queue end together, without a record each.
          if (ended(u->state)) continue;
          u->flags &= ~kOrphan;
          job.set_uniform_state(c, to);
          u->end_time = now;
          continue;
        }
        for (uint32_t i = job.tasks.chunk_begin(c); i < job.tasks.chunk_end(c); ++i) {
          if (ended(job.tasks.get(i).state)) continue;
          TaskSlot& s = job.task(i);
          if (s.flags & kHeld) {
            WorkerSlot& w = *find_worker(s.worker);
            held.push_back({w.id, {job.id, job.ids.id_at(i), s.instance}});
            clear_retraction(w, s);
            if (s.state == TaskState::kRunning) --w.running;
          }
          s.flags &= ~kOrphan;  // a worker claiming it later is told to kill it
          job.set_state(i, s, to);
          s.end_time = now;
        }
      }
    }
    note_completion(owner);
  }

  void check_max_fails(UserJob& job, int64_t now) {
    if (job.max_fails < 0 || job.counts[TaskState::kFailed] <= job.max_fails) return;
    if (job.counts.complete()) return;
    end_job(job, TaskState::kAborted, now, kills);
    aborted_jobs.push_back(job.id);
  }

  // --- schedule() ----------------------------------------------------------------------------
  void compact_lists() {
    size_t out = 0;
    for (WorkerSlot* w : free_list) {
      if (w->connected && w->held_cpus < w->limit) {
        free_list[out++] = w;
      } else {
        w->in_free_list = false;
      }
    }
    free_list.resize(out);
    std::sort(free_list.begin(), free_list.end(),
              [](const WorkerSlot* a, const WorkerSlot* b) { return a->id < b->id; });
    out = 0;
    for (WorkerSlot* w : overloaded_list) {
      if (w->connected && w->stuck > 0) {
        overloaded_list[out++] = w;
      } else {
        w->in_overloaded_list = false;
      }
    }
    overloaded_list.resize(out);
    std::sort(overloaded_list.begin(), overloaded_list.end(),
              [](const WorkerSlot* a, const WorkerSlot* b) { return a->id < b->id; });
  }

  // Drops reservations that can no longer serve their job: the worker will not live long enough,
  // could never fit it, or serves a multi-node task. The job reserves anew when still blocked.
  void check_reservations() {
    for (auto& [id, holder] : workers) {
      WorkerSlot& w = *holder;
      Job* job = w.reserved_for;
      if (!job) continue;
      const bool usable = w.connected && !w.serves_job && w.lives_for(*job, now) &&
                          w.pool.could_fit(request_of(*job));
      if (!usable) drop_reservation(*job);
    }
  }

  void assign(Decisions& d, WorkerSlot& w, Job& job, bool placed, uint8_t variant = 0) {
    Job::Next next = job.take_ready();
    --ready_tasks;
    Allocation alloc;
    if (placed) w.pool.allocate(request_of(job, variant), alloc);
    hold(w, job, next.index, placed, std::move(alloc), variant);
    d.assign.push_back({w.id, {job.id, next.id, job.task(next.index).instance}, {}, variant});
    if (job.reservation == &w) drop_reservation(job);
  }

  // Keeps one worker for `job`, whose tasks fit nowhere now, so that jobs behind it cannot take
  // every resource it waits for as it frees up: the one that could run it with the most free
  // CPUs now (lowest id among equals).
  void reserve(Job& job) {
    if (job.reservation) return;
    const PoolRequest& r = request_of(job);
    WorkerSlot* best = nullptr;
    for (auto& [id, holder] : workers) {
      WorkerSlot* w = holder.get();
      if (!w->connected || w->serves_job || !w->pool.could_fit(r) || !w->lives_for(job, now)) {
        continue;
      }
      if (w->reserved_for && !ReadyOrder()(&job, w->reserved_for)) continue;
      if (!best || w->real_free() > best->real_free() ||
          (w->real_free() == best->real_free() && w->id < best->id)) {
        best = w;
      }
    }
    if (!best) return;  // no worker could ever run it: it waits for one that can
    if (best->reserved_for) drop_reservation(*best->reserved_for);
    best->reserved_for = &job;
    job.reservation = best;
  }

  // Gives ready tasks to workers, jobs in order: into free resources (`real`), or into worker
  // queues up to each worker's limit. A cursor goes round the workers, one task per worker per
  // visit, across jobs too, so that tasks spread. A worker kept for a job ahead gives jobs behind
  // it only what the kept job does not need, and queues none of their tasks. Cost: O(workers +
  // assignments + jobs visited), plus one lap of misses per distinct request that fits nowhere now.
  void fill(Decisions& d, bool real) {
    auto has_room = [real](const WorkerSlot* w) {
      return real
                 ? w->real_free() > 0 && w->outside == 0 && w->stuck == 0 && w->held_cpus < w->limit
                 : w->queue_room() > 0;
    };
    // The variant a task of `job` takes on `w` (0 without alternatives), or -1: none.
    auto room = [this, real](WorkerSlot* w, Job& job) -> int {
      if (real) {
        // Alternatives in order: the first that fits the worker now.
        const size_t n = std::max<size_t>(job.variants.size(), 1);
        for (size_t k = 0; k < n; ++k) {
          const auto v = static_cast<uint8_t>(k);
          if (reserved_against(*w, job) && !leaves_room_for_reserved(*w, job, v)) continue;
          if (w->can_place(job, request_of(job, v), now, v)) return v;
        }
        return -1;
      }
      // Queued tasks start in order on the worker: one queued behind a reservation would take
      // what the reserved job waits for, and one waiting for anything but CPUs would hold up
      // every task behind it while CPUs idle. Those wait at the server instead, and so do
      // tasks with alternatives, whose variant is chosen where they fit now.
      if (reserved_against(*w, job) || !cpu_only[job.request] || !job.variants.empty()) {
        return -1;
      }
      const bool fits =
          w->may_queue(job) && w->lives_for(job, now) && w->pool.could_fit(request_of(job));
      return fits ? 0 : -1;
    };
    candidates.clear();
    for (WorkerSlot* w : free_list) {
      if (has_room(w)) candidates.push_back(w);
    }
    ++pass;
    size_t full = 0;    // candidates with no room left (dropped now and then)
    size_t cursor = 0;  // next candidate to visit
    for (auto it = ready.begin(); it != ready.end() && full < candidates.size();) {
      Job& job = **it;
      // (A job with alternatives is not held back by its first one.)
      const bool unfit = unfit_pass[job.request] == pass ||
                         (!job.short_tasks() && unfit_long_pass[job.request] == pass);
      if (job.nodes > 1 || (job.variants.empty() && unfit)) {
        // Multi-node jobs have their own pass; or another job with this request fit nowhere.
        ++it;
        continue;
      }
      size_t misses = 0;
      while (job.ready() > 0 && misses < candidates.size()) {
        if (cursor >= candidates.size()) cursor = 0;
        WorkerSlot* w = candidates[cursor++];
        const int variant = room(w, job);
        if (variant < 0) {
          ++misses;
          continue;
        }
        misses = 0;
        assign(d, *w, job, real, static_cast<uint8_t>(variant));
        if (!has_room(w)) ++full;
      }
      if (job.ready() > 0) {
        // A time request narrows the workers beyond the request: only jobs without one speak
        // for every job of their request.
        // Nor do jobs with alternatives: another variant may fit where the first does not.
        if (job.time_request_ms == 0 && job.variants.empty()) {
          const bool deeper_for_short = !real && !job.short_tasks() && deep_queues();
          (deeper_for_short ? unfit_long_pass : unfit_pass)[job.request] = pass;
        }
        if (real) reserve(job);
      }
      if (full * 2 > candidates.size()) {
        size_t out = 0, new_cursor = 0;
        for (size_t i = 0; i < candidates.size(); ++i) {
          if (i == cursor) new_cursor = out;
          if (has_room(candidates[i])) candidates[out++] = candidates[i];
        }
        cursor = cursor >= candidates.size() ? out : new_cursor;
        candidates.resize(out);
        full = 0;
      }
      it = job.ready() == 0 ? leave_ready(job) : std::next(it);
    }
    // Jobs not visited because every worker filled up may be blocked too: the first of them
    // keeps a worker, so that it is not passed over forever.
    if (real && full >= candidates.size()) {
      for (Job* job : ready) {
        if ((job->variants.empty() && unfit_pass[job->request] == pass) || job->nodes > 1) {
          continue;
        }
        if (!job->reservation) reserve(*job);
        break;
      }
    }
  }

  // Gives each task of a multi-node job, in job order, `nodes` wholly idle workers of one group
  // (lowest ids; groups in name order): the first runs it, the others serve it and take nothing
  // else until it ends. O(workers) when such a job is ready.
  void fill_multi_node(Decisions& d) {
    if (multi_node_ready == 0) return;
    std::map<std::string_view, std::vector<WorkerSlot*>> idle;
    for (auto& [id, holder] : workers) {
      if (holder->wholly_idle()) idle[holder->group].push_back(holder.get());
    }
    for (auto& [group, list] : idle) {
      std::sort(list.begin(), list.end(),
                [](const WorkerSlot* a, const WorkerSlot* b) { return a->id < b->id; });
    }
    for (auto it = ready.begin(); it != ready.end();) {
      Job& job = **it;
      if (job.nodes <= 1) {
        ++it;
        continue;
      }
      while (job.ready() > 0) {
        std::vector<WorkerSlot*> chosen;
        for (auto& [group, list] : idle) {
          chosen.clear();
          for (WorkerSlot* w : list) {
            if (!reserved_against(*w, job) && w->lives_for(job, now)) chosen.push_back(w);
            if (chosen.size() == job.nodes) break;
          }
          if (chosen.size() == job.nodes) break;
        }
        if (chosen.size() < job.nodes) {
          reserve_nodes(job);
          break;
        }
        drop_reservation(job);
        assign(d, *chosen[0], job, /*placed=*/true);
        Assignment& a = d.assign.back();
        const uint32_t task_index = *job.ids.index_of(a.key.task);
        for (size_t k = 1; k < chosen.size(); ++k) {
          chosen[k]->serves_job = &job;
          chosen[k]->serves_index = task_index;
          a.others.push_back(chosen[k]->id);
          touch(*chosen[k]);
        }
        for (auto& [group, list] : idle) {
          std::erase_if(list, [&chosen](WorkerSlot* w) {
            return std::find(chosen.begin(), chosen.end(), w) != chosen.end();
          });
        }
      }
      it = job.ready() == 0 ? leave_ready(job) : std::next(it);
    }
  }

  // Workers with idle CPUs and nothing queued take queued tasks that other workers hold without
  // room to start them: ask those workers to give them back (newest first: the least likely to
  // have started). Never more CPUs than the idle workers lack, counting retractions still
  // pending. Cost: O(queued tasks + idle workers x distinct requests queued + retractions).
  void retract(Decisions& d) {
    if (overloaded_list.empty()) return;
    auto idle_now = [](const WorkerSlot* w) {
      return w->stuck == 0 && w->outside == 0 && w->real_free() > 0;
    };
    int64_t budget = -static_cast<int64_t>(retracting_cpus);
    for (WorkerSlot* w : free_list) budget += idle_now(w) ? w->real_free() : 0;
    if (budget <= 0) return;  // the retractions already asked for cover the idle CPUs
    // Queued tasks by request, oldest first.
    if (retractable_by_request.size() < requests.size()) {
      retractable_by_request.resize(requests.size());
    }
    for (uint32_t r : retractable_requests) retractable_by_request[r].clear();
    retractable_requests.clear();
    uint32_t smallest = std::numeric_limits<uint32_t>::max();
    for (WorkerSlot* v : overloaded_list) {
      for (const QueuedTask& q : v->queue) {
        const TaskSlot& s = q.job->task(q.index);
        if (s.state != TaskState::kWaiting || (s.flags & kRetracting)) continue;
        auto& list = retractable_by_request[q.job->request];
        if (list.empty()) retractable_requests.push_back(q.job->request);
        list.push_back({v, q.job, q.index});
        smallest = std::min(smallest, v->held[s.held_pos].cpus);
      }
    }
    std::sort(retractable_requests.begin(), retractable_requests.end());
    for (WorkerSlot* idle : free_list) {
      if (!idle_now(idle)) continue;
      uint32_t room = idle->real_free();
      if (room < smallest) continue;
      // What is taken back for this worker holds its resources until the end of the loop, so
      // that it is never promised more than it has.
      tentative.clear();
      for (uint32_t r : retractable_requests) {
        auto& list = retractable_by_request[r];
        for (size_t i = list.size(); i-- > 0 && room > 0 && budget > 0;) {
          auto [v, job, index] = list[i];
          if (v == idle) continue;
          TaskSlot& s = job->task(index);
          const uint32_t c = v->held[s.held_pos].cpus;
          if ((s.flags & kRetracting) || c > room || c > budget) continue;
          if (reserved_against(*idle, *job) || !idle->lives_for(*job, now)) continue;
          if (idle->held_cpus + c > idle->limit) continue;
          Allocation& taken = tentative.emplace_back();
          if (!idle->pool.allocate(requests[r], taken)) {
            tentative.pop_back();
            break;  // the same request does not fit this worker any more
          }
          s.flags |= kRetracting;
          v->retracting_cpus += c;
          retracting_cpus += c;
          touch(*v);
          room -= c;
          budget -= c;
          d.retract.push_back({v->id, {job->id, job->ids.id_at(index), s.instance}});
        }
      }
      for (const Allocation& a : tentative) idle->pool.release(a);
      if (budget <= 0) break;
    }
  }

  // Appends the parts to the job, with `graph` (over all its tasks, old and new) replacing its
  // graph unless null; queues their ready tasks, and aborts the new tasks that depend on tasks
  // which ended unfinished (at `now`).
  void add_parts(UserJob& owner, std::vector<PreparedPart>& parts, std::unique_ptr<DepGraph> graph,
                 bool cursor);

  void check() const;
};

}  // namespace hq::sched
