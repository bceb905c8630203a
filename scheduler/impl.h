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

#include "scheduler/job.h"
#include "scheduler/scheduler.h"

namespace hq::sched {

// One task a worker holds.
struct HeldTask {
  Job* job;
  uint32_t index;
};

inline bool ended(TaskState s) { return s != TaskState::kWaiting && s != TaskState::kRunning; }

struct ReadyOrder {
  bool operator()(const Job* a, const Job* b) const {
    return a->priority != b->priority ? a->priority > b->priority : a->id < b->id;
  }
};

inline uint32_t worker_limit(uint32_t cpus, double queue_factor) {
  double extra =
      std::isfinite(queue_factor) && queue_factor > 0 ? std::floor(queue_factor * cpus) : 0.0;
  double limit = static_cast<double>(cpus) + extra;
  constexpr uint32_t kMax = std::numeric_limits<uint32_t>::max();
  return limit >= static_cast<double>(kMax) ? kMax : static_cast<uint32_t>(limit);
}

struct WorkerSlot {
  WorkerId id = 0;
  uint32_t cpus = 0;
  uint32_t limit = 0;  // CPUs it may hold: cpus + floor(queue_factor * cpus)
  bool connected = true;
  bool in_free_list = false;
  bool in_overloaded_list = false;
  std::vector<HeldTask> held;
  uint32_t held_cpus = 0;        // CPUs of every held task
  uint32_t retracting_cpus = 0;  // CPUs of held tasks with a pending retraction
  uint32_t running = 0;          // held tasks in state kRunning
  uint32_t stuck = 0;  // held_cpus - retracting_cpus - cpus when positive: queued beyond capacity

  uint32_t real_free() const { return held_cpus < cpus ? cpus - held_cpus : 0; }
};

struct Scheduler::Impl {
  SchedulerConfig config;
  std::map<JobId, std::unique_ptr<Job>> jobs;  // owns them, in id order
  std::unordered_map<JobId, Job*> job_index;   // the same, for O(1) lookups by reports
  std::unordered_map<WorkerId, std::unique_ptr<WorkerSlot>> workers;

  // Jobs with ready tasks, in scheduling order, and how many of them request each CPU count.
  std::set<Job*, ReadyOrder> ready;
  std::map<uint32_t, uint32_t> ready_cpus;
  uint64_t ready_tasks = 0;  // sum of Job::ready()

  // Supersets, compacted by schedule(): connected workers with held_cpus < limit, and connected
  // workers with stuck > 0. Each worker appears at most once (its in_*_list flag).
  std::vector<WorkerSlot*> free_list;
  std::vector<WorkerSlot*> overloaded_list;
  uint64_t retracting_cpus = 0;  // over all workers

  std::set<JobId> completed;  // for take_completed_jobs
  std::vector<TaskKey> crash_failures;
  std::vector<JobId> aborted_jobs;
  std::vector<Assignment> kills;

  // Scratch space of schedule(), kept to avoid reallocating.
  std::vector<WorkerSlot*> candidates;
  struct HeldRef {
    WorkerSlot* worker;
    uint32_t pos;  // in worker->held
  };
  std::vector<HeldRef> retractable;

  explicit Impl(SchedulerConfig c) : config(c) {}

  Job* find_job(JobId id) const {
    auto it = job_index.find(id);
    return it == job_index.end() ? nullptr : it->second;
  }
  WorkerSlot* find_worker(WorkerId id) const {
    auto it = workers.find(id);
    return it == workers.end() ? nullptr : it->second.get();
  }

  // --- Ready set -----------------------------------------------------------------------------
  void enter_ready(Job& job) {
    if (job.in_ready_set || job.ready() == 0) return;
    ready.insert(&job);
    ++ready_cpus[job.cpus];
    job.in_ready_set = true;
  }
  std::set<Job*, ReadyOrder>::iterator leave_ready(Job& job) {
    auto it = ready.find(&job);
    if (it == ready.end()) return it;
    auto c = ready_cpus.find(job.cpus);
    if (--c->second == 0) ready_cpus.erase(c);
    job.in_ready_set = false;
    return ready.erase(it);
  }
  void put_back(Job& job, uint32_t index) {
    job.put_back(index);
    ++ready_tasks;
    enter_ready(job);
  }

