// Workers reattaching after a server restart (Scheduler::reattach_task, end_reattach): the
// tasks that may still run on them are orphans (TaskSlot kOrphan) until a worker claims them or
// the grace ends (DESIGN.md, the durability contract, point 8).

#include "scheduler/scheduler.h"

#include <optional>
#include <vector>

#include "scheduler/impl.h"

namespace hq::sched {

bool Scheduler::reattach_task(WorkerId worker, TaskKey key, int64_t start_time, uint8_t variant) {
  Impl& m = *impl_;
  WorkerSlot* w = m.find_worker(worker);
  UserJob* owner = m.find_job(key.job);
  if (!w || !w->connected || !owner) return false;
  std::optional<UserJob::Loc> at = owner->find(key.task);
  if (!at) return false;
  Job* job = at->part;
  const std::optional<uint32_t> index = at->index;
  const TaskSlot now = job->tasks.get(*index);
  if (now.instance != key.instance) return false;
  if (now.flags & kHeld) {
    // A claim repeated in one message, or a task it reported started meanwhile.
    return now.worker == worker && now.state == TaskState::kRunning;
  }
  if (!(now.flags & kOrphan)) return false;
  TaskSlot& s = job->task(*index);
  // The journal knows where a running task runs: a claim from elsewhere is not that run. A
  // multi-node task's secondary nodes are not known here: it runs again instead.
  if (s.state == TaskState::kRunning && s.worker != worker) return false;
  if (job->nodes > 1) return false;
  if (variant > 0 && variant >= job->variants.size()) return false;
  s.flags = 0;
  if (s.state == TaskState::kWaiting) job->set_state(*index, s, TaskState::kRunning);
  // Held as a queued task, then placed as a queued task that the worker reports started.
  m.hold(*w, *job, *index, /*placed=*/false, {}, variant);
  m.place_started(*w, *job, *index);
  s.start_time = start_time;
  ++w->running;
  return true;
}

std::vector<TaskKey> Scheduler::end_reattach() {
  Impl& m = *impl_;
  std::vector<TaskKey> back;
  for (auto& [id, owner] : m.jobs) {
    if (owner->counts.complete()) continue;
    for (auto& part : owner->parts) {
      Job& job = *part;
      for (uint32_t i = 0; i < job.size(); ++i) {
        const TaskSlot now = job.tasks.get(i);
        if (!(now.flags & kOrphan) || ended(now.state)) continue;
        TaskSlot& s = job.task(i);
        if (s.state == TaskState::kRunning) job.set_state(i, s, TaskState::kWaiting);
        s.flags = 0;
        ++s.instance;
        s.start_time = 0;
        m.put_back(job, i);
        back.push_back({job.id, job.ids.id_at(i), s.instance});
      }
    }
  }
  return back;
}

uint64_t Scheduler::orphan_count() const {
  uint64_t n = 0;
  for (const auto& [id, owner] : impl_->jobs) {
    for (const auto& part : owner->parts) {
      for (uint32_t i = 0; i < part->size(); ++i) n += (part->tasks.get(i).flags & kOrphan) != 0;
    }
  }
  return n;
}

}  // namespace hq::sched
