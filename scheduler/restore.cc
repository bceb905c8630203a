// Rebuilding the scheduler from the journal's history (Scheduler::restore_*).

#include "scheduler/scheduler.h"

#include <algorithm>
#include <optional>
#include <string>
#include <utility>

#include <fmt/format.h>

#include "scheduler/impl.h"

namespace hq::sched {

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
  return job && !job->graph ? job->fresh_begin() : 0;
}

namespace {

// Whether every dependency of the task has finished, from the states alone (restore: the
// pending counters are rebuilt at the end).
bool deps_finished(const Job& job, uint32_t index) {
  const DepGraph& g = *job.graph;
  for (uint32_t k = g.dep_begin[index]; k < g.dep_begin[index + 1]; ++k) {
    if (job.slots[g.deps[k]].state != TaskState::kFinished) return false;
  }
  return true;
}

// Calls fn(slot, index) for every task of the job that may be running on a worker of a server
// that stopped: running ones, orphans of an earlier restart, and waiting ones that may have been
// handed out (within the job's reservation; in a graph job, those whose dependencies had all
// finished, as graph jobs have no reservation). Then the reservation starts anew.
template <typename F>
void for_each_maybe_running(Job& job, F fn) {
  if (job.counts.complete()) {
    job.reserved = 0;
    return;
  }
  if (job.graph) {
    for (uint32_t i = 0; i < job.size(); ++i) {
      TaskSlot& s = job.slots[i];
      const bool maybe_ran = s.state == TaskState::kRunning || (s.flags & kOrphan) ||
                             (s.state == TaskState::kWaiting && deps_finished(job, i));
      if (maybe_ran) fn(s, i);
    }
    job.reserved = 0;
    return;
  }
  const uint32_t reserved = std::min(job.reserved, job.size());
  // TODO(perf): O(size) at every restart in the history; orphans of earlier restarts may lie
  // anywhere below their run's reservation, so the walk cannot stop at this one's.
  for (uint32_t i = 0; i < job.size(); ++i) {
    TaskSlot& s = job.slots[i];
    const bool maybe_ran = s.state == TaskState::kRunning || (s.flags & kOrphan) ||
                           (s.state == TaskState::kWaiting && i < reserved);
    if (maybe_ran) fn(s, i);
  }
  job.reserved = 0;
}

}  // namespace

uint64_t Scheduler::restore_restart() {
  uint64_t back = 0;
  for (auto& [id, holder] : impl_->jobs) {
    Job& job = *holder;
    for_each_maybe_running(job, [&](TaskSlot& s, uint32_t) {
      if (s.state == TaskState::kRunning) job.set_state(s, TaskState::kWaiting);
      s.flags &= ~kOrphan;
      ++s.instance;
      s.start_time = 0;
      ++back;
    });
  }
  return back;
}

uint64_t Scheduler::restore_orphans() {
  uint64_t orphans = 0;
  for (auto& [id, holder] : impl_->jobs) {
    Job& job = *holder;
    for_each_maybe_running(job, [&](TaskSlot& s, uint32_t) {
      s.flags |= kOrphan;
      ++orphans;
    });
  }
  return orphans;
}

bool Scheduler::restore_reattached(TaskKey key, WorkerId worker, int64_t time) {
  std::optional<Found> f = find_task(impl_->job_index, key);
  if (!f || !(f->slot->flags & kOrphan) || f->slot->instance != key.instance) return false;
  f->slot->flags &= ~kOrphan;
  return restore_started(key, worker, time);
}

uint64_t Scheduler::restore_reattach_ended() {
  uint64_t back = 0;
  for (auto& [id, holder] : impl_->jobs) {
    Job& job = *holder;
    for (TaskSlot& s : job.slots) {
      if (!(s.flags & kOrphan)) continue;
      if (s.state == TaskState::kRunning) job.set_state(s, TaskState::kWaiting);
      s.flags &= ~kOrphan;
      ++s.instance;
      s.start_time = 0;
      ++back;
    }
  }
  return back;
}

uint64_t Scheduler::finish_restore(bool reattach) {
  Impl& m = *impl_;
  const uint64_t back = reattach ? restore_orphans() : restore_restart();
  for (auto& [id, holder] : m.jobs) {
    Job& job = *holder;
    m.ready_tasks -= job.ready();
    m.leave_ready(job);
    if (job.graph) {
      // Pending counters from the restored states, then what the journal implies without
      // records of its own: the dependants of tasks that ended unfinished are aborted, at that
      // end's time.
      DepGraph& g = *job.graph;
      g.aborted_by.clear();
      for (uint32_t i = 0; i < job.size(); ++i) {
        g.pending[i] = 0;
        for (uint32_t k = g.dep_begin[i]; k < g.dep_begin[i + 1]; ++k) {
          g.pending[i] += job.slots[g.deps[k]].state != TaskState::kFinished;
        }
      }
      for (uint32_t i = 0; i < job.size(); ++i) {
        const TaskSlot& s = job.slots[i];
        if (ended(s.state) && s.state != TaskState::kFinished) {
          m.abort_dependants(job, i, s.end_time);
        }
      }
    }
    job.rebuild_ready();
    m.ready_tasks += job.ready();
    m.enter_ready(job);
    // Completed before the restart: nothing to report now.
    if (job.counts.complete()) job.completion_noted = true;
    m.completed.erase(id);
  }
  return back;
}

}  // namespace hq::sched
