// The invariant checker (Scheduler::check_invariants): O(size), for tests.

#include "scheduler/scheduler.h"

#include <algorithm>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "scheduler/impl.h"

namespace hq::sched {

void Scheduler::check_invariants() const { impl_->check(); }

#define HQ_SCHED_CHECK(cond, ...)                            \
  do {                                                       \
    if (!(cond)) invariant_failed(fmt::format(__VA_ARGS__)); \
  } while (0)

// The job-wide graph's structure, its pending counters and its abort causes.
static void check_graph(const UserJob& job) {
  const DepGraph& g = *job.graph;
  const JobId id = job.id;
  const uint32_t n = job.size();
  auto state = [&job](uint32_t global) {
    UserJob::Loc at = job.at(global);
    return at.part->tasks.get(at.index).state;
  };
  HQ_SCHED_CHECK(g.size() == n && g.dep_begin.size() == n + 1 && g.dependant_begin.size() == n + 1,
                 "job {}: graph of {} tasks for {} slots", id, g.size(), n);
  HQ_SCHED_CHECK(g.dep_begin[0] == 0 && g.dep_begin[n] == g.deps.size() &&
                     g.dependant_begin[0] == 0 && g.dependant_begin[n] == g.dependants.size() &&
                     g.deps.size() == g.dependants.size(),
                 "job {}: graph offsets do not cover its {} dependencies", id, g.deps.size());
  // Each edge once each way: count (task, dep) pairs from both lists.
  std::vector<uint32_t> seen_as_dependant(n, 0);
  for (uint32_t i = 0; i < n; ++i) {
    HQ_SCHED_CHECK(
        g.dep_begin[i] <= g.dep_begin[i + 1] && g.dependant_begin[i] <= g.dependant_begin[i + 1],
        "job {} task #{}: decreasing graph offsets", id, i);
    uint32_t unfinished = 0;
    for (uint32_t k = g.dep_begin[i]; k < g.dep_begin[i + 1]; ++k) {
      const uint32_t d = g.deps[k];
      HQ_SCHED_CHECK(d < n && d != i && (k == g.dep_begin[i] || g.deps[k - 1] < d),
                     "job {} task #{}: bad dependency list", id, i);
      const bool back = std::binary_search(g.dependants.begin() + g.dependant_begin[d],
                                           g.dependants.begin() + g.dependant_begin[d + 1], i);
      HQ_SCHED_CHECK(back, "job {} task #{}: dependency #{} does not list it as a dependant", id, i,
                     d);
      ++seen_as_dependant[d];
      unfinished += state(d) != TaskState::kFinished;
    }
    HQ_SCHED_CHECK(g.pending[i] == unfinished,
                   "job {} task #{}: pending counter {} but {} dependencies unfinished", id, i,
                   g.pending[i], unfinished);
  }
  for (uint32_t i = 0; i < n; ++i) {
    HQ_SCHED_CHECK(seen_as_dependant[i] == g.dependant_begin[i + 1] - g.dependant_begin[i],
                   "job {} task #{}: lists {} dependants, {} depend on it", id, i,
                   g.dependant_begin[i + 1] - g.dependant_begin[i], seen_as_dependant[i]);
  }
  for (const auto& [index, cause] : g.aborted_by) {
    HQ_SCHED_CHECK(index < n && state(index) == TaskState::kAborted,
                   "job {} task #{}: an abort cause for a task not aborted", id, index);
    std::optional<UserJob::Loc> c = job.find(cause);
    HQ_SCHED_CHECK(
        c && c->part->base + c->index != index && ended(c->part->tasks.get(c->index).state) &&
            c->part->tasks.get(c->index).state != TaskState::kFinished,
        "job {} task #{}: aborted by task {}, which did not end unfinished", id, index, cause);
  }
}

// The parts of a job: contiguous, with disjoint ids that find() maps back, counts that add up.
static void check_parts(const UserJob& job) {
  const JobId id = job.id;
  uint32_t base = 0;
  TaskCounts sum;
  std::vector<TaskId> all;
  for (size_t k = 0; k < job.parts.size(); ++k) {
    const Job& p = *job.parts[k];
    HQ_SCHED_CHECK(&p.owner == &job && p.id == id && p.part == k && p.base == base,
                   "job {} part {}: owner, number or base {} wrong", id, k, p.base);
    HQ_SCHED_CHECK(p.size() > 0, "job {} part {}: empty", id, k);
    HQ_SCHED_CHECK(!p.cursor || (job.parts.size() == 1 && !job.graph && !job.open),
                   "job {} part {}: a cursor in a job with several parts, a graph, or open", id, k);
    base += p.size();
    for (int st = 0; st < 6; ++st) sum.by_state[st] += p.counts.by_state[st];
    for (uint32_t i = 0; i < p.size(); ++i) {
      const TaskId t = p.ids.id_at(i);
      std::optional<UserJob::Loc> at = job.find(t);
      HQ_SCHED_CHECK(at && at->part == &p && at->index == i,
                     "job {} task {}: not found where it is (part {} #{})", id, t, k, i);
      HQ_SCHED_CHECK(job.at(p.base + i).part == &p, "job {} task {}: job-wide index astray", id, t);
      if (job.parts.size() > 1) all.push_back(t);
    }
  }
  std::sort(all.begin(), all.end());
  HQ_SCHED_CHECK(std::adjacent_find(all.begin(), all.end()) == all.end(),
                 "job {}: a task id is in two parts", id);
  for (int st = 0; st < 6; ++st) {
    HQ_SCHED_CHECK(sum.by_state[st] == job.counts.by_state[st],
                   "job {}: {} tasks counted {} but its parts hold {}", id,
                   to_string(static_cast<TaskState>(st)), job.counts.by_state[st],
                   sum.by_state[st]);
  }
  if (job.graph) check_graph(job);
}

void Scheduler::Impl::check() const {
  uint64_t total_ready = 0;
  size_t jobs_in_ready = 0;
  for (const auto& [id, owner] : jobs) {
    HQ_SCHED_CHECK(owner->id == id && find_job(id) == owner.get(), "job {} is filed under id {}",
                   owner->id, id);
    check_parts(*owner);
    HQ_SCHED_CHECK(owner->completion_noted == owner->done(),
                   "job {}: completion {}noted but it is {}done", id,
                   owner->completion_noted ? "" : "not ", owner->done() ? "" : "not ");
    HQ_SCHED_CHECK(!completed.contains(id) || owner->completion_noted,
                   "job {}: listed complete without the note", id);
  }
  for (const auto& [job_id, owner] : jobs) {
    for (const auto& part : owner->parts) {
      const Job& job = *part;
      const JobId id = job_id;
      job.check_queue();
      HQ_SCHED_CHECK(job.ids.size() == job.size(), "job {}: {} ids but {} slots", id,
                     job.ids.size(), job.size());
      const std::string table = job.tasks.check();
      HQ_SCHED_CHECK(table.empty(), "job {} part {}: {}", id, job.part, table);
      TaskCounts recount;
      uint32_t unheld_waiting_before_fresh = 0;
      for (uint32_t i = 0; i < job.size(); ++i) {
        const TaskSlot s = job.tasks.get(i);
        ++recount.by_state[static_cast<int>(s.state)];
        const bool held = s.flags & kHeld;
        HQ_SCHED_CHECK((s.flags & ~(kHeld | kRetracting | kPlaced | kOutside | kOrphan)) == 0,
                       "job {} task #{}: bad flags {}", id, i, s.flags);
        const bool orphan = s.flags & kOrphan;
        HQ_SCHED_CHECK(!orphan || (s.flags == kOrphan && !ended(s.state) && job.deps_done(i)),
                       "job {} task #{}: an orphan {}, flags {}", id, i, to_string(s.state),
                       s.flags);
        HQ_SCHED_CHECK(!(s.flags & kRetracting) || (held && s.state == TaskState::kWaiting),
                       "job {} task #{}: retracting but not held and queued", id, i);
        HQ_SCHED_CHECK(s.state != TaskState::kRunning || held || orphan,
                       "job {} task #{}: running, not held", id, i);
        HQ_SCHED_CHECK(!held || (s.state != TaskState::kFinished && s.state != TaskState::kFailed),
                       "job {} task #{}: held after it finished or failed", id, i);
        HQ_SCHED_CHECK(s.state != TaskState::kFailed || job.errors.contains(i),
                       "job {} task #{}: failed without an error", id, i);
        if (i >= job.fresh_begin()) {
          HQ_SCHED_CHECK(s.state == TaskState::kWaiting && s.flags == 0 && s.instance == 0,
                         "job {} task #{}: past the fresh cursor but not a fresh waiting task", id,
                         i);
        } else if (s.state == TaskState::kWaiting && !held && !orphan && job.deps_done(i)) {
          ++unheld_waiting_before_fresh;
        }
        HQ_SCHED_CHECK(
            job.deps_done(i) || (!held && s.state != TaskState::kRunning &&
                                 s.state != TaskState::kFinished && s.state != TaskState::kFailed),
            "job {} task #{}: {}{} with {} unfinished dependencies", id, i, to_string(s.state),
            held ? " and held" : "", job.owner.graph->pending[job.base + i]);
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
        HQ_SCHED_CHECK(i < job.fresh_begin() && job.tasks.get(i).state == TaskState::kWaiting &&
                           job.tasks.get(i).flags == 0 && job.deps_done(i),
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
      }
      total_ready += job.ready();
    }
  }
  HQ_SCHED_CHECK(job_index.size() == jobs.size(), "job index holds {} jobs, not {}",
                 job_index.size(), jobs.size());
  HQ_SCHED_CHECK(jobs_in_ready == ready.size(), "ready set holds {} jobs, {} expected",
                 ready.size(), jobs_in_ready);
  HQ_SCHED_CHECK(total_ready == ready_tasks, "{} ready tasks counted, {} found", ready_tasks,
                 total_ready);
  for (const auto& c : completed) {
    HQ_SCHED_CHECK(jobs.contains(c), "completed job {} is unknown", c);
  }

  for (const auto& [id, owner] : jobs) {
    for (const auto& part : owner->parts) {
      const Job& job = *part;
      HQ_SCHED_CHECK(!job.reservation || (job.reservation->reserved_for == &job &&
                                          job.node_reservations.empty() && job.in_ready_set),
                     "job {}: its reservation does not point back", id);
      for (const WorkerSlot* w : job.node_reservations) {
        HQ_SCHED_CHECK(w->reserved_for == &job && job.in_ready_set && job.nodes > 1,
                       "job {}: a node reservation does not point back", id);
      }
    }
  }
  uint64_t total_retracting = 0;
  std::map<std::pair<const Job*, uint32_t>, uint32_t> serving;
  std::vector<std::pair<const Job*, uint32_t>> held_multi;
  uint32_t multi_ready = 0;
  for (const Job* job : ready) multi_ready += job->nodes > 1;
  HQ_SCHED_CHECK(multi_ready == multi_node_ready, "{} multi-node jobs ready, {} counted",
                 multi_ready, multi_node_ready);
  size_t free_flags = 0, overloaded_flags = 0;
  for (const auto& [id, holder] : workers) {
    const WorkerSlot& w = *holder;
    HQ_SCHED_CHECK(w.id == id, "worker {} is filed under id {}", w.id, id);
    HQ_SCHED_CHECK(w.base_limit == worker_limit(w.cpus, config.queue_factor) &&
                       w.limit == worker_limit(w.cpus, std::max(config.queue_factor,
                                                                config.short_task_queue_factor)),
                   "worker {}: limits {} and {} are stale", id, w.base_limit, w.limit);
    uint64_t cpus = 0, retracting = 0, queued = 0;
    uint32_t running = 0, outside = 0;
    std::vector<ResourceAmount> used(names.size(), 0);
    std::map<std::pair<uint32_t, uint32_t>, ResourceAmount> unit_used;  // by (resource, unit)
    for (size_t k = 0; k < w.held.size(); ++k) {
      const HeldTask& h = w.held[k];
      const TaskSlot s = h.job->tasks.get(h.index);
      HQ_SCHED_CHECK((s.flags & kHeld) && s.worker == id && s.held_pos == k,
                     "worker {}: held entry {} (job {} task #{}) does not name it", id, k,
                     h.job->id, h.index);
      HQ_SCHED_CHECK(find_job(h.job->id) == &h.job->owner &&
                         h.job->part < h.job->owner.parts.size() &&
                         h.job->owner.parts[h.job->part].get() == h.job,
                     "worker {}: holds a task of a stale job", id);
      HQ_SCHED_CHECK(h.variant == 0 || h.variant < h.job->variants.size(),
                     "worker {}: held entry {} has variant {} of {}", id, k, h.variant,
                     h.job->variants.size());
      HQ_SCHED_CHECK(h.cpus == w.cost(*h.job, h.variant),
                     "worker {}: held entry {} costs {} CPUs, not {}", id, k, h.cpus,
                     w.cost(*h.job, h.variant));
      cpus += h.cpus;
      if (s.flags & kRetracting) retracting += h.cpus;
      if (s.state == TaskState::kRunning) ++running;
      const bool in_queue = std::any_of(w.queue.begin(), w.queue.end(), [&](const QueuedTask& q) {
        return q.job == h.job && q.index == h.index;
      });
      HQ_SCHED_CHECK(in_queue == !(s.flags & (kPlaced | kOutside)),
                     "worker {}: held entry {} is {} but {} its queue", id, k,
                     (s.flags & kPlaced) ? "placed" : "not placed", in_queue ? "in" : "not in");
      HQ_SCHED_CHECK((s.flags & kPlaced) || h.alloc.empty(),
                     "worker {}: held entry {} has an allocation but is not placed", id, k);
      HQ_SCHED_CHECK(!(s.flags & kRetracting) || in_queue,
                     "worker {}: held entry {} is retracting but not queued", id, k);
      if (in_queue) queued += h.cpus;
      HQ_SCHED_CHECK(s.state != TaskState::kRunning || (s.flags & (kPlaced | kOutside)),
                     "worker {}: held entry {} runs without a place in the pool", id, k);
      if (s.flags & kOutside) {
        ++outside;
        HQ_SCHED_CHECK(s.state != TaskState::kWaiting && !(s.flags & kPlaced) && !in_queue,
                       "worker {}: held entry {} is outside the pool but not running alone", id, k);
      }
      // An allocation is whole units plus at most one share of one more, per resource.
      std::map<uint32_t, uint32_t> shares;
      std::set<std::pair<uint32_t, uint32_t>> units;
      for (const AllocationEntry& a : h.alloc) {
        used[a.resource] += a.amount;
        if (a.unit == kSumUnit) continue;
        HQ_SCHED_CHECK(a.amount > 0 && a.amount <= kAmountUnit,
                       "worker {}: held entry {} takes {} of one unit of {}", id, k,
                       format_amount(a.amount), names.name(a.resource));
        HQ_SCHED_CHECK(units.emplace(a.resource, a.unit).second,
                       "worker {}: held entry {} takes unit {} of {} twice", id, k, a.unit,
                       names.name(a.resource));
        if (a.amount < kAmountUnit) {
          HQ_SCHED_CHECK(++shares[a.resource] == 1,
                         "worker {}: held entry {} shares more than one unit of {}", id, k,
                         names.name(a.resource));
        }
        unit_used[{a.resource, a.unit}] += a.amount;
      }
    }
    for (uint32_t r = 0; r < names.size(); ++r) {
      for (uint32_t u = 0; u < w.pool.units(r); ++u) {
        auto it = unit_used.find({r, u});
        const ResourceAmount taken = it == unit_used.end() ? 0 : it->second;
        HQ_SCHED_CHECK(w.pool.unit_free(r, u) + taken == kAmountUnit,
                       "worker {}: unit {} of {} has {} free, but {} of it is allocated", id, u,
                       names.name(r), format_amount(w.pool.unit_free(r, u)), format_amount(taken));
      }
    }
    HQ_SCHED_CHECK(cpus == w.held_cpus, "worker {}: holds {} CPUs but counts {}", id, cpus,
                   w.held_cpus);
    HQ_SCHED_CHECK(retracting == w.retracting_cpus, "worker {}: retracting {} CPUs but counts {}",
                   id, retracting, w.retracting_cpus);
    HQ_SCHED_CHECK(running == w.running, "worker {}: runs {} tasks but counts {}", id, running,
                   w.running);
    HQ_SCHED_CHECK(outside == w.outside, "worker {}: {} tasks outside its pool, counts {}", id,
                   outside, w.outside);
    HQ_SCHED_CHECK(queued == w.queued_cpus && w.queue.size() <= w.held.size(),
                   "worker {}: queues {} CPUs but counts {}", id, queued, w.queued_cpus);
    for (uint32_t r = 0; r < names.size(); ++r) {
      HQ_SCHED_CHECK(w.pool.free_amount(r) + used[r] == w.pool.total_amount(r),
                     "worker {}: {} free of {} is {}, but {} of {} is allocated", id, names.name(r),
                     format_amount(w.pool.total_amount(r)), format_amount(w.pool.free_amount(r)),
                     format_amount(used[r]), names.name(r));
    }
    if (w.serves_job) {
      const TaskSlot s = w.serves_job->tasks.get(w.serves_index);
      const WorkerSlot* root = find_worker(s.worker);
      HQ_SCHED_CHECK(w.connected && w.held.empty() && w.serves_job->nodes > 1 &&
                         (s.flags & kHeld) && root && root != &w && root->connected &&
                         root->group == w.group,
                     "worker {}: serves job {} task #{}, which no worker of its group holds", id,
                     w.serves_job->id, w.serves_index);
      ++serving[{w.serves_job, w.serves_index}];
    }
    uint32_t multi = 0;
    for (const HeldTask& h : w.held) {
      if (h.job->nodes > 1) held_multi.push_back({h.job, h.index}), ++multi;
    }
    HQ_SCHED_CHECK(multi == w.multi_held, "worker {}: holds {} multi-node tasks, counts {}", id,
                   multi, w.multi_held);
    HQ_SCHED_CHECK(
        !w.reserved_for || ((w.reserved_for->reservation == &w ||
                             std::count(w.reserved_for->node_reservations.begin(),
                                        w.reserved_for->node_reservations.end(), &w) == 1) &&
                            w.connected && w.reserved_for->in_ready_set),
        "worker {}: a stale reservation", id);
    HQ_SCHED_CHECK(w.held_cpus <= w.limit, "worker {}: holds {} CPUs over its limit {}", id,
                   w.held_cpus, w.limit);
    total_retracting += retracting;
    if (!w.connected) {
      HQ_SCHED_CHECK(w.held.empty() && w.stuck == 0, "removed worker {} still holds tasks", id);
      continue;
    }
    HQ_SCHED_CHECK(w.stuck == w.queued_cpus - w.retracting_cpus, "worker {}: stale stuck", id);
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
  for (const auto& task : held_multi) {
    auto it = serving.find(task);
    const uint32_t n = it == serving.end() ? 0 : it->second;
    HQ_SCHED_CHECK(n + 1 == task.first->nodes || ended(task.first->tasks.get(task.second).state),
                   "job {} task #{}: {} secondary nodes, not {}", task.first->id, task.second, n,
                   task.first->nodes - 1);
  }
  HQ_SCHED_CHECK(serving.size() <= held_multi.size(), "a worker serves a task nobody holds");
  HQ_SCHED_CHECK(total_retracting == retracting_cpus, "retracting {} CPUs but counts {}",
                 total_retracting, retracting_cpus);
}

#undef HQ_SCHED_CHECK

}  // namespace hq::sched
