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

std::optional<Found> find_task(const std::unordered_map<JobId, UserJob*>& index, TaskKey key) {
  auto it = index.find(key.job);
  if (it == index.end()) return std::nullopt;
  std::optional<UserJob::Loc> at = it->second->find(key.task);
  if (!at) return std::nullopt;
  return Found{at->part, at->index, &at->part->task(at->index)};
}

}  // namespace

bool Scheduler::restore_started(TaskKey key, WorkerId worker, int64_t time) {
  std::optional<Found> f = find_task(impl_->job_index, key);
  if (!f) return false;
  TaskSlot& s = *f->slot;
  f->job->set_state(f->index, s, TaskState::kRunning);
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
  f->job->set_state(f->index, s, state);
  s.instance = key.instance;
  s.end_time = time;
  s.flags &= ~kOrphan;  // ended: no worker may claim it (as a cancel does live)
  if (worker != 0) s.worker = worker;
  if (state == TaskState::kFailed) {
    f->job->errors[f->index] = std::move(error);
  } else {
    f->job->errors.erase(f->index);
  }
  // Chunks whose tasks all ended are packed as the replay goes, not after it: a campaign's
  // history must not need 32 bytes a task to come back.
  impl_->pack_ended();
  return true;
}

bool Scheduler::restore_requeued(TaskKey key, uint32_t crashes) {
  std::optional<Found> f = find_task(impl_->job_index, key);
  if (!f) return false;
  TaskSlot& s = *f->slot;
  f->job->set_state(f->index, s, TaskState::kWaiting);
  s.instance = key.instance;
  s.crashes = static_cast<uint16_t>(std::min<uint32_t>(crashes, 0xffff));
  s.start_time = s.end_time = 0;
  f->job->errors.erase(f->index);
  return true;
}

void Scheduler::restore_reserved(JobId id, uint32_t tasks) {
  if (UserJob* job = impl_->find_job(id)) job->reserved = std::max(job->reserved, tasks);
}

uint32_t Scheduler::fresh_cursor(JobId id) const {
  const UserJob* job = impl_->find_job(id);
  return job && job->parts.size() == 1 && job->parts[0]->cursor ? job->parts[0]->fresh_begin() : 0;
}

namespace {

// Whether every dependency of the task (job-wide index) has finished, from the states alone
// (restore: the pending counters are rebuilt at the end).
bool deps_finished(const UserJob& job, uint32_t global) {
  if (!job.graph) return true;
  const DepGraph& g = *job.graph;
  for (uint32_t k = g.dep_begin[global]; k < g.dep_begin[global + 1]; ++k) {
    UserJob::Loc at = job.at(g.deps[k]);
    if (at.part->tasks.get(at.index).state != TaskState::kFinished) return false;
  }
  return true;
}

// Calls fn(part, slot, index) for every task of the job that may be running on a worker of a
// server that stopped: running ones, orphans of an earlier restart, and waiting ones that may
// have been handed out (within the job's reservation; in a part without a fresh cursor, those
// whose dependencies had all finished, as such parts have no reservation). Then the reservation
// starts anew.
template <typename F>
void for_each_maybe_running(UserJob& owner, F fn) {
  if (owner.counts.complete()) {
    owner.reserved = 0;
    return;
  }
  for (auto& part : owner.parts) {
    Job& job = *part;
    if (!job.cursor) {
      for (uint32_t i = 0; i < job.size(); ++i) {
        const TaskSlot s = job.tasks.get(i);
        const bool maybe_ran =
            s.state == TaskState::kRunning || (!ended(s.state) && (s.flags & kOrphan)) ||
            (s.state == TaskState::kWaiting && deps_finished(owner, job.base + i));
        if (maybe_ran) fn(job, job.task(i), i);
      }
      continue;
    }
    const uint32_t reserved = std::min(owner.reserved, job.size());
    // TODO(perf): O(size) at every restart in the history; orphans of earlier restarts may lie
    // anywhere below their run's reservation, so the walk cannot stop at this one's.
    for (uint32_t i = 0; i < job.size(); ++i) {
      const TaskSlot s = job.tasks.get(i);
      const bool maybe_ran = s.state == TaskState::kRunning ||
                             (!ended(s.state) && (s.flags & kOrphan)) ||
                             (s.state == TaskState::kWaiting && i < reserved);
      if (maybe_ran) fn(job, job.task(i), i);
    }
  }
  owner.reserved = 0;
}

}  // namespace

uint64_t Scheduler::restore_restart() {
  uint64_t back = 0;
  for (auto& [id, owner] : impl_->jobs) {
    for_each_maybe_running(*owner, [&](Job& job, TaskSlot& s, uint32_t i) {
      if (s.state == TaskState::kRunning) job.set_state(i, s, TaskState::kWaiting);
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
  for (auto& [id, owner] : impl_->jobs) {
    for_each_maybe_running(*owner, [&](Job&, TaskSlot& s, uint32_t) {
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
  for (auto& [id, owner] : impl_->jobs) {
    for (auto& part : owner->parts) {
      Job& job = *part;
      for (uint32_t i = 0; i < job.size(); ++i) {
        const TaskSlot now = job.tasks.get(i);
        if (!(now.flags & kOrphan) || ended(now.state)) continue;
        TaskSlot& s = job.task(i);
        if (s.state == TaskState::kRunning) job.set_state(i, s, TaskState::kWaiting);
        s.flags &= ~kOrphan;
        ++s.instance;
        s.start_time = 0;
        ++back;
      }
    }
  }
  return back;
}

uint64_t Scheduler::finish_restore(bool reattach) {
  Impl& m = *impl_;
  const uint64_t back = reattach ? restore_orphans() : restore_restart();
  for (auto& [id, holder] : m.jobs) {
    UserJob& owner = *holder;
    for (auto& part : owner.parts) {
      m.ready_tasks -= part->ready();
      m.leave_ready(*part);
    }
    if (owner.graph) {
      // Pending counters from the restored states, then what the journal implies without
      // records of its own: the dependants of tasks that ended unfinished are aborted, at that
      // end's time. Tasks aborted when they were added keep their cause.
      DepGraph& g = *owner.graph;
      std::erase_if(g.aborted_by, [&owner](const auto& entry) {
        UserJob::Loc at = owner.at(entry.first);
        return at.part->tasks.get(at.index).state != TaskState::kAborted;
      });
      for (uint32_t i = 0; i < owner.size(); ++i) {
        g.pending[i] = 0;
        for (uint32_t k = g.dep_begin[i]; k < g.dep_begin[i + 1]; ++k) {
          UserJob::Loc at = owner.at(g.deps[k]);
          g.pending[i] += at.part->tasks.get(at.index).state != TaskState::kFinished;
        }
      }
      for (auto& part : owner.parts) {
        for (uint32_t i = 0; i < part->size(); ++i) {
          const TaskSlot s = part->tasks.get(i);
          if (ended(s.state) && s.state != TaskState::kFinished) {
            m.abort_dependants(*part, i, s.end_time);
          }
        }
      }
    }
    for (auto& part : owner.parts) {
      part->rebuild_ready();
      m.ready_tasks += part->ready();
      m.enter_ready(*part);
    }
    // Completed before the restart: nothing to report now.
    owner.completion_noted = owner.done();
    m.completed.erase(id);
  }
  m.pack_ended();
  return back;
}

}  // namespace hq::sched
