#include "scheduler/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "scheduler/job.h"

namespace hq::sched {

const char* to_string(TaskState s) {
  switch (s) {
    case TaskState::kWaiting:
      return "waiting";
    case TaskState::kRunning:
      return "running";
    case TaskState::kFinished:
      return "finished";
    case TaskState::kFailed:
      return "failed";
    case TaskState::kCanceled:
      return "canceled";
    case TaskState::kAborted:
      return "aborted";
  }
  return "unknown";
}

const char* to_string(JobState s) {
  switch (s) {
    case JobState::kWaiting:
      return "waiting";
    case JobState::kRunning:
      return "running";
    case JobState::kFinished:
      return "finished";
    case JobState::kFailed:
      return "failed";
    case JobState::kCanceled:
      return "canceled";
    case JobState::kAborted:
      return "aborted";
    case JobState::kOpened:
      return "opened";
  }
  return "unknown";
}

uint32_t TaskCounts::total() const {
  uint32_t n = 0;
  for (uint32_t c : by_state) n += c;
  return n;
}

bool TaskCounts::complete() const {
  return (*this)[TaskState::kWaiting] == 0 && (*this)[TaskState::kRunning] == 0;
}

JobState derive_job_state(const TaskCounts& counts, bool open) {
  if (counts[TaskState::kRunning] > 0) return JobState::kRunning;
  if (counts[TaskState::kWaiting] > 0) return JobState::kWaiting;
  if (open) return JobState::kOpened;
  if (counts[TaskState::kFailed] > 0) return JobState::kFailed;
  if (counts[TaskState::kAborted] > 0) return JobState::kAborted;
  if (counts[TaskState::kCanceled] > 0) return JobState::kCanceled;
  return JobState::kFinished;
}

// One task a worker holds.
struct HeldTask {
  Job* job;
  uint32_t index;
};

namespace {

bool ended(TaskState s) { return s != TaskState::kWaiting && s != TaskState::kRunning; }

struct ReadyOrder {
  bool operator()(const Job* a, const Job* b) const {
    return a->priority != b->priority ? a->priority > b->priority : a->id < b->id;
  }
};

uint32_t worker_limit(uint32_t cpus, double queue_factor) {
  double extra =
      std::isfinite(queue_factor) && queue_factor > 0 ? std::floor(queue_factor * cpus) : 0.0;
  double limit = static_cast<double>(cpus) + extra;
  constexpr uint32_t kMax = std::numeric_limits<uint32_t>::max();
  return limit >= static_cast<double>(kMax) ? kMax : static_cast<uint32_t>(limit);
}

}  // namespace

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

Scheduler::Scheduler(SchedulerConfig config) : impl_(std::make_unique<Impl>(config)) {}
Scheduler::~Scheduler() = default;

// --- Workers ----------------------------------------------------------------------------------

Status Scheduler::add_worker(WorkerId id, uint32_t cpus) {
  if (id == 0) return Status::error("worker id 0 is reserved");
  if (impl_->workers.contains(id)) {
    return Status::error(
        fmt::format("worker {} is already known: worker ids are never reused", id));
  }
  if (cpus == 0) return Status::error(fmt::format("worker {} has no CPUs", id));
  auto w = std::make_unique<WorkerSlot>();
  w->id = id;
  w->cpus = cpus;
  w->limit = worker_limit(cpus, impl_->config.queue_factor);
  WorkerSlot& ref = *w;
  impl_->workers.emplace(id, std::move(w));
  impl_->touch(ref);
  return Status::ok();
}

std::vector<TaskKey> Scheduler::remove_worker(WorkerId id, int64_t now, bool lost) {
  Impl& m = *impl_;
  std::vector<TaskKey> back;
  WorkerSlot* w = m.find_worker(id);
  if (!w || !w->connected) return back;
  std::vector<Job*> failed_jobs;
  for (const HeldTask& h : w->held) {
    Job& job = *h.job;
    TaskSlot& s = job.slots[h.index];
    if (s.flags & kRetracting) m.retracting_cpus -= job.cpus;
    s.flags = 0;
    s.held_pos = 0;
    if (ended(s.state)) continue;  // canceled: nothing to run again
    if (s.state == TaskState::kRunning) {
      if (lost && s.crashes < std::numeric_limits<uint16_t>::max()) ++s.crashes;
      if (lost && job.crash_limit > 0 && s.crashes >= job.crash_limit) {
        job.set_state(s, TaskState::kFailed);
        s.end_time = now;
        job.errors[h.index] = fmt::format(
            "Task was running on a worker that was lost {} time(s); its crash limit ({}) is "
            "reached",
            s.crashes, job.crash_limit);
        m.crash_failures.push_back({job.id, job.ids.id_at(h.index), s.instance});
        failed_jobs.push_back(&job);
        continue;
      }
      job.set_state(s, TaskState::kWaiting);
    }
    ++s.instance;
    s.start_time = 0;
    m.put_back(job, h.index);
    back.push_back({job.id, job.ids.id_at(h.index), s.instance});
  }
  w->held.clear();
  w->held.shrink_to_fit();
  w->held_cpus = w->retracting_cpus = w->running = w->stuck = 0;
  w->connected = false;
  for (Job* job : failed_jobs) {
    m.check_max_fails(*job, now);
    m.note_completion(*job);
  }
  return back;
}

// --- Jobs -------------------------------------------------------------------------------------

Status Scheduler::add_job(const JobSpec& spec) {
  if (spec.id == 0) return Status::error("job id 0 is reserved");
  if (impl_->jobs.contains(spec.id)) {
    return Status::error(fmt::format("job {} already exists: job ids are never reused", spec.id));
  }
  if (spec.cpus == 0) {
    return Status::error(fmt::format("job {} requests 0 CPUs: a task needs at least 1", spec.id));
  }
  Result<TaskIdMap> ids = TaskIdMap::build(spec.task_ids);
  if (!ids) return Status::error(fmt::format("job {}: {}", spec.id, ids.message()));
  auto job = std::make_unique<Job>(spec.id, spec.cpus, spec.priority, std::move(ids).value());
  job->crash_limit = spec.crash_limit;
  job->max_fails = spec.max_fails;
  Job& ref = *job;
  impl_->jobs.emplace(spec.id, std::move(job));
  impl_->job_index.emplace(spec.id, &ref);
  impl_->ready_tasks += ref.ready();
  impl_->enter_ready(ref);
  return Status::ok();
}

Status Scheduler::validate_job(const JobSpec& spec) {
  if (spec.id == 0) return Status::error("job id 0 is reserved");
  if (spec.cpus == 0) {
    return Status::error(fmt::format("job {} requests 0 CPUs: a task needs at least 1", spec.id));
  }
  Result<TaskIdMap> ids = TaskIdMap::build(spec.task_ids);
  if (!ids) return Status::error(fmt::format("job {}: {}", spec.id, ids.message()));
  return Status::ok();
}

std::vector<Assignment> Scheduler::cancel_job(JobId id, int64_t now) {
  std::vector<Assignment> kill;
  if (Job* job = impl_->find_job(id)) impl_->end_job(*job, TaskState::kCanceled, now, kill);
  return kill;
}

std::vector<Assignment> Scheduler::abort_job(JobId id, int64_t now) {
  std::vector<Assignment> kill;
  if (Job* job = impl_->find_job(id)) impl_->end_job(*job, TaskState::kAborted, now, kill);
  return kill;
}

// --- Worker reports ---------------------------------------------------------------------------

bool Scheduler::task_started(WorkerId worker, TaskKey key, int64_t time) {
  std::optional<Impl::Held> h = impl_->find_held(worker, key);
  if (!h || h->slot->state != TaskState::kWaiting) return false;
  impl_->clear_retraction(*h->w, *h->job, *h->slot);  // too late to give it back
  h->job->set_state(*h->slot, TaskState::kRunning);
  h->slot->start_time = time;
  ++h->w->running;
  return true;
}

bool Scheduler::task_finished(WorkerId worker, TaskKey key, int64_t time) {
  return impl_->end_task(worker, key, time, TaskState::kFinished, nullptr);
}

bool Scheduler::task_failed(WorkerId worker, TaskKey key, int64_t time, std::string error) {
  return impl_->end_task(worker, key, time, TaskState::kFailed, &error);
}

bool Scheduler::task_retracted(WorkerId worker, TaskKey key) {
  Impl& m = *impl_;
  std::optional<Impl::Held> h = m.find_held(worker, key);
  if (!h || h->slot->state == TaskState::kRunning) return false;
  m.release(*h->w, *h->job, h->index);
  if (!ended(h->slot->state)) m.put_back(*h->job, h->index);
  return true;
}

// --- Restoring from the journal ---------------------------------------------------------------

namespace {

struct Found {
  Job* job;
  uint32_t index;
  TaskSlot* slot;
};

std::optional<Found> find_task(const std::unordered_map<JobId, Job*>& index, TaskKey key) {
  auto it = index.find(key.job);
  if (it == index.end()) return std::nullopt;
  std::optional<uint32_t> i = it->second->ids.index_of(key.task);
  if (!i) return std::nullopt;
  return Found{it->second, *i, &it->second->slots[*i]};
}

}  // namespace

bool Scheduler::restore_started(TaskKey key, WorkerId worker, int64_t time) {
  std::optional<Found> f = find_task(impl_->job_index, key);
  if (!f) return false;
  TaskSlot& s = *f->slot;
  f->job->set_state(s, TaskState::kRunning);
  s.instance = key.instance;
  s.worker = worker;
  s.start_time = time;
  s.end_time = 0;
  f->job->errors.erase(f->index);
  return true;
}

bool Scheduler::restore_ended(TaskKey key, TaskState state, int64_t time, std::string error,
                              WorkerId worker) {
  if (!ended(state)) return false;
  std::optional<Found> f = find_task(impl_->job_index, key);
  if (!f) return false;
  TaskSlot& s = *f->slot;
  if (state != TaskState::kCanceled && s.start_time == 0) s.start_time = time;
  f->job->set_state(s, state);
  s.instance = key.instance;
  s.end_time = time;
  if (worker != 0) s.worker = worker;
  if (state == TaskState::kFailed) {
    f->job->errors[f->index] = std::move(error);
  } else {
    f->job->errors.erase(f->index);
  }
  return true;
}

bool Scheduler::restore_requeued(TaskKey key, uint32_t crashes) {
  std::optional<Found> f = find_task(impl_->job_index, key);
  if (!f) return false;
  TaskSlot& s = *f->slot;
  f->job->set_state(s, TaskState::kWaiting);
  s.instance = key.instance;
  s.crashes = static_cast<uint16_t>(std::min<uint32_t>(crashes, 0xffff));
  s.start_time = s.end_time = 0;
  f->job->errors.erase(f->index);
  return true;
}

void Scheduler::restore_reserved(JobId id, uint32_t tasks) {
  if (Job* job = impl_->find_job(id)) job->reserved = std::max(job->reserved, tasks);
}

uint32_t Scheduler::fresh_cursor(JobId id) const {
  const Job* job = impl_->find_job(id);
  return job ? job->fresh_begin() : 0;
}

uint64_t Scheduler::restore_restart() {
  uint64_t back = 0;
  for (auto& [id, holder] : impl_->jobs) {
    Job& job = *holder;
    const uint32_t reserved = std::min(job.reserved, job.size());
    if (reserved == 0 && job.counts[TaskState::kRunning] == 0) continue;
    for (uint32_t i = 0; i < job.size(); ++i) {
      TaskSlot& s = job.slots[i];
      const bool maybe_ran =
          s.state == TaskState::kRunning || (s.state == TaskState::kWaiting && i < reserved);
      if (!maybe_ran) {
        if (i >= reserved && job.counts[TaskState::kRunning] == 0) break;  // nothing more
        continue;
      }
      if (s.state == TaskState::kRunning) job.set_state(s, TaskState::kWaiting);
      ++s.instance;
      s.start_time = 0;
      ++back;
    }
    job.reserved = 0;
  }
  return back;
}

uint64_t Scheduler::finish_restore() {
  Impl& m = *impl_;
  const uint64_t back = restore_restart();
  for (auto& [id, holder] : m.jobs) {
    Job& job = *holder;
    m.ready_tasks -= job.ready();
    m.leave_ready(job);
    job.rebuild_ready();
    m.ready_tasks += job.ready();
    m.enter_ready(job);
    // Completed before the restart: nothing to report now.
    if (job.counts.complete()) job.completion_noted = true;
    m.completed.erase(id);
  }
  return back;
}

// --- Decisions --------------------------------------------------------------------------------

Decisions Scheduler::schedule() {
  Impl& m = *impl_;
  Decisions d;
  m.compact_lists();
  if (!m.ready.empty() && !m.free_list.empty()) {
    m.fill(d, /*real=*/true);
    m.fill(d, /*real=*/false);
  }
  m.retract(d);
  return d;
}

std::vector<TaskKey> Scheduler::take_crash_failures() {
  return std::exchange(impl_->crash_failures, {});
}

std::vector<JobId> Scheduler::take_aborted_jobs() { return std::exchange(impl_->aborted_jobs, {}); }

std::vector<Assignment> Scheduler::take_kills() { return std::exchange(impl_->kills, {}); }

std::vector<JobId> Scheduler::take_completed_jobs() {
  std::vector<JobId> out(impl_->completed.begin(), impl_->completed.end());
  impl_->completed.clear();
  return out;
}

// --- Queries ----------------------------------------------------------------------------------

namespace {

TaskView make_view(const Job& job, uint32_t index, TaskId id) {
  const TaskSlot& s = job.slots[index];
  TaskView v;
  v.id = id;
  v.state = s.state;
  v.instance = s.instance;
  const bool held = s.flags & kHeld;
  v.queued = held && s.state == TaskState::kWaiting;
  v.worker = (s.state == TaskState::kWaiting && !held) ? 0 : s.worker;
  v.start_time = s.start_time;
  v.end_time = s.end_time;
  v.crashes = s.crashes;
  if (s.state == TaskState::kFailed) {
    auto it = job.errors.find(index);
    if (it != job.errors.end()) v.error = &it->second;
  }
  return v;
}

}  // namespace

bool Scheduler::has_job(JobId id) const { return impl_->jobs.contains(id); }

JobId Scheduler::last_job_id() const {
  return impl_->jobs.empty() ? 0 : impl_->jobs.rbegin()->first;
}

std::vector<JobId> Scheduler::job_ids() const {
  std::vector<JobId> ids;
  ids.reserve(impl_->jobs.size());
  for (const auto& [id, job] : impl_->jobs) ids.push_back(id);
  return ids;
}

TaskCounts Scheduler::counts(JobId id) const {
  const Job* job = impl_->find_job(id);
  return job ? job->counts : TaskCounts{};
}

JobState Scheduler::job_state(JobId id) const {
  const Job* job = impl_->find_job(id);
  return job ? derive_job_state(job->counts, job->open) : derive_job_state(TaskCounts{});
}

uint32_t Scheduler::job_cpus(JobId id) const {
  const Job* job = impl_->find_job(id);
  return job ? job->cpus : 0;
}

void Scheduler::for_each_task(JobId id, const std::function<void(const TaskView&)>& f) const {
  const Job* job = impl_->find_job(id);
  if (!job) return;
  uint32_t index = 0;
  for (const IdRange& r : job->ids.ranges()) {
    for (uint64_t t = r.start; t <= r.end; t += r.step) {
      f(make_view(*job, index++, static_cast<TaskId>(t)));
    }
  }
}

std::optional<TaskView> Scheduler::task(JobId job_id, TaskId task) const {
  const Job* job = impl_->find_job(job_id);
  if (!job) return std::nullopt;
  std::optional<uint32_t> index = job->ids.index_of(task);
  if (!index) return std::nullopt;
  return make_view(*job, *index, task);
}

uint32_t Scheduler::held_tasks(WorkerId id) const {
  const WorkerSlot* w = impl_->find_worker(id);
  return w ? static_cast<uint32_t>(w->held.size()) : 0;
}

uint32_t Scheduler::running_tasks(WorkerId id) const {
  const WorkerSlot* w = impl_->find_worker(id);
  return w ? w->running : 0;
}

uint32_t Scheduler::waiting_tasks() const {
  constexpr uint64_t kMax = std::numeric_limits<uint32_t>::max();
  return static_cast<uint32_t>(std::min(impl_->ready_tasks, kMax));
}

uint32_t Scheduler::queued_tasks(WorkerId id) const {
  const WorkerSlot* w = impl_->find_worker(id);
  if (!w) return 0;
  uint32_t n = 0;
  for (const HeldTask& h : w->held) n += h.job->slots[h.index].state == TaskState::kWaiting;
  return n;
}

uint32_t Scheduler::crash_count(JobId job_id, TaskId task) const {
  const Job* job = impl_->find_job(job_id);
  if (!job) return 0;
  std::optional<uint32_t> index = job->ids.index_of(task);
  return index ? job->slots[*index].crashes : 0;
}

// --- Invariants -------------------------------------------------------------------------------

void Scheduler::check_invariants() const { impl_->check(); }

#define HQ_SCHED_CHECK(cond, ...)                            \
  do {                                                       \
    if (!(cond)) invariant_failed(fmt::format(__VA_ARGS__)); \
  } while (0)

void Scheduler::Impl::check() const {
  uint64_t total_ready = 0;
  size_t jobs_in_ready = 0;
  std::map<uint32_t, uint32_t> cpus_in_ready;
  for (const auto& [id, holder] : jobs) {
    const Job& job = *holder;
    HQ_SCHED_CHECK(job.id == id && find_job(id) == &job, "job {} is filed under id {}", job.id, id);
    job.check_queue();
    HQ_SCHED_CHECK(job.ids.size() == job.size(), "job {}: {} ids but {} slots", id, job.ids.size(),
                   job.size());
    TaskCounts recount;
    uint32_t unheld_waiting_before_fresh = 0;
    for (uint32_t i = 0; i < job.size(); ++i) {
      const TaskSlot& s = job.slots[i];
      ++recount.by_state[static_cast<int>(s.state)];
      const bool held = s.flags & kHeld;
      HQ_SCHED_CHECK((s.flags & ~(kHeld | kRetracting)) == 0, "job {} task #{}: bad flags {}", id,
                     i, s.flags);
      HQ_SCHED_CHECK(!(s.flags & kRetracting) || (held && s.state == TaskState::kWaiting),
                     "job {} task #{}: retracting but not held and queued", id, i);
      HQ_SCHED_CHECK(s.state != TaskState::kRunning || held, "job {} task #{}: running, not held",
                     id, i);
      HQ_SCHED_CHECK(!held || (s.state != TaskState::kFinished && s.state != TaskState::kFailed),
                     "job {} task #{}: held after it finished or failed", id, i);
      HQ_SCHED_CHECK(s.state != TaskState::kFailed || job.errors.contains(i),
                     "job {} task #{}: failed without an error", id, i);
      if (i >= job.fresh_begin()) {
        HQ_SCHED_CHECK(s.state == TaskState::kWaiting && s.flags == 0 && s.instance == 0,
                       "job {} task #{}: past the fresh cursor but not a fresh waiting task", id,
                       i);
      } else if (s.state == TaskState::kWaiting && !held) {
        ++unheld_waiting_before_fresh;
      }
      if (held) {
        const WorkerSlot* w = find_worker(s.worker);
        HQ_SCHED_CHECK(w && w->connected, "job {} task #{}: held by unknown worker {}", id, i,
                       s.worker);
        HQ_SCHED_CHECK(s.held_pos < w->held.size() && w->held[s.held_pos].job == &job &&
                           w->held[s.held_pos].index == i,
                       "job {} task #{}: worker {} does not hold it at position {}", id, i,
                       s.worker, s.held_pos);
      }
    }
    for (int st = 0; st < 6; ++st) {
      HQ_SCHED_CHECK(recount.by_state[st] == job.counts.by_state[st],
                     "job {}: {} tasks counted {} but {} found", id,
                     to_string(static_cast<TaskState>(st)), job.counts.by_state[st],
                     recount.by_state[st]);
    }
    HQ_SCHED_CHECK(job.errors.size() == job.counts[TaskState::kFailed],
                   "job {}: {} errors for {} failed tasks", id, job.errors.size(),
                   job.counts[TaskState::kFailed]);
    std::vector<uint32_t> requeued = job.requeued();
    std::sort(requeued.begin(), requeued.end());
    HQ_SCHED_CHECK(std::adjacent_find(requeued.begin(), requeued.end()) == requeued.end(),
                   "job {}: a task is requeued twice", id);
    for (uint32_t i : requeued) {
      HQ_SCHED_CHECK(i < job.fresh_begin() && job.slots[i].state == TaskState::kWaiting &&
                         job.slots[i].flags == 0,
                     "job {} task #{}: requeued but not an unheld waiting task", id, i);
    }
    HQ_SCHED_CHECK(requeued.size() == unheld_waiting_before_fresh,
                   "job {}: {} requeued entries for {} unheld waiting tasks", id, requeued.size(),
                   unheld_waiting_before_fresh);
    HQ_SCHED_CHECK(job.in_ready_set == (job.ready() > 0) &&
                       ready.contains(const_cast<Job*>(&job)) == job.in_ready_set,
                   "job {}: in the ready set iff it has ready tasks", id);
    if (job.in_ready_set) {
      ++jobs_in_ready;
      ++cpus_in_ready[job.cpus];
    }
    total_ready += job.ready();
    HQ_SCHED_CHECK(!job.completion_noted || job.counts.complete(),
                   "job {}: noted complete but has work left", id);
    HQ_SCHED_CHECK(!completed.contains(id) || job.completion_noted,
                   "job {}: listed complete without the note", id);
    HQ_SCHED_CHECK(job.completion_noted || !job.counts.complete(),
                   "job {}: complete but never noted", id);
  }
  HQ_SCHED_CHECK(job_index.size() == jobs.size(), "job index holds {} jobs, not {}",
                 job_index.size(), jobs.size());
  HQ_SCHED_CHECK(jobs_in_ready == ready.size(), "ready set holds {} jobs, {} expected",
                 ready.size(), jobs_in_ready);
  HQ_SCHED_CHECK(cpus_in_ready == ready_cpus, "ready CPU histogram is stale");
  HQ_SCHED_CHECK(total_ready == ready_tasks, "{} ready tasks counted, {} found", ready_tasks,
                 total_ready);
  for (const auto& c : completed) {
    HQ_SCHED_CHECK(jobs.contains(c), "completed job {} is unknown", c);
  }

  uint64_t total_retracting = 0;
  size_t free_flags = 0, overloaded_flags = 0;
  for (const auto& [id, holder] : workers) {
    const WorkerSlot& w = *holder;
    HQ_SCHED_CHECK(w.id == id, "worker {} is filed under id {}", w.id, id);
    HQ_SCHED_CHECK(w.limit == worker_limit(w.cpus, config.queue_factor),
                   "worker {}: limit {} is stale", id, w.limit);
    uint64_t cpus = 0, retracting = 0;
    uint32_t running = 0;
    for (size_t k = 0; k < w.held.size(); ++k) {
      const HeldTask& h = w.held[k];
      const TaskSlot& s = h.job->slots[h.index];
      HQ_SCHED_CHECK((s.flags & kHeld) && s.worker == id && s.held_pos == k,
                     "worker {}: held entry {} (job {} task #{}) does not name it", id, k,
                     h.job->id, h.index);
      HQ_SCHED_CHECK(find_job(h.job->id) == h.job, "worker {}: holds a task of a stale job", id);
      cpus += h.job->cpus;
      if (s.flags & kRetracting) retracting += h.job->cpus;
      if (s.state == TaskState::kRunning) ++running;
    }
    HQ_SCHED_CHECK(cpus == w.held_cpus, "worker {}: holds {} CPUs but counts {}", id, cpus,
                   w.held_cpus);
    HQ_SCHED_CHECK(retracting == w.retracting_cpus, "worker {}: retracting {} CPUs but counts {}",
                   id, retracting, w.retracting_cpus);
    HQ_SCHED_CHECK(running == w.running, "worker {}: runs {} tasks but counts {}", id, running,
                   w.running);
    HQ_SCHED_CHECK(w.held_cpus <= w.limit, "worker {}: holds {} CPUs over its limit {}", id,
                   w.held_cpus, w.limit);
    total_retracting += retracting;
    if (!w.connected) {
      HQ_SCHED_CHECK(w.held.empty() && w.stuck == 0, "removed worker {} still holds tasks", id);
      continue;
    }
    uint32_t load = w.held_cpus - w.retracting_cpus;
    HQ_SCHED_CHECK(w.stuck == (load > w.cpus ? load - w.cpus : 0), "worker {}: stale stuck", id);
    HQ_SCHED_CHECK(w.held_cpus >= w.limit || w.in_free_list, "worker {}: has room, not listed", id);
    HQ_SCHED_CHECK(w.stuck == 0 || w.in_overloaded_list, "worker {}: overloaded, not listed", id);
  }
  for (const auto& [id, holder] : workers) {
    free_flags += holder->in_free_list;
    overloaded_flags += holder->in_overloaded_list;
  }
  std::vector<const WorkerSlot*> listed(free_list.begin(), free_list.end());
  std::sort(listed.begin(), listed.end());
  HQ_SCHED_CHECK(std::adjacent_find(listed.begin(), listed.end()) == listed.end() &&
                     listed.size() == free_flags,
                 "free worker list is inconsistent");
  listed.assign(overloaded_list.begin(), overloaded_list.end());
  std::sort(listed.begin(), listed.end());
  HQ_SCHED_CHECK(std::adjacent_find(listed.begin(), listed.end()) == listed.end() &&
                     listed.size() == overloaded_flags,
                 "overloaded worker list is inconsistent");
  for (const WorkerSlot* w : free_list) {
    HQ_SCHED_CHECK(w->in_free_list, "worker {} listed free without its flag", w->id);
  }
  for (const WorkerSlot* w : overloaded_list) {
    HQ_SCHED_CHECK(w->in_overloaded_list, "worker {} listed overloaded without its flag", w->id);
  }
  HQ_SCHED_CHECK(total_retracting == retracting_cpus, "retracting {} CPUs but counts {}",
                 total_retracting, retracting_cpus);
}

#undef HQ_SCHED_CHECK

}  // namespace hq::sched