  // --- Workers -------------------------------------------------------------------------------
  // Refreshes the worker's cached figures and list memberships after its load changed.
  void touch(WorkerSlot& w) {
    if (!w.connected) return;
    uint32_t load = w.held_cpus - w.retracting_cpus;
    w.stuck = load > w.cpus ? load - w.cpus : 0;
    if (w.held_cpus < w.limit && !w.in_free_list) {
      free_list.push_back(&w);
      w.in_free_list = true;
    }
    if (w.stuck > 0 && !w.in_overloaded_list) {
      overloaded_list.push_back(&w);
      w.in_overloaded_list = true;
    }
  }
  void hold(WorkerSlot& w, Job& job, uint32_t index) {
    TaskSlot& s = job.slots[index];
    s.flags = kHeld;
    s.worker = w.id;
    s.held_pos = static_cast<uint32_t>(w.held.size());
    w.held.push_back({&job, index});
    w.held_cpus += job.cpus;
    touch(w);
  }
  void clear_retraction(WorkerSlot& w, Job& job, TaskSlot& s) {
    if (!(s.flags & kRetracting)) return;
    s.flags &= ~kRetracting;
    w.retracting_cpus -= job.cpus;
    retracting_cpus -= job.cpus;
    touch(w);
  }
  void release(WorkerSlot& w, Job& job, uint32_t index) {
    TaskSlot& s = job.slots[index];
    clear_retraction(w, job, s);
    HeldTask last = w.held.back();
    w.held[s.held_pos] = last;
    last.job->slots[last.index].held_pos = s.held_pos;
    w.held.pop_back();
    s.flags = 0;
    s.held_pos = 0;
    w.held_cpus -= job.cpus;
    touch(w);
  }

  // The task the report names, when `worker` holds that instance of it.
  struct Held {
    WorkerSlot* w;
    Job* job;
    uint32_t index;
    TaskSlot* slot;
  };
  std::optional<Held> find_held(WorkerId worker, TaskKey key) {
    Job* job = find_job(key.job);
    if (!job) return std::nullopt;
    std::optional<uint32_t> index = job->ids.index_of(key.task);
    if (!index) return std::nullopt;
    TaskSlot& s = job->slots[*index];
    if (!(s.flags & kHeld) || s.worker != worker || s.instance != key.instance) {
      return std::nullopt;
    }
    return Held{find_worker(worker), job, *index, &s};
  }

  void note_completion(Job& job) {
    if (!job.completion_noted && job.counts.complete()) {
      job.completion_noted = true;
      completed.insert(job.id);
    }
  }

  bool end_task(WorkerId worker, TaskKey key, int64_t time, TaskState to, std::string* error) {
    std::optional<Held> h = find_held(worker, key);
    if (!h) return false;
    TaskSlot& s = *h->slot;
    if (ended(s.state)) {  // canceled while held: the worker only gives the CPUs back
      release(*h->w, *h->job, h->index);
      return true;
    }
    if (s.state == TaskState::kRunning) {
      --h->w->running;
    } else if (s.start_time == 0) {
      s.start_time = time;  // ended without a start report (batched): no known start
    }
    h->job->set_state(s, to);
    s.end_time = time;
    if (error) h->job->errors[h->index] = std::move(*error);
    release(*h->w, *h->job, h->index);
    if (to == TaskState::kFailed) check_max_fails(*h->job, time);
    note_completion(*h->job);
    return true;
  }

  // Every task of `job` not yet ended becomes `to` (canceled or aborted) at `now`; the held ones
  // are appended to `held` (their workers must kill them).
  void end_job(Job& job, TaskState to, int64_t now, std::vector<Assignment>& held) {
    ready_tasks -= job.ready();
    job.clear_ready();
    leave_ready(job);
    for (uint32_t i = 0; i < job.size(); ++i) {
      TaskSlot& s = job.slots[i];
      if (ended(s.state)) continue;
      if (s.flags & kHeld) {
        WorkerSlot& w = *find_worker(s.worker);
        held.push_back({w.id, {job.id, job.ids.id_at(i), s.instance}});
        clear_retraction(w, job, s);
        if (s.state == TaskState::kRunning) --w.running;
      }
      job.set_state(s, to);
      s.end_time = now;
    }
    note_completion(job);
  }

