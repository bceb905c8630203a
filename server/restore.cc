#include "server/restore.h"

#include <algorithm>
#include <string>

#include <fmt/format.h>

namespace hq::server {

namespace schema = journal::schema;

void Restore::note_end(JobId job, int64_t time) {
  auto it = jobs_.find(job);
  if (it != jobs_.end()) it->second.end_time = std::max(it->second.end_time, time);
}

void Restore::apply(journal::Seq seq, schema::Event::Reader e) {
  const int64_t time = e.getTime();
  auto ended = [&](auto r, sched::TaskState state, std::string error = {}, WorkerId worker = 0) {
    scheduler_.restore_ended({r.getJob(), r.getTask(), r.getInstance()}, state, time,
                             std::move(error), worker);
    note_end(r.getJob(), time);
  };
  switch (e.which()) {
    case schema::Event::JOB_SUBMITTED: {
      auto submitted = e.getJobSubmitted();
      const JobId id = submitted.getJob();
      max_job_id_ = std::max(max_job_id_, id);
      auto description = journal::from_record(submitted.getDescription());
      Status added = description.status();
      if (description) {
        auto spec = sched::job_spec(id, *description);
        added = spec ? scheduler_.add_job(*spec) : spec.status();
      }
      if (!added) {
        // Never skipped: the job was acknowledged.
        if (status_) {
          status_ = Status::error(fmt::format(
              "journal seq {}: job {} was acknowledged but cannot be restored ({}); a server "
              "without it would serve a smaller campaign than it accepted: run the hq release "
              "that accepted it, or move the journal aside to start with an empty one",
              seq, id, added.message()));
        }
        return;
      }
      JobRecord& record = jobs_[id];
      record.description = std::move(*description);
      record.submit_time = time;
      return;
    }
    case schema::Event::TASK_STARTED: {
      auto r = e.getTaskStarted();
      scheduler_.restore_started({r.getJob(), r.getTask(), r.getInstance()}, r.getWorker(), time);
      return;
    }
    case schema::Event::JOB_RESERVED:
      scheduler_.restore_reserved(e.getJobReserved().getJob(), e.getJobReserved().getTasks());
      return;
    case schema::Event::TASKS_STARTED: {
      auto batch = e.getTasksStarted();
      for (auto t : batch.getTasks()) {
        scheduler_.restore_started({batch.getJob(), t.getTask(), t.getInstance()},
                                   batch.getWorker(), t.getTime());
      }
      return;
    }
    case schema::Event::TASK_FINISHED:
      return ended(e.getTaskFinished(), sched::TaskState::kFinished);
    case schema::Event::TASKS_FINISHED: {
      auto batch = e.getTasksFinished();
      int64_t last = 0;
      for (auto t : batch.getTasks()) {
        scheduler_.restore_ended({batch.getJob(), t.getTask(), t.getInstance()},
                                 sched::TaskState::kFinished, t.getTime(), {}, batch.getWorker());
        last = std::max(last, t.getTime());
      }
      note_end(batch.getJob(), last);
      return;
    }
    case schema::Event::TASK_FAILED:
      return ended(e.getTaskFailed(), sched::TaskState::kFailed,
                   e.getTaskFailed().getError().cStr(), e.getTaskFailed().getWorker());
    case schema::Event::TASK_CANCELED:
      return ended(e.getTaskCanceled(), sched::TaskState::kCanceled);
    case schema::Event::JOB_CANCELED:
      scheduler_.cancel_job(e.getJobCanceled().getJob(), time);
      note_end(e.getJobCanceled().getJob(), time);
      return;
    case schema::Event::TASK_REQUEUED: {
      auto r = e.getTaskRequeued();
      scheduler_.restore_requeued({r.getJob(), r.getTask(), r.getInstance()}, r.getCrashCounter());
      return;
    }
    case schema::Event::JOB_ABORTED:
      scheduler_.abort_job(e.getJobAborted().getJob(), time);
      note_end(e.getJobAborted().getJob(), time);
      return;
    case schema::Event::SERVER_STARTED:
      if (e.getServerStarted().getReattach()) {
        // The run before it ended; what may still run on its workers kept its instance, for
        // them to claim (tasksReattached) until the grace ended (reattachEnded).
        scheduler_.restore_orphans();
        return;
      }
      // A server without reattach: its workers stopped with the run before, and what may have
      // run then is a new instance in the runs after it (the restarted server did the same,
      // without a record).
      scheduler_.restore_restart();
      connected_.clear();
      return;
    case schema::Event::WORKER_REATTACHED:
      connected_.insert(e.getWorkerReattached().getWorker());
      return;
    case schema::Event::TASKS_REATTACHED: {
      auto batch = e.getTasksReattached();
      auto it = jobs_.find(batch.getJob());
      for (auto t : batch.getTasks()) {
        const TaskKey key{batch.getJob(), t.getTask(), t.getInstance()};
        if (!scheduler_.restore_reattached(key, batch.getWorker(), t.getTime())) continue;
        if (it != jobs_.end()) note_reattached(it->second, key);
      }
      return;
    }
    case schema::Event::REATTACH_ENDED:
      scheduler_.restore_reattach_ended();
      return;
    case schema::Event::TASKS_CANCELED: {
      // The tasks not ended then: a task ends once, so the ones still open now are those.
      auto r = e.getTasksCanceled();
      const JobId job = r.getJob();
      for (auto range : r.getTasks()) {
        if (range.getStep() == 0) continue;
        for (uint64_t t = range.getStart(); t <= range.getEnd(); t += range.getStep()) {
          auto v = scheduler_.task(job, static_cast<TaskId>(t));
          if (!v || v->state == sched::TaskState::kFinished ||
              v->state == sched::TaskState::kFailed || v->state == sched::TaskState::kCanceled ||
              v->state == sched::TaskState::kAborted) {
            continue;
          }
          scheduler_.restore_ended({job, static_cast<TaskId>(t), v->instance},
                                   sched::TaskState::kCanceled, time);
        }
      }
      note_end(job, time);
      return;
    }
    case schema::Event::JOB_FORGOTTEN:
      // Applied by finish(), once the aborts that complete the job are derived.
      if (jobs_.count(e.getJobForgotten().getJob())) {
        forgotten_.push_back(e.getJobForgotten().getJob());
      }
      return;
    case schema::Event::WORKER_CONNECTED:
      // Ids continue from the journal's state record; a worker may reattach with its id.
      if (e.getWorkerConnected().getReattaches()) {
        connected_.insert(e.getWorkerConnected().getWorker());
      }
      return;
    case schema::Event::WORKER_LOST:
      connected_.erase(e.getWorkerLost().getWorker());
      return;
  }
}

void note_reattached(JobRecord& job, TaskKey key) {
  auto& [instance, count] = job.reattached[key.task];
  if (instance != key.instance) count = 0;
  instance = key.instance;
  ++count;
}

void Restore::finish(bool reattach) {
  scheduler_.finish_restore(reattach);
  // Complete when it was forgotten, hence now: its history ends with the forget. (A job the
  // scheduler would not let go stays, rather than leave the two out of step.)
  std::erase_if(forgotten_, [this](JobId id) {
    if (!scheduler_.remove_job(id)) return true;
    jobs_.erase(id);
    return false;
  });
  for (auto& [id, job] : jobs_) {
    if (!scheduler_.counts(id).complete()) job.end_time = 0;  // end_time held the last end seen
  }
}

}  // namespace hq::server
