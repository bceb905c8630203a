#include "scheduler/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <queue>
#include <set>
#include <tuple>
#include <unordered_set>
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
  spec.variants = job.body.variants;
  spec.open = false;
  if (!job.tasks.empty()) {
    // Tasks grouped into parts by their scheduling parameters, in order of first appearance.
    using Key = std::tuple<std::string, uint64_t, uint32_t, int32_t, uint32_t, std::string>;
    std::map<Key, size_t> index;
    std::vector<IdSetBuilder> ids;
    for (const GraphTaskSpec& t : job.tasks) {
      const int32_t priority = t.own_params ? t.priority : job.priority;
      const uint32_t crash_limit = t.own_params ? t.crash_limit : job.crash_limit;
      const uint32_t nodes = t.own_params && t.nodes ? t.nodes : job.nodes;
      std::string variants;
      for (const ResourceRequest& v : t.body.variants) variants += describe(v) + ";";
      Key key{describe(t.body.resources), t.body.time_request_ms, nodes, priority, crash_limit,
              std::move(variants)};
      auto [it, added] = index.emplace(key, spec.parts.size());
      if (added) {
        spec.parts.push_back(PartSpec{{},
                                      t.body.cpus,
                                      priority,
                                      crash_limit,
                                      t.body.resources,
                                      t.body.time_request_ms,
                                      nodes,
                                      t.body.variants});
        ids.emplace_back();
      }
      ids[it->second].add(t.id);  // tasks are sorted by id
      if (!t.deps.empty()) spec.deps.push_back({t.id, t.deps});
    }
    for (size_t k = 0; k < ids.size(); ++k) spec.parts[k].task_ids = std::move(ids[k]).build();
  } else if (!job.submit_deps.empty()) {
    std::vector<TaskId> deps;
    job.submit_deps.for_each([&deps](uint32_t t) { deps.push_back(t); });
    job.task_ids.for_each([&](uint32_t t) { spec.deps.push_back({t, deps}); });
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
  w->base_limit = worker_limit(w->cpus, impl_->config.queue_factor);
  w->limit = worker_limit(
      w->cpus, std::max(impl_->config.queue_factor, impl_->config.short_task_queue_factor));
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
    TaskSlot& s = job.task(index);
    WorkerSlot& root = *m.find_worker(s.worker);
    m.kills.push_back({root.id, {job.id, job.ids.id_at(index), s.instance}});
    const bool was_running = s.state == TaskState::kRunning;
    if (was_running) --root.running;
    m.release(root, job, index);  // frees every secondary, this one too
    if (!ended(s.state)) {
      if (was_running && lost && s.crashes < std::numeric_limits<uint16_t>::max()) ++s.crashes;
      if (was_running && lost && job.crash_limit > 0 && s.crashes >= job.crash_limit) {
        job.set_state(index, s, TaskState::kFailed);
        s.end_time = now;
        job.errors[index] = fmt::format(
            "A worker of this multi-node task was lost {} time(s); its crash limit ({}) is "
            "reached",
            s.crashes, job.crash_limit);
        m.crash_failures.push_back({job.id, job.ids.id_at(index), s.instance});
        m.abort_dependants(job, index, now);
        failed_jobs.push_back(&job);
      } else {
        if (was_running) job.set_state(index, s, TaskState::kWaiting);
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
    TaskSlot& s = job.task(h.index);
    if (s.flags & kRetracting) m.retracting_cpus -= h.cpus;
    s.flags = 0;
    s.held_pos = 0;
    if (ended(s.state)) continue;  // canceled: nothing to run again
    if (s.state == TaskState::kRunning) {
      if (lost && s.crashes < std::numeric_limits<uint16_t>::max()) ++s.crashes;
      if (lost && job.crash_limit > 0 && s.crashes >= job.crash_limit) {
        job.set_state(h.index, s, TaskState::kFailed);
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
      job.set_state(h.index, s, TaskState::kWaiting);
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
    m.check_max_fails(job->owner, now);
    m.note_completion(job->owner);
  }
  return back;
}

// --- Jobs -------------------------------------------------------------------------------------

namespace {

// The parts the spec's tasks form (none for an open job submitted without tasks).
std::vector<PartSpec> parts_of(const JobSpec& spec) {
  if (!spec.parts.empty()) return spec.parts;
  if (spec.task_ids.empty() && spec.open) return {};
  return {PartSpec{spec.task_ids, spec.cpus, spec.priority, spec.crash_limit, spec.resources,
                   spec.time_request_ms, spec.nodes, spec.variants}};
}

// The part's request, with "cpus" present (all of them for a multi-node part).
Result<ResourceRequest> part_request(JobId id, const PartSpec& part) {
  if (id == 0) return Error{"job id 0 is reserved"};
  ResourceRequest r = part.resources;
  if (r.entries.empty()) {
    if (part.cpus == 0) {
      return Error{fmt::format("job {} requests 0 CPUs: a task needs at least 1", id)};
    }
    r.entries.push_back({std::string(kCpus), part.cpus * kAmountUnit, AllocationPolicy::kCompact});
  }
  auto made = make_request(r.entries);
  if (!made) return Error{fmt::format("job {}: {}", id, made.message())};
  for (const auto& e : made->entries) {
    if (e.policy != AllocationPolicy::kAll && e.amount == 0) {
      return Error{fmt::format("job {} requests 0 of '{}'", id, e.name)};
    }
  }
  if (part.nodes > 1) made->entries = {{std::string(kCpus), 0, AllocationPolicy::kAll}};
  return made;
}

// Up to this many colliding ids are named in an error.
constexpr size_t kNamedIds = 20;

// Appends to `out` (up to kNamedIds) the ids of range `r` that `map` holds.
void collisions(const IdRange& r, const TaskIdMap& map, std::vector<TaskId>& out) {
  for (const IdRange& e : map.ranges()) {
    if (e.end < r.start || e.start > r.end) continue;
    const uint64_t lo = std::max(e.start, r.start), hi = std::min(e.end, r.end);
    uint64_t t = r.start;
    if (lo > r.start) t += (lo - r.start + r.step - 1) / r.step * r.step;
    for (; t <= hi && out.size() < kNamedIds; t += r.step) {
      if ((t - e.start) % e.step == 0) out.push_back(static_cast<TaskId>(t));
    }
    if (out.size() >= kNamedIds) return;
  }
}

std::string name_ids(std::vector<TaskId> ids) {
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  IdSetBuilder b;
  for (TaskId t : ids) b.add(t);
  std::string text = std::move(b).build().to_string();
  return ids.size() >= kNamedIds ? text + " (and maybe more)" : text;
}

// The spec's parts, checked: requests, ids (disjoint among themselves and from the tasks of
// `existing`, when tasks are added to it).
Result<std::vector<PreparedPart>> prepare_parts(const JobSpec& spec,
                                                const std::vector<PartSpec>& parts,
                                                const UserJob* existing) {
  std::vector<PreparedPart> out;
  uint64_t base = existing ? existing->size() : 0;
  for (const PartSpec& p : parts) {
    Result<ResourceRequest> request = part_request(spec.id, p);
    if (!request) return request.error();
    std::vector<ResourceRequest> variants;
    if (p.variants.size() > 255) {
      return Error{
          fmt::format("job {}: {} resource variants; at most 255", spec.id, p.variants.size())};
    }
    // A multi-node part takes whole workers whatever its variants ask: it has none.
    if (p.variants.size() > 1 && p.nodes <= 1) {
      for (const ResourceRequest& v : p.variants) {
        PartSpec one = p;
        one.resources = v;
        Result<ResourceRequest> made = part_request(spec.id, one);
        if (!made) return made.error();
        variants.push_back(std::move(*made));
      }
      request = variants.front();
    }
    Result<TaskIdMap> ids = TaskIdMap::build(p.task_ids);
    if (!ids) return Error{fmt::format("job {}: {}", spec.id, ids.message())};
    std::vector<TaskId> taken;
    for (const IdRange& r : ids->ranges()) {
      if (existing) {
        for (const auto& e : existing->parts) collisions(r, e->ids, taken);
      }
      for (const PreparedPart& q : out) collisions(r, q.ids, taken);
    }
    if (!taken.empty()) {
      return Error{fmt::format("job {} already has task(s) {}: task ids of a job must not collide",
                               spec.id, name_ids(std::move(taken)))};
    }
    base += ids->size();
    if (base > std::numeric_limits<uint32_t>::max()) {
      return Error{fmt::format("job {}: a job holds at most {} tasks", spec.id,
                               std::numeric_limits<uint32_t>::max())};
    }
    const uint32_t first = static_cast<uint32_t>(base - ids->size());
    out.push_back(
        {&p, std::move(request).value(), std::move(variants), std::move(ids).value(), first});
  }
  return out;
}

// The spec's dependencies as (task, dependency) pairs of job-wide indices, over the tasks of
// `existing` and then the new parts.
Result<std::vector<std::pair<uint32_t, uint32_t>>> prepare_edges(
    const JobSpec& spec, const std::vector<PreparedPart>& parts, const UserJob* existing) {
  auto new_index = [&parts](TaskId t) -> std::optional<uint32_t> {
    for (const PreparedPart& p : parts) {
      if (std::optional<uint32_t> i = p.ids.index_of(t)) return p.base + *i;
    }
    return std::nullopt;
  };
  std::vector<std::pair<uint32_t, uint32_t>> edges;
  std::unordered_set<uint32_t> listed;
  for (const TaskDeps& t : spec.deps) {
    std::optional<uint32_t> task = new_index(t.id);
    if (!task) {
      return Error{fmt::format(
          "job {}: dependencies are given for task {}, which {}", spec.id, t.id,
          existing && existing->find(t.id) ? "was submitted before (dependencies come with a task)"
                                           : "it does not have")};
    }
    if (!listed.insert(*task).second) {
      return Error{fmt::format("job {}: dependencies of task {} are given twice", spec.id, t.id)};
    }
    for (TaskId dep : t.deps) {
      std::optional<uint32_t> d = new_index(dep);
      if (!d && existing) {
        if (std::optional<UserJob::Loc> at = existing->find(dep)) d = at->part->base + at->index;
      }
      if (!d) {
        return Error{fmt::format("job {}: task {} depends on task {}, which the job does not have",
                                 spec.id, t.id, dep)};
      }
      edges.emplace_back(*task, *d);
    }
  }
  return edges;
}

// The job-wide graph after adding `edges` (with the existing graph's own) over `n` tasks;
// null when there are none. Pending counters and abort causes are left to the caller.
Result<std::unique_ptr<DepGraph>> build_graph(const JobSpec& spec, const UserJob* existing,
                                              const std::vector<PreparedPart>& parts, uint32_t n,
                                              std::vector<std::pair<uint32_t, uint32_t>> edges) {
  std::unique_ptr<DepGraph> none;
  const DepGraph* old = existing ? existing->graph.get() : nullptr;
  if (edges.empty() && !old) return none;
  if (old) {
    for (uint32_t i = 0; i < old->size(); ++i) {
      for (uint32_t k = old->dep_begin[i]; k < old->dep_begin[i + 1]; ++k) {
        edges.emplace_back(i, old->deps[k]);
      }
    }
  }
  const uint32_t old_size = existing ? existing->size() : 0;
  auto id_of = [&](uint32_t index) -> TaskId {
    if (index < old_size) return existing->id_at(index);
    for (const PreparedPart& p : parts) {
      if (index < p.base + p.ids.size()) return p.ids.id_at(index - p.base);
    }
    return 0;
  };
  auto graph = DepGraph::build(n, std::move(edges), id_of);
  if (!graph) return Error{fmt::format("job {}: {}", spec.id, graph.message())};
  return graph;
}

}  // namespace

void Scheduler::Impl::add_parts(UserJob& owner, std::vector<PreparedPart>& parts,
                                std::unique_ptr<DepGraph> graph, bool cursor) {
  if (graph) {
    const DepGraph* old = owner.graph.get();
    if (old) graph->aborted_by = old->aborted_by;
    owner.graph = std::move(graph);
  }
  for (PreparedPart& p : parts) {
    const uint32_t cpus = whole_cpus(p.request);
    auto part = std::make_unique<Job>(owner, static_cast<uint32_t>(owner.parts.size()), p.base,
                                      cpus, p.spec->priority, std::move(p.ids), cursor);
    part->request = intern_request(p.request);
    part->pack_list = &to_pack;
    for (const ResourceRequest& v : p.variants) {
      part->variants.push_back(intern_request(v));
      part->variant_cpus.push_back(whole_cpus(v));
    }
    part->crash_limit = p.spec->crash_limit;
    part->time_request_ms = p.spec->time_request_ms;
    part->nodes = std::max<uint32_t>(p.spec->nodes, 1);
    owner.parts.push_back(std::move(part));
    owner.index_part(*owner.parts.back());
  }
  if (owner.graph) {
    // Pending counters from the states (the new tasks' dependencies may have ended already).
    DepGraph& g = *owner.graph;
    for (uint32_t i = 0; i < g.size(); ++i) {
      g.pending[i] = 0;
      for (uint32_t k = g.dep_begin[i]; k < g.dep_begin[i + 1]; ++k) {
        UserJob::Loc at = owner.at(g.deps[k]);
        g.pending[i] += at.part->tasks.get(at.index).state != TaskState::kFinished;
      }
    }
  }
  const size_t first_new = owner.parts.size() - parts.size();
  for (size_t k = first_new; k < owner.parts.size(); ++k) {
    Job& part = *owner.parts[k];
    if (!part.cursor) part.rebuild_ready();
    ready_tasks += part.ready();
    enter_ready(part);
  }
  if (owner.graph && first_new > 0) {
    // New tasks that depend on tasks which ended unfinished are aborted at once.
    const DepGraph& g = *owner.graph;
    const uint32_t old_size = owner.parts[first_new]->base;
    for (uint32_t d = 0; d < old_size; ++d) {
      UserJob::Loc at = owner.at(d);
      const TaskState st = at.part->tasks.get(at.index).state;
      if (!ended(st) || st == TaskState::kFinished) continue;
      if (g.dependant_begin[d + 1] == g.dependant_begin[d]) continue;
      if (g.dependants[g.dependant_begin[d + 1] - 1] < old_size) continue;  // none of them new
      abort_dependants(*at.part, at.index, now);
    }
  }
}

Status Scheduler::add_job(const JobSpec& spec) {
  Impl& m = *impl_;
  if (m.jobs.contains(spec.id)) {
    return Status::error(fmt::format("job {} already exists: job ids are never reused", spec.id));
  }
  if (spec.id == 0) return Status::error("job id 0 is reserved");
  const std::vector<PartSpec> specs = parts_of(spec);
  Result<std::vector<PreparedPart>> parts = prepare_parts(spec, specs, nullptr);
  if (!parts) return parts.status();
  Result<std::vector<std::pair<uint32_t, uint32_t>>> edges = prepare_edges(spec, *parts, nullptr);
  if (!edges) return edges.status();
  uint32_t n = 0;
  for (const PreparedPart& p : *parts) n += p.ids.size();
  Result<std::unique_ptr<DepGraph>> graph =
      build_graph(spec, nullptr, *parts, n, std::move(edges).value());
  if (!graph) return graph.status();
  auto job = std::make_unique<UserJob>(spec.id);
  job->max_fails = spec.max_fails;
  job->open = spec.open;
  UserJob& ref = *job;
  m.jobs.emplace(spec.id, std::move(job));
  m.job_index.emplace(spec.id, &ref);
  const bool cursor = !spec.open && parts->size() == 1 && !*graph;
  m.add_parts(ref, *parts, std::move(graph).value(), cursor);
  m.note_completion(ref);
  return Status::ok();
}

Status Scheduler::validate_job(const JobSpec& spec) {
  if (spec.id == 0) return Status::error("job id 0 is reserved");
  const std::vector<PartSpec> specs = parts_of(spec);
  Result<std::vector<PreparedPart>> parts = prepare_parts(spec, specs, nullptr);
  if (!parts) return parts.status();
  Result<std::vector<std::pair<uint32_t, uint32_t>>> edges = prepare_edges(spec, *parts, nullptr);
  if (!edges) return edges.status();
  uint32_t n = 0;
  for (const PreparedPart& p : *parts) n += p.ids.size();
  Result<std::unique_ptr<DepGraph>> graph =
      build_graph(spec, nullptr, *parts, n, std::move(edges).value());
  if (!graph) return graph.status();
  return Status::ok();
}

Status Scheduler::validate_tasks(const JobSpec& spec) const {
  const UserJob* job = impl_->find_job(spec.id);
  if (!job) return Status::error(fmt::format("job {} not found", spec.id));
  if (!job->open) {
    return Status::error(
        fmt::format("job {} is not open: tasks are added only to jobs made by `hq job open`, "
                    "until `hq job close`",
                    spec.id));
  }
  const std::vector<PartSpec> specs = parts_of(spec);
  if (specs.empty()) return Status::error(fmt::format("job {}: no tasks to add", spec.id));
  Result<std::vector<PreparedPart>> parts = prepare_parts(spec, specs, job);
  if (!parts) return parts.status();
  Result<std::vector<std::pair<uint32_t, uint32_t>>> edges = prepare_edges(spec, *parts, job);
  if (!edges) return edges.status();
  if (edges->empty() && !job->graph) return Status::ok();
  uint64_t n = job->size();
  for (const PreparedPart& p : *parts) n += p.ids.size();
  Result<std::unique_ptr<DepGraph>> graph =
      build_graph(spec, job, *parts, static_cast<uint32_t>(n), std::move(edges).value());
  return graph ? Status::ok() : graph.status();
}

Status Scheduler::add_tasks(const JobSpec& spec, int64_t now) {
  Impl& m = *impl_;
  if (Status st = validate_tasks(spec); !st) return st;
  UserJob& job = *m.find_job(spec.id);
  const std::vector<PartSpec> specs = parts_of(spec);
  Result<std::vector<PreparedPart>> parts = prepare_parts(spec, specs, &job);
  Result<std::vector<std::pair<uint32_t, uint32_t>>> edges = prepare_edges(spec, *parts, &job);
  uint32_t n = job.size();
  for (const PreparedPart& p : *parts) n += p.ids.size();
  Result<std::unique_ptr<DepGraph>> graph =
      build_graph(spec, &job, *parts, n, std::move(edges).value());
  m.now = now;
  m.add_parts(job, *parts, std::move(graph).value(), /*cursor=*/false);
  // New work: its completion is reported anew.
  job.completion_noted = false;
  m.completed.erase(job.id);
  m.note_completion(job);
  return Status::ok();
}

bool Scheduler::close_job(JobId id) {
  Impl& m = *impl_;
  UserJob* job = m.find_job(id);
  if (!job || !job->open) return false;
  job->open = false;
  // Complete while open, it was reported to those waiting for its current tasks: now it is
  // complete for everyone.
  job->completion_noted = false;
  m.completed.erase(id);
  m.note_completion(*job);
  return true;
}

bool Scheduler::job_open(JobId id) const {
  const UserJob* job = impl_->find_job(id);
  return job && job->open;
}

std::optional<TaskId> Scheduler::max_task_id(JobId id) const {
  const UserJob* job = impl_->find_job(id);
  if (!job) return std::nullopt;
  std::optional<TaskId> max;
  for (const auto& part : job->parts) {
    const TaskId last = part->ids.ranges().back().end;
    if (!max || last > *max) max = last;
  }
  return max;
}

std::vector<Assignment> Scheduler::cancel_job(JobId id, int64_t now) {
  std::vector<Assignment> kill;
  if (UserJob* job = impl_->find_job(id)) impl_->end_job(*job, TaskState::kCanceled, now, kill);
  return kill;
}

std::vector<Assignment> Scheduler::cancel_tasks(JobId id, const IdSet& tasks, int64_t now) {
  Impl& m = *impl_;
  std::vector<Assignment> kill;
  UserJob* owner = m.find_job(id);
  if (!owner) return kill;
  std::vector<UserJob::Loc> canceled;
  std::set<Job*> was_queued;
  tasks.for_each([&](uint32_t t) {
    std::optional<UserJob::Loc> at = owner->find(t);
    if (!at) return;
    Job* job = at->part;
    if (ended(job->tasks.get(at->index).state)) return;
    TaskSlot& s = job->task(at->index);
    if (s.flags & kHeld) {
      WorkerSlot& w = *m.find_worker(s.worker);
      kill.push_back({w.id, {job->id, t, s.instance}});
      m.clear_retraction(w, s);
      if (s.state == TaskState::kRunning) --w.running;
    } else if (job->deps_done(at->index)) {
      was_queued.insert(job);
    }
    s.flags &= ~kOrphan;  // a worker claiming it later is told to kill it
    job->set_state(at->index, s, TaskState::kCanceled);
    s.end_time = now;
    canceled.push_back(*at);
  });
  for (Job* job : was_queued) {
    // TODO(perf): O(size) for one task; a queue that skips ended tasks would make it O(1).
    m.ready_tasks -= job->ready();
    m.leave_ready(*job);
    job->rebuild_ready();
    m.ready_tasks += job->ready();
    m.enter_ready(*job);
  }
  for (const UserJob::Loc& at : canceled) m.abort_dependants(*at.part, at.index, now);
  m.note_completion(*owner);
  return kill;
}

Status Scheduler::remove_job(JobId id) {
  Impl& m = *impl_;
  UserJob* job = m.find_job(id);
  if (!job) return Status::error(fmt::format("job {} not found", id));
  if (job->open || !job->counts.complete()) {
    return Status::error(fmt::format("job {} is not complete: {} it first", id,
                                     job->open ? "close or cancel" : "cancel"));
  }
  for (const auto& part : job->parts) {
    for (uint32_t i = 0; i < part->size(); ++i) {
      if (part->tasks.get(i).flags & kHeld) {
        return Status::error(fmt::format(
            "job {}: a worker has not yet reported the end of its canceled task(s)", id));
      }
    }
    for (auto& [wid, w] : m.workers) {
      if (w->serves_job == part.get()) {
        return Status::error(fmt::format("job {}: a worker still serves one of its tasks", id));
      }
    }
  }
  for (const auto& part : job->parts) {
    m.ready_tasks -= part->ready();
    m.leave_ready(*part);  // drops its reservations too
  }
  m.completed.erase(id);
  std::erase(m.aborted_jobs, id);
  std::erase_if(m.to_pack, [id](const Job* part) { return part->id == id; });
  m.job_index.erase(id);
  m.jobs.erase(id);
  return Status::ok();
}

std::vector<Assignment> Scheduler::abort_job(JobId id, int64_t now) {
  std::vector<Assignment> kill;
  if (UserJob* job = impl_->find_job(id)) impl_->end_job(*job, TaskState::kAborted, now, kill);
  return kill;
}

// --- Worker reports ---------------------------------------------------------------------------

bool Scheduler::task_started(WorkerId worker, TaskKey key, int64_t time) {
  std::optional<Impl::Held> h = impl_->find_held(worker, key);
  if (!h || h->slot->state != TaskState::kWaiting) return false;
  impl_->clear_retraction(*h->w, *h->slot);  // too late to give it back
  impl_->place_started(*h->w, *h->job, h->index);
  h->job->set_state(h->index, *h->slot, TaskState::kRunning);
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
  m.pack_ended();
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
  const TaskSlot s = job.tasks.get(index);
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
  if (s.state == TaskState::kAborted && job.owner.graph) {
    const auto& causes = job.owner.graph->aborted_by;
    auto it = causes.find(job.base + index);
    if (it != causes.end()) v.aborted_by = TaskRef{job.id, it->second};
  }
  return v;
}

// Calls f(part, index, id) for the part's tasks with an id >= `from` in increasing id order,
// until f returns false; returns false when f did.
template <typename F>
bool walk_part(const Job& job, TaskId from, const F& f) {
  const std::vector<IdRange>& ranges = job.ids.ranges();
  auto r = std::lower_bound(ranges.begin(), ranges.end(), from,
                            [](const IdRange& range, TaskId id) { return range.end < id; });
  for (; r != ranges.end(); ++r) {
    uint64_t t = r->start;
    if (from > r->start) t += (uint64_t{from} - r->start + r->step - 1) / r->step * r->step;
    uint32_t index = job.ids.first_index(static_cast<size_t>(r - ranges.begin())) +
                     static_cast<uint32_t>((t - r->start) / r->step);
    for (; t <= r->end; t += r->step) {
      if (!f(job, index++, static_cast<TaskId>(t))) return false;
    }
  }
  return true;
}

// The same over every part of the job, merged in increasing id order.
template <typename F>
void walk_job(const UserJob& owner, TaskId from, const F& f) {
  if (owner.parts.size() == 1) {
    walk_part(*owner.parts[0], from, f);
    return;
  }
  // Each part's next task; the smallest id goes first. O(log parts) per task.
  struct Cursor {
    TaskId id;
    const Job* part;
    uint32_t index;
    bool operator>(const Cursor& o) const { return id > o.id; }
  };
  std::priority_queue<Cursor, std::vector<Cursor>, std::greater<>> heap;
  auto next_of = [](const Job& part, TaskId from_id) -> std::optional<Cursor> {
    std::optional<Cursor> out;
    walk_part(part, from_id, [&out](const Job& p, uint32_t index, TaskId id) {
      out = Cursor{id, &p, index};
      return false;
    });
    return out;
  };
  for (const auto& part : owner.parts) {
    if (auto c = next_of(*part, from)) heap.push(*c);
  }
  while (!heap.empty()) {
    Cursor c = heap.top();
    heap.pop();
    if (!f(*c.part, c.index, c.id)) return;
    if (c.index + 1 < c.part->size()) {
      heap.push(Cursor{c.part->ids.id_at(c.index + 1), c.part, c.index + 1});
    }
  }
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
  const UserJob* job = impl_->find_job(id);
  return job ? job->counts : TaskCounts{};
}

JobState Scheduler::job_state(JobId id) const {
  const UserJob* job = impl_->find_job(id);
  return job ? derive_job_state(job->counts, job->open) : derive_job_state(TaskCounts{});
}

uint32_t Scheduler::job_cpus(JobId id) const {
  const UserJob* job = impl_->find_job(id);
  return job && !job->parts.empty() ? job->parts[0]->cpus : 0;
}

std::optional<TaskKey> Scheduler::serving(WorkerId id) const {
  const WorkerSlot* w = impl_->find_worker(id);
  if (!w || !w->serves_job) return std::nullopt;
  const Job& job = *w->serves_job;
  return TaskKey{job.id, job.ids.id_at(w->serves_index), job.tasks.get(w->serves_index).instance};
}

JobId Scheduler::reserved_for(WorkerId id) const {
  const WorkerSlot* w = impl_->find_worker(id);
  return w && w->reserved_for ? w->reserved_for->id : 0;
}

std::vector<WorkerFit> Scheduler::explain(JobId id, int64_t now, std::optional<TaskId> task) const {
  std::vector<WorkerFit> out;
  const UserJob* owner = impl_->find_job(id);
  if (!owner || owner->parts.empty()) return out;
  const Job* job = owner->parts[0].get();
  if (task) {
    std::optional<UserJob::Loc> at = owner->find(*task);
    if (!at) return out;
    job = at->part;
  }
  const PoolRequest& r = impl_->request_of(*job);
  for (const auto& [wid, holder] : impl_->workers) {
    const WorkerSlot& w = *holder;
    if (!w.connected) continue;
    WorkerFit fit;
    fit.worker = wid;
    fit.could_fit = w.pool.could_fit(r);
    fit.fits_now = w.pool.fits(r);
    if (!fit.fits_now) fit.reason = w.pool.why_not(r, impl_->names);
    if (job->variants.size() > 1) {
      // Alternatives: it fits where any of them does, the first that fits chosen.
      fit.could_fit = fit.fits_now = false;
      std::string reasons;
      for (size_t k = 0; k < job->variants.size(); ++k) {
        const auto v = static_cast<uint8_t>(k);
        const PoolRequest& rv = impl_->request_of(*job, v);
        fit.could_fit = fit.could_fit || w.pool.could_fit(rv);
        if (!fit.fits_now && w.pool.fits(rv)) {
          fit.fits_now = true;
          fit.variant = v;
        }
        if (!w.pool.fits(rv)) {
          if (!reasons.empty()) reasons += "; ";
          reasons += fmt::format("variant {}: {}", k, w.pool.why_not(rv, impl_->names));
        }
      }
      fit.reason = fit.fits_now ? "" : reasons;
    }
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
        !impl_->leaves_room_for_reserved(w, *job, fit.variant)) {
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
  const UserJob* job = impl_->find_job(id);
  if (!job) return;
  walk_job(*job, 0, [&f](const Job& part, uint32_t index, TaskId t) {
    f(make_view(part, index, t));
    return true;
  });
}

void Scheduler::for_each_task_from(JobId id, TaskId from,
                                   const std::function<bool(const TaskView&)>& f) const {
  const UserJob* job = impl_->find_job(id);
  if (!job) return;
  walk_job(*job, from, [&f](const Job& part, uint32_t index, TaskId t) {
    return f(make_view(part, index, t));
  });
}

std::optional<TaskView> Scheduler::task(JobId job_id, TaskId task) const {
  const UserJob* job = impl_->find_job(job_id);
  if (!job) return std::nullopt;
  std::optional<UserJob::Loc> at = job->find(task);
  if (!at) return std::nullopt;
  return make_view(*at->part, at->index, task);
}

uint32_t Scheduler::held_tasks(WorkerId id) const {
  const WorkerSlot* w = impl_->find_worker(id);
  return w ? static_cast<uint32_t>(w->held.size()) : 0;
}

size_t Scheduler::task_record_bytes(JobId id) const {
  const UserJob* job = impl_->find_job(id);
  size_t n = 0;
  if (job) {
    for (const auto& part : job->parts) n += part->tasks.bytes();
  }
  return n;
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
  for (const HeldTask& h : w->held) n += h.job->tasks.get(h.index).state == TaskState::kWaiting;
  return n;
}

uint64_t Scheduler::dependency_count(JobId id) const {
  const UserJob* job = impl_->find_job(id);
  return job && job->graph ? job->graph->edges() : 0;
}

namespace {

// The dependencies of the task in increasing id order, those that finished too unless
// `unfinished_only`.
std::vector<TaskId> task_deps(const UserJob* job, TaskId task, bool unfinished_only) {
  std::vector<TaskId> out;
  if (!job || !job->graph) return out;
  std::optional<UserJob::Loc> at = job->find(task);
  if (!at) return out;
  const DepGraph& g = *job->graph;
  const uint32_t gi = at->part->base + at->index;
  for (uint32_t k = g.dep_begin[gi]; k < g.dep_begin[gi + 1]; ++k) {
    UserJob::Loc d = job->at(g.deps[k]);
    if (unfinished_only && d.part->tasks.get(d.index).state == TaskState::kFinished) continue;
    out.push_back(d.part->ids.id_at(d.index));
  }
  std::sort(out.begin(), out.end());  // parts interleave ids
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
  const UserJob* job = impl_->find_job(job_id);
  if (!job) return 0;
  std::optional<UserJob::Loc> at = job->find(task);
  return at ? at->part->tasks.get(at->index).crashes : 0;
}

}  // namespace hq::sched
