#include "server/restore.h"

#include <algorithm>
#include <cstring>
#include <string>

#include <capnp/serialize.h>
#include <fmt/format.h>
#include <kj/exception.h>

namespace hq::server {

namespace schema = journal::schema;

const JobDescriptionSpec& JobRecord::holder(TaskId task) const {
  for (const JobDescriptionSpec& d : added) {
    if (d.task_ids.contains(task)) return d;
  }
  return description;
}

void JobRecord::add(JobDescriptionSpec submit) {
  if (added.empty()) {
    description.body = submit.body;
    description.stream = submit.stream;
  }
  added.push_back(std::move(submit));
}

JobDescriptionSpec JobRecord::merged(size_t max_tasks) const {
  JobDescriptionSpec out;
  out.name = description.name;
  out.max_fails = description.max_fails;
  if (added.empty()) return out;
  out.body = added.front().body;
  out.priority = added.front().priority;
  out.crash_limit = added.front().crash_limit;
  out.nodes = added.front().nodes;
  std::vector<IdRange> ranges;
  size_t total = 0;
  for (const JobDescriptionSpec& d : added) {
    ranges.insert(ranges.end(), d.task_ids.ranges().begin(), d.task_ids.ranges().end());
    total += d.task_ids.size();
  }
  std::sort(ranges.begin(), ranges.end(),
            [](const IdRange& a, const IdRange& b) { return a.start < b.start; });
  bool interleaved = false;
  for (size_t i = 1; i < ranges.size(); ++i) {
    interleaved |= ranges[i].start <= ranges[i - 1].last();
  }
  IdSetBuilder ids;
  if (!interleaved) {
    for (const IdRange& r : ranges) ids.add_range(r);
  } else {  // stepped ranges of several submits between each other: rare, and ids are distinct
    std::vector<TaskId> all;
    all.reserve(total);
    for (const JobDescriptionSpec& d : added)
      d.task_ids.for_each([&](TaskId t) { all.push_back(t); });
    std::sort(all.begin(), all.end());
    for (TaskId t : all) ids.add(t);
  }
  out.task_ids = std::move(ids).build();
  if (total <= max_tasks && added.size() > 1) {
    for (const JobDescriptionSpec& d : added) {
      d.task_ids.for_each([&](TaskId t) {
        GraphTaskSpec& task = out.tasks.emplace_back();
        task.id = t;
        task.body = task_body(d, t);
        for (const GraphTaskSpec& g : d.tasks) {
          if (g.id == t) task.deps = g.deps;
        }
      });
    }
    std::sort(out.tasks.begin(), out.tasks.end(),
              [](const GraphTaskSpec& a, const GraphTaskSpec& b) { return a.id < b.id; });
  } else if (added.size() == 1) {
    out.tasks = added.front().tasks;
    out.entries = added.front().entries;
  }
  return out;
}

void Restore::fail(journal::Seq seq, JobId id, const Status& why) {
  // Never skipped: the job was acknowledged.
  if (!status_) return;
  status_ = Status::error(
      fmt::format("journal seq {}: job {} was acknowledged but cannot be restored ({}); a server "
                  "without it would serve a smaller campaign than it accepted: run the hq release "
                  "that accepted it, or move the journal aside to start with an empty one",
                  seq, id, why.message()));
}

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
    case schema::Event::TASK_TIMES: {
      auto r = e.getTaskTimes();
      const JobId job = r.getJob();
      const WorkerId worker = r.getWorker();
      auto each = [&](capnp::Data::Reader data, journal::TaskTimesList list, auto fn) {
        // Checked when the record was decoded.
        auto entries = journal::unpack_task_times(data.begin(), data.size(), list, time);
        if (entries) {
          for (const journal::TaskTimeEntry& t : *entries) fn(t);
        }
      };
      int64_t last = 0;
      auto start = [&](const journal::TaskTimeEntry& t) {
        scheduler_.restore_started({job, t.task, t.instance}, worker, t.start);
      };
      auto finish = [&](const journal::TaskTimeEntry& t) {
        scheduler_.restore_ended({job, t.task, t.instance}, sched::TaskState::kFinished, t.end, {},
                                 worker);
        last = std::max(last, t.end);
      };
      each(r.getStarted(), journal::TaskTimesList::kStarted, start);
      each(r.getRan(), journal::TaskTimesList::kRan, [&](const journal::TaskTimeEntry& t) {
        start(t);
        finish(t);
      });
      each(r.getFinished(), journal::TaskTimesList::kFinished, finish);
      if (last != 0) note_end(job, last);
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
    case schema::Event::JOB_OPENED: {
      const JobId id = e.getJobOpened().getJob();
      max_job_id_ = std::max(max_job_id_, id);
      sched::JobSpec spec;
      spec.id = id;
      spec.task_ids = {};
      spec.open = true;
      spec.max_fails = e.getJobOpened().getMaxFails();
      if (Status added = scheduler_.add_job(spec); !added) return fail(seq, id, added);
      JobRecord& record = jobs_[id];
      record.description.name = e.getJobOpened().getName().cStr();
      record.submit_time = time;
      return;
    }
    case schema::Event::JOB_CLOSED:
      scheduler_.close_job(e.getJobClosed().getJob());
      return;
    case schema::Event::TASKS_SUBMITTED: {
      auto submitted = e.getTasksSubmitted();
      const JobId id = submitted.getJob();
      auto description = journal::from_record(submitted);
      if (!description) return fail(seq, id, description.status());
      auto spec = sched::job_spec(id, *description);
      if (!spec) return fail(seq, id, spec.status());
      if (submitted.getNewJob()) {
        max_job_id_ = std::max(max_job_id_, id);
        if (Status added = scheduler_.add_job(*spec); !added) return fail(seq, id, added);
        JobRecord& record = jobs_[id];
        record.description = std::move(*description);
        record.submit_time = time;
        return;
      }
      if (Status added = scheduler_.add_tasks(*spec, time); !added) return fail(seq, id, added);
      auto it = jobs_.find(id);
      if (it != jobs_.end()) it->second.add(std::move(*description));
      return;
    }
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
    case schema::Event::ALLOC_QUEUE_ADDED: {
      auto r = e.getAllocQueueAdded();
      RestoredQueue& q = queues_[r.getQueue()];
      q.id = r.getQueue();
      auto bytes = r.getParams();
      q.params.assign(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
      max_queue_id_ = std::max(max_queue_id_, q.id);
      return;
    }
    case schema::Event::ALLOC_QUEUE_PAUSED:
      if (auto q = queues_.find(e.getAllocQueuePaused().getQueue()); q != queues_.end()) {
        q->second.pause_reason = e.getAllocQueuePaused().getReason().cStr();
      }
      return;
    case schema::Event::ALLOC_QUEUE_RESUMED:
      if (auto q = queues_.find(e.getAllocQueueResumed().getQueue()); q != queues_.end()) {
        q->second.pause_reason.reset();
      }
      return;
    case schema::Event::ALLOC_QUEUE_REMOVED:
      queues_.erase(e.getAllocQueueRemoved().getQueue());
      return;
    case schema::Event::ALLOCATION_SUBMITTED: {
      auto r = e.getAllocationSubmitted();
      auto q = queues_.find(r.getQueue());
      if (q == queues_.end()) return;
      RestoredAllocation& a = q->second.allocations.emplace_back();
      a.id = r.getAllocation().cStr();
      a.workers = std::max<uint32_t>(r.getWorkers(), 1);
      a.log_dir = r.getLogDir().cStr();
      a.submit_time = time;
      return;
    }
    case schema::Event::ALLOCATION_ENDED: {
      auto r = e.getAllocationEnded();
      auto q = queues_.find(r.getQueue());
      if (q == queues_.end()) return;
      for (RestoredAllocation& a : q->second.allocations) {
        if (a.id != r.getAllocation().cStr() || a.end_time) continue;
        a.end_time = time;
        a.failed = r.getFailed();
        a.detail = r.getDetail().cStr();
      }
      return;
    }
  }
}

Status with_queue_params(const std::string& bytes,
                         const std::function<void(wire::AllocQueueParams::Reader)>& fn) {
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0) {
    return Status::error(
        fmt::format("queue parameters of {} bytes are not a message", bytes.size()));
  }
  // An aligned copy: the record's bytes need not be.
  kj::Array<capnp::word> words = kj::heapArray<capnp::word>(bytes.size() / sizeof(capnp::word));
  std::memcpy(words.begin(), bytes.data(), bytes.size());
  try {
    capnp::FlatArrayMessageReader reader(words);
    auto params = reader.getRoot<wire::AllocQueueParams>();
    (void)params.getWorkerArgs();
    (void)params.getBatchArgs();
    (void)params.getWorkerResources();
    fn(params);
    return Status::ok();
  } catch (const kj::Exception& e) {
    return Status::error(
        fmt::format("undecodable queue parameters: {}", e.getDescription().cStr()));
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
    if (!scheduler_.counts(id).complete() || scheduler_.job_open(id))
      job.end_time = 0;  // end_time held the last end seen
  }
}

}  // namespace hq::server
