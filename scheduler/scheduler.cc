#include "scheduler/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <utility>

#include <fmt/format.h>

#include "scheduler/impl.h"

namespace hq::sched {

Result<JobSpec> job_spec(JobId id, JobDescriptionSpec& job) {
  if (Status st = normalize_request(job); !st) return Error{st.message()};
  JobSpec spec{id,
               job.task_ids,
               job.body.cpus,
               job.priority,
               job.crash_limit,
               job.max_fails,
               job.body.resources,
               job.body.time_request_ms,
               job.nodes};
  for (const GraphTaskSpec& t : job.tasks) {
    if (!t.deps.empty()) spec.deps.push_back({t.id, t.deps});
  }
  return spec;
}

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

Scheduler::Scheduler(SchedulerConfig config) : impl_(std::make_unique<Impl>(config)) {}
Scheduler::~Scheduler() = default;

// --- Workers ----------------------------------------------------------------------------------

Status Scheduler::add_worker(WorkerId id, const ResourceDescriptor& resources, int64_t end_time,
                             std::string group) {
  if (id == 0) return Status::error("worker id 0 is reserved");
  if (impl_->workers.contains(id)) {
    return Status::error(
        fmt::format("worker {} is already known: worker ids are never reused", id));
  }
  const ResourceDefinition* cpus = resources.find(kCpus);
  if (!cpus || cpus->kind != ResourceKind::kIndexed || cpus->size() == 0) {
    return Status::error(fmt::format("worker {} has no CPUs", id));
  }
  auto w = std::make_unique<WorkerSlot>();
  w->id = id;
  w->cpus = cpus->size();
  w->limit = worker_limit(w->cpus, impl_->config.queue_factor);
  w->end_time = end_time;
  w->group = std::move(group);
  w->resources = resources;
  w->pool = ResourcePool(resources, impl_->names);
  WorkerSlot& ref = *w;
  impl_->workers.emplace(id, std::move(w));
  impl_->touch(ref);
  return Status::ok();
}

Status Scheduler::add_worker(WorkerId id, uint32_t cpus) {
  ResourceDescriptor d;
  if (cpus > 0) d.set(*parse_cpu_definition(std::to_string(cpus)));
  return add_worker(id, d);
}

std::vector<TaskKey> Scheduler::remove_worker(WorkerId id, int64_t now, bool lost) {
  Impl& m = *impl_;
  std::vector<TaskKey> back;
  WorkerSlot* w = m.find_worker(id);
  if (!w || !w->connected) return back;
  std::vector<Job*> failed_jobs;
  if (w->serves_job) {
    // A node of a multi-node task is gone: the task stops on all of them and runs again.
    Job& job = *w->serves_job;
    const uint32_t index = w->serves_index;
    TaskSlot& s = job.slots[index];
    WorkerSlot& root = *m.find_worker(s.worker);
    m.kills.push_back({root.id, {job.id, job.ids.id_at(index), s.instance}});
    const bool was_running = s.state == TaskState::kRunning;
    if (was_running) --root.running;
    m.release(root, job, index);  // frees every secondary, this one too
    if (!ended(s.state)) {
      if (was_running && lost && s.crashes < std::numeric_limits<uint16_t>::max()) ++s.crashes;
      if (was_running && lost && job.crash_limit > 0 && s.crashes >= job.crash_limit) {
        job.set_state(s, TaskState::kFailed);
        s.end_time = now;
        job.errors[index] = fmt::format(
            "A worker of this multi-node task was lost {} time(s); its crash limit ({}) is "
            "reached",
            s.crashes, job.crash_limit);
        m.crash_failures.push_back({job.id, job.ids.id_at(index), s.instance});
        m.abort_dependants(job, index, now);
        failed_jobs.push_back(&job);
      } else {
        if (was_running) job.set_state(s, TaskState::kWaiting);
        ++s.instance;
        s.start_time = 0;
        m.put_back(job, index);
        back.push_back({job.id, job.ids.id_at(index), s.instance});
      }
    }
  }
  for (const HeldTask& h : w->held) {
    Job& job = *h.job;
    m.free_secondaries(job, h.index);
    TaskSlot& s = job.slots[h.index];
    if (s.flags & kRetracting) m.retracting_cpus -= h.cpus;
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
        m.abort_dependants(job, h.index, now);
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
  w->queue.clear();
  w->queue.shrink_to_fit();
  w->held_cpus = w->queued_cpus = w->retracting_cpus = w->running = w->stuck = w->outside =
      w->multi_held = 0;
  w->connected = false;
  if (w->reserved_for) m.drop_reservation(*w->reserved_for);
  w->pool = ResourcePool(w->resources, m.names);
  for (Job* job : failed_jobs) {
    m.check_max_fails(*job, now);
    m.note_completion(*job);
  }
  return back;
}

// --- Jobs -------------------------------------------------------------------------------------

namespace {

// The spec's request, with "cpus" present.
Result<ResourceRequest> job_request(const JobSpec& spec) {
  if (spec.id == 0) return Error{"job id 0 is reserved"};
  ResourceRequest r = spec.resources;
  if (r.entries.empty()) {
    if (spec.cpus == 0) {
      return Error{fmt::format("job {} requests 0 CPUs: a task needs at least 1", spec.id)};
    }
    r.entries.push_back({std::string(kCpus), spec.cpus * kAmountUnit, AllocationPolicy::kCompact});
  }
  auto made = make_request(r.entries);
  if (!made) return Error{fmt::format("job {}: {}", spec.id, made.message())};
  for (const auto& e : made->entries) {
    if (e.policy != AllocationPolicy::kAll && e.amount == 0) {
      return Error{fmt::format("job {} requests 0 of '{}'", spec.id, e.name)};
    }
  }
  return made;
}

// The spec's dependencies as a graph over `ids`; null when it has none.
Result<std::unique_ptr<DepGraph>> job_graph(const JobSpec& spec, const TaskIdMap& ids) {
  std::unique_ptr<DepGraph> none;
  if (spec.deps.empty()) return none;
  std::vector<std::pair<uint32_t, uint32_t>> edges;
  std::vector<bool> listed(ids.size(), false);
  for (const TaskDeps& t : spec.deps) {
    std::optional<uint32_t> task = ids.index_of(t.id);
    if (!task) {
      return Error{fmt::format("job {}: dependencies are given for task {}, which it does not have",
                               spec.id, t.id)};
    }
    if (listed[*task]) {
      return Error{fmt::format("job {}: dependencies of task {} are given twice", spec.id, t.id)};
    }
    listed[*task] = true;
    for (TaskId dep : t.deps) {
      std::optional<uint32_t> d = ids.index_of(dep);
      if (!d) {
        return Error{fmt::format("job {}: task {} depends on task {}, which the job does not have",
                                 spec.id, t.id, dep)};
      }
      edges.emplace_back(*task, *d);
    }
  }
  if (edges.empty()) return none;
  auto graph = DepGraph::build(ids.size(), std::move(edges),
                               [&ids](uint32_t index) { return ids.id_at(index); });
  if (!graph) return Error{fmt::format("job {}: {}", spec.id, graph.message())};
  return graph;
}

}  // namespace

Status Scheduler::add_job(const JobSpec& spec) {
  if (impl_->jobs.contains(spec.id)) {
    return Status::error(fmt::format("job {} already exists: job ids are never reused", spec.id));
  }
  Result<ResourceRequest> request = job_request(spec);
  if (!request) return request.status();
  Result<TaskIdMap> ids = TaskIdMap::build(spec.task_ids);
  if (!ids) return Status::error(fmt::format("job {}: {}", spec.id, ids.message()));
  if (spec.nodes > 1) {  // whole workers
    request->entries = {{std::string(kCpus), 0, AllocationPolicy::kAll}};
  }
  Result<std::unique_ptr<DepGraph>> graph = job_graph(spec, *ids);
  if (!graph) return graph.status();
  const uint32_t cpus = whole_cpus(*request);
  auto job = std::make_unique<Job>(spec.id, cpus, spec.priority, std::move(ids).value());
  if (*graph) job->set_graph(std::move(graph).value());
  job->request = impl_->intern_request(*request);
  job->crash_limit = spec.crash_limit;
  job->max_fails = spec.max_fails;
  job->time_request_ms = spec.time_request_ms;
  job->nodes = std::max<uint32_t>(spec.nodes, 1);
  Job& ref = *job;
  impl_->jobs.emplace(spec.id, std::move(job));
  impl_->job_index.emplace(spec.id, &ref);
  impl_->ready_tasks += ref.ready();
  impl_->enter_ready(ref);
  return Status::ok();
}

Status Scheduler::validate_job(const JobSpec& spec) {
  Result<ResourceRequest> request = job_request(spec);
  if (!request) return request.status();
  Result<TaskIdMap> ids = TaskIdMap::build(spec.task_ids);
  if (!ids) return Status::error(fmt::format("job {}: {}", spec.id, ids.message()));
  Result<std::unique_ptr<DepGraph>> graph = job_graph(spec, *ids);
  if (!graph) return graph.status();
  return Status::ok();
}

std::vector<Assignment> Scheduler::cancel_job(JobId id, int64_t now) {
  std::vector<Assignment> kill;
  if (Job* job = impl_->find_job(id)) impl_->end_job(*job, TaskState::kCanceled, now, kill);
  return kill;
}

std::vector<Assignment> Scheduler::cancel_tasks(JobId id, const IdSet& tasks, int64_t now) {
  Impl& m = *impl_;
  std::vector<Assignment> kill;
  Job* job = m.find_job(id);
  if (!job) return kill;
  std::vector<uint32_t> canceled;
  bool was_queued = false;
  tasks.for_each([&](uint32_t t) {
    std::optional<uint32_t> index = job->ids.index_of(t);
    if (!index) return;
    TaskSlot& s = job->slots[*index];
    if (ended(s.state)) return;
    if (s.flags & kHeld) {
      WorkerSlot& w = *m.find_worker(s.worker);
      kill.push_back({w.id, {job->id, t, s.instance}});
      m.clear_retraction(w, s);
      if (s.state == TaskState::kRunning) --w.running;
    } else if (job->deps_done(*index)) {
      was_queued = true;
    }
    s.flags &= ~kOrphan;  // a worker claiming it later is told to kill it
    job->set_state(s, TaskState::kCanceled);
    s.end_time = now;
    canceled.push_back(*index);
  });
  if (was_queued) {
    // TODO(perf): O(size) for one task; a queue that skips ended tasks would make it O(1).
    m.ready_tasks -= job->ready();
    m.leave_ready(*job);
    job->rebuild_ready();
    m.ready_tasks += job->ready();
    m.enter_ready(*job);
  }
  for (uint32_t index : canceled) m.abort_dependants(*job, index, now);
  m.note_completion(*job);
  return kill;
}

Status Scheduler::remove_job(JobId id) {
  Impl& m = *impl_;
  Job* job = m.find_job(id);
  if (!job) return Status::error(fmt::format("job {} not found", id));
  if (!job->counts.complete()) {
    return Status::error(fmt::format("job {} is not complete: cancel it first", id));
  }
  for (const TaskSlot& s : job->slots) {
    if (s.flags & kHeld) {
      return Status::error(
          fmt::format("job {}: a worker has not yet reported the end of its canceled task(s)", id));
    }
  }
  for (auto& [wid, w] : m.workers) {
    if (w->serves_job == job) {
      return Status::error(fmt::format("job {}: a worker still serves one of its tasks", id));
    }
  }
  m.ready_tasks -= job->ready();
  m.leave_ready(*job);  // drops its reservations too
  m.completed.erase(id);
  std::erase(m.aborted_jobs, id);
  m.job_index.erase(id);
  m.jobs.erase(id);
  return Status::ok();
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
  impl_->clear_retraction(*h->w, *h->slot);  // too late to give it back
  impl_->place_started(*h->w, *h->job, h->index);
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

// --- Decisions --------------------------------------------------------------------------------

Decisions Scheduler::schedule(int64_t now) {
  Impl& m = *impl_;
  m.now = now;
  m.check_reservations();
  Decisions d;
  m.compact_lists();
  if (!m.ready.empty()) m.fill_multi_node(d);
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
  v.orphan = s.flags & kOrphan;
  if (s.state == TaskState::kFailed) {
    auto it = job.errors.find(index);
    if (it != job.errors.end()) v.error = &it->second;
  }
  if (s.state == TaskState::kAborted && job.graph) {
    auto it = job.graph->aborted_by.find(index);
    if (it != job.graph->aborted_by.end()) v.aborted_by = TaskRef{job.id, it->second};
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

std::optional<TaskKey> Scheduler::serving(WorkerId id) const {
  const WorkerSlot* w = impl_->find_worker(id);
  if (!w || !w->serves_job) return std::nullopt;
  const Job& job = *w->serves_job;
  return TaskKey{job.id, job.ids.id_at(w->serves_index), job.slots[w->serves_index].instance};
}

JobId Scheduler::reserved_for(WorkerId id) const {
  const WorkerSlot* w = impl_->find_worker(id);
  return w && w->reserved_for ? w->reserved_for->id : 0;
}

std::vector<WorkerFit> Scheduler::explain(JobId id, int64_t now) const {
  std::vector<WorkerFit> out;
  const Job* job = impl_->find_job(id);
  if (!job) return out;
  const PoolRequest& r = impl_->request_of(*job);
  for (const auto& [wid, holder] : impl_->workers) {
    const WorkerSlot& w = *holder;
    if (!w.connected) continue;
    WorkerFit fit;
    fit.worker = wid;
    fit.could_fit = w.pool.could_fit(r);
    fit.fits_now = w.pool.fits(r);
    if (!fit.fits_now) fit.reason = w.pool.why_not(r, impl_->names);
    if (job->nodes > 1) {
      fit.could_fit = true;
      fit.fits_now = w.wholly_idle();
      fit.reason = fit.fits_now ? "" : "busy: a multi-node task takes whole idle workers";
      if (fit.fits_now) {
        uint32_t idle_in_group = 0;
        for (const auto& [oid, other] : impl_->workers) {
          idle_in_group += other->wholly_idle() && other->group == w.group;
        }
        if (idle_in_group < job->nodes) {
          fit.fits_now = false;
          fit.reason =
              fmt::format("idle, but only {} of the {} workers it needs are idle in group '{}'",
                          idle_in_group, job->nodes, w.group);
        }
      }
    }
    if (!w.lives_for(*job, now)) {
      fit.fits_now = fit.could_fit = false;
      fit.reason =
          fmt::format("stops in {} s, before the task's time request of {} s",
                      std::max<int64_t>(0, (w.end_time - now) / 1000), job->time_request_ms / 1000);
    }
    if (fit.fits_now && Impl::reserved_against(w, *job) &&
        !impl_->leaves_room_for_reserved(w, *job)) {
      fit.fits_now = false;
      fit.reason =
          fmt::format("kept free for job {}, which waits for a bigger share", w.reserved_for->id);
    }
    out.push_back(std::move(fit));
  }
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.worker < b.worker; });
  return out;
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

void Scheduler::for_each_task_from(JobId id, TaskId from,
                                   const std::function<bool(const TaskView&)>& f) const {
  const Job* job = impl_->find_job(id);
  if (!job) return;
  const std::vector<IdRange>& ranges = job->ids.ranges();
  auto r = std::lower_bound(ranges.begin(), ranges.end(), from,
                            [](const IdRange& range, TaskId id) { return range.end < id; });
  for (; r != ranges.end(); ++r) {
    uint64_t t = r->start;
    if (from > r->start) t += (uint64_t{from} - r->start + r->step - 1) / r->step * r->step;
    uint32_t index = job->ids.first_index(static_cast<size_t>(r - ranges.begin())) +
                     static_cast<uint32_t>((t - r->start) / r->step);
    for (; t <= r->end; t += r->step) {
      if (!f(make_view(*job, index++, static_cast<TaskId>(t)))) return;
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

uint64_t Scheduler::dependency_count(JobId id) const {
  const Job* job = impl_->find_job(id);
  return job && job->graph ? job->graph->edges() : 0;
}

namespace {

// The dependencies of the task in increasing id order, those that finished too unless
// `unfinished_only`.
std::vector<TaskId> task_deps(const Job* job, TaskId task, bool unfinished_only) {
  std::vector<TaskId> out;
  if (!job || !job->graph) return out;
  std::optional<uint32_t> index = job->ids.index_of(task);
  if (!index) return out;
  const DepGraph& g = *job->graph;
  for (uint32_t k = g.dep_begin[*index]; k < g.dep_begin[*index + 1]; ++k) {
    const uint32_t d = g.deps[k];
    if (unfinished_only && job->slots[d].state == TaskState::kFinished) continue;
    out.push_back(job->ids.id_at(d));  // indices increase with ids
  }
  return out;
}

}  // namespace

std::vector<TaskId> Scheduler::dependencies(JobId job, TaskId task) const {
  return task_deps(impl_->find_job(job), task, false);
}

std::vector<TaskId> Scheduler::unfinished_dependencies(JobId job, TaskId task) const {
  return task_deps(impl_->find_job(job), task, true);
}

uint32_t Scheduler::crash_count(JobId job_id, TaskId task) const {
  const Job* job = impl_->find_job(job_id);
  if (!job) return 0;
  std::optional<uint32_t> index = job->ids.index_of(task);
  return index ? job->slots[*index].crashes : 0;
}

}  // namespace hq::sched