  void check_max_fails(Job& job, int64_t now) {
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

  void assign(Decisions& d, WorkerSlot& w, Job& job) {
    Job::Next next = job.take_ready();
    --ready_tasks;
    hold(w, job, next.index);
    d.assign.push_back({w.id, {job.id, next.id, job.slots[next.index].instance}});
  }

  // Gives ready tasks to workers, jobs in order, up to each worker's real capacity (`real`) or up
  // to its limit. A cursor goes round the workers, one task per worker per visit, across jobs too,
  // so that tasks spread. Cost: O(workers + assignments + jobs visited), plus one lap of misses
  // for a job whose tasks fit nowhere now.
  void fill(Decisions& d, bool real) {
    auto room = [real](const WorkerSlot* w) { return (real ? w->cpus : w->limit) - w->held_cpus; };
    candidates.clear();
    for (WorkerSlot* w : free_list) {
      if (w->held_cpus < (real ? w->cpus : w->limit)) candidates.push_back(w);
    }
    size_t full = 0;    // candidates with no room left (dropped now and then)
    size_t cursor = 0;  // next candidate to visit
    // Fitting is monotonic in the request: once c CPUs fit nowhere, neither does anything bigger.
    uint32_t unfit = std::numeric_limits<uint32_t>::max();
    for (auto it = ready.begin(); it != ready.end() && full < candidates.size();) {
      if (ready_cpus.begin()->first >= unfit) break;  // no ready job fits anywhere
      Job& job = **it;
      const uint32_t c = job.cpus;
      if (c >= unfit) {  // too big for now: it must not block smaller jobs behind it
        ++it;
        continue;
      }
      // A task never goes to a worker with fewer CPUs than it needs, queue part or not.
      size_t misses = 0;
      while (job.ready() > 0 && misses < candidates.size()) {
        if (cursor >= candidates.size()) cursor = 0;
        WorkerSlot* w = candidates[cursor++];
        if (w->cpus < c || room(w) < c) {
          ++misses;
          continue;
        }
        misses = 0;
        assign(d, *w, job);
        if (room(w) == 0) ++full;
      }
      if (job.ready() > 0) unfit = c;
      if (full * 2 > candidates.size()) {
        size_t out = 0, new_cursor = 0;
        for (size_t i = 0; i < candidates.size(); ++i) {
          if (i == cursor) new_cursor = out;
          if (room(candidates[i]) > 0) candidates[out++] = candidates[i];
        }
        cursor = cursor >= candidates.size() ? out : new_cursor;
        candidates.resize(out);
        full = 0;
      }
      it = job.ready() == 0 ? leave_ready(job) : std::next(it);
    }
  }

  // Workers with idle CPUs that no ready task fits take queued tasks that other workers hold
  // beyond their CPUs: ask those workers to give them back. An overloaded worker keeps the queued
  // tasks that can start there now (in held order, while they fit the CPUs its started tasks
  // leave); the others may be asked back. Never more CPUs than the idle workers lack, counting
  // retractions still pending.
  void retract(Decisions& d) {
    if (overloaded_list.empty()) return;
    int64_t budget = -static_cast<int64_t>(retracting_cpus);
    for (WorkerSlot* w : free_list) budget += w->real_free();
    if (budget <= 0) return;  // the retractions already asked for cover the idle CPUs
    retractable.clear();
    uint32_t smallest = std::numeric_limits<uint32_t>::max();
    for (WorkerSlot* v : overloaded_list) {
      uint32_t busy = 0;  // started tasks, and canceled ones that may still run
      for (const HeldTask& h : v->held) {
        if (h.job->slots[h.index].state != TaskState::kWaiting) busy += h.job->cpus;
      }
      uint32_t startable = busy < v->cpus ? v->cpus - busy : 0;
      for (uint32_t k = 0; k < v->held.size(); ++k) {
        const HeldTask& h = v->held[k];
        const TaskSlot& s = h.job->slots[h.index];
        if (s.state != TaskState::kWaiting || (s.flags & kRetracting)) continue;
        if (h.job->cpus <= startable) {
          startable -= h.job->cpus;
        } else {
          retractable.push_back({v, k});
          smallest = std::min(smallest, h.job->cpus);
        }
      }
    }
    for (WorkerSlot* idle : free_list) {
      uint32_t room = idle->real_free();
      if (room < smallest) continue;
      // Newest held tasks first: the worker is least likely to have started them.
      for (size_t i = retractable.size(); i-- > 0 && room > 0 && budget > 0;) {
        WorkerSlot* v = retractable[i].worker;
        HeldTask h = v->held[retractable[i].pos];
        TaskSlot& s = h.job->slots[h.index];
        const uint32_t c = h.job->cpus;
        if ((s.flags & kRetracting) || c > room || c > budget) continue;
        s.flags |= kRetracting;
        v->retracting_cpus += c;
        retracting_cpus += c;
        touch(*v);
        room -= c;
        budget -= c;
        d.retract.push_back({v->id, {h.job->id, h.job->ids.id_at(h.index), s.instance}});
      }
      if (budget <= 0) break;
    }
  }

  void check() const;
};

}  // namespace hq::sched
