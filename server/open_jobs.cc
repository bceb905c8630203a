// Open jobs: `hq job open`, submits into an open job (`hq submit --job`, `hq job submit-file
// --job`), `hq job close`. Each change is journaled (jobOpened, tasksSubmitted, jobClosed) and
// applied to the scheduler once durable, in journal order; until then pending_open_ keeps what
// later requests must not contradict (colliding ids, a submit after a close).

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "server/server_state.h"

namespace hq::server {

namespace {

// `ids` moved up by `offset`.
IdSet shifted(const IdSet& ids, uint32_t offset) {
  std::vector<IdRange> out;
  for (IdRange r : ids.ranges()) {
    r.start += offset;
    r.end += offset;
    out.push_back(r);
  }
  return IdSet(std::move(out));
}

}  // namespace

void Server::handle_job_open(net::Connection& c, wire::JobDescription::Reader description) {
  if (!journal_status_) return reply_error(c, journal_status_.message());
  const JobId id = ++last_job_id_;  // never reused
  const std::string name = description.getName().cStr();
  const int64_t max_fails = description.getMaxFails();
  const int64_t now = unix_millis_now();
  if (journal_) {
    journal::EventMessage event(now);
    auto opened = event.event().initJobOpened();
    opened.setJob(id);
    opened.setName(name);
    opened.setMaxFails(max_fails);
    record(event);
  }
  auto weak = std::weak_ptr<net::Connection>(c.shared_from_this());
  when_durable([this, weak, id, now, name, max_fails](const Status& stored) {
    auto connection = weak.lock();
    if (!stored) {
      if (connection)
        reply_error(*connection, "the job may not have been stored: " + stored.message());
      return;
    }
    sched::JobSpec spec;
    spec.id = id;
    spec.task_ids = {};
    spec.open = true;
    spec.max_fails = max_fails;
    if (auto st = scheduler_.add_job(spec); !st) {
      spdlog::error("job {} could not be opened after it was journaled: {}", id, st.message());
    }
    JobRecord& record = jobs_[id];
    record.description.name = name.empty() ? "job" : name;
    record.submit_time = now;
    spdlog::debug("job {} opened", id);
    if (connection) {
      capnp::MallocMessageBuilder reply;
      reply.initRoot<wire::ClientResponse>().setSubmitted(id);
      connection->send(reply);
    }
  });
}

void Server::handle_add_tasks(net::Connection& c, JobDescriptionSpec job) {
  const JobId id = job.job;
  if (!jobs_.count(id)) return reply_error(c, fmt::format("job {} not found", id));
  PendingOpenJob& pending = pending_open_[id];
  auto drop_if_idle = [this, id] {
    auto it = pending_open_.find(id);
    if (it != pending_open_.end() && it->second.submits == 0 && !it->second.closing) {
      pending_open_.erase(it);
    }
  };
  if (!scheduler_.job_open(id) || pending.closing) {
    drop_if_idle();
    return reply_error(c, fmt::format("job {} is not open: tasks are added only to a job made "
                                      "by `hq job open`, until `hq job close`",
                                      id));
  }
  if (!job.stream.empty()) {
    drop_if_idle();
    return reply_error(c, "invalid job: --stream cannot be given for a submit into an open job");
  }
  if (job.auto_ids) {
    // Ids the user did not give: past every id the job has (or is about to have).
    std::optional<TaskId> max = scheduler_.max_task_id(id);
    for (const IdSet& p : pending.ids) {
      for (const IdRange& r : p.ranges()) max = std::max(max.value_or(0), r.last());
    }
    const uint64_t offset = max ? uint64_t{*max} + 1 : 0;
    uint64_t last = 0;
    for (const IdRange& r : job.task_ids.ranges()) last = std::max<uint64_t>(last, r.last());
    if (offset + last > std::numeric_limits<uint32_t>::max()) {
      drop_if_idle();
      return reply_error(c, fmt::format("job {}: no task ids are left above {}", id, *max));
    }
    job.task_ids = shifted(job.task_ids, static_cast<uint32_t>(offset));
    job.auto_ids = false;
  }
  auto made = sched::job_spec(id, job);
  if (!made) {
    drop_if_idle();
    return reply_error(c, "invalid job: " + made.message());
  }
  sched::JobSpec spec = std::move(made).value();
  // Ids of submits not applied yet collide too.
  std::vector<TaskId> taken;
  for (const IdSet& p : pending.ids) {
    job.task_ids.for_each([&](uint32_t t) {
      if (taken.size() < 20 && p.contains(t)) taken.push_back(t);
    });
  }
  if (!taken.empty()) {
    drop_if_idle();
    IdSetBuilder b;
    std::sort(taken.begin(), taken.end());
    for (TaskId t : taken) b.add(t);
    return reply_error(c, fmt::format("invalid job: job {} already has task(s) {}: task ids of a "
                                      "job must not collide",
                                      id, std::move(b).build().to_string()));
  }
  if (!journal_status_) {
    drop_if_idle();
    return reply_error(c, journal_status_.message());
  }
  if (auto st = scheduler_.validate_tasks(spec); !st) {
    drop_if_idle();
    return reply_error(c, "invalid job: " + st.message());
  }
  const int64_t now = unix_millis_now();
  if (journal_) {
    journal::EventMessage event(now);
    journal::to_record(id, job, /*new_job=*/false, event.event().initTasksSubmitted());
    record(event);
  }
  pending.ids.push_back(job.task_ids);
  ++pending.submits;
  auto weak = std::weak_ptr<net::Connection>(c.shared_from_this());
  when_durable([this, weak, id, now, spec = std::move(spec),
                description = std::move(job)](const Status& stored) mutable {
    auto connection = weak.lock();
    PendingOpenJob& p = pending_open_[id];
    if (!p.ids.empty()) p.ids.erase(p.ids.begin());
    if (p.submits > 0) --p.submits;
    if (p.submits == 0 && !p.closing) pending_open_.erase(id);
    if (!stored) {
      if (connection) {
        reply_error(*connection, "the tasks may not have been stored: " + stored.message());
      }
      return;
    }
    if (auto st = scheduler_.add_tasks(spec, now); !st) {  // validated above: a bug
      spdlog::error("tasks could not be added to job {} after they were journaled: {}", id,
                    st.message());
    }
    spdlog::debug("job {}: {} task(s) added", id, description.task_ids.size());
    jobs_.at(id).add(std::move(description));
    if (connection) {
      capnp::MallocMessageBuilder reply;
      reply.initRoot<wire::ClientResponse>().setSubmitted(id);
      connection->send(reply);
    }
    after_state_change();
  });
}

void Server::handle_job_close(net::Connection& c, wire::JobSelector::Reader selector) {
  if (!journal_status_) return reply_error(c, journal_status_.message());
  std::vector<JobId> ids = select_jobs(selector);
  std::vector<JobId> closing;
  for (JobId id : ids) {
    auto it = pending_open_.find(id);
    if (!scheduler_.job_open(id) || (it != pending_open_.end() && it->second.closing)) {
      if (selector.isIds()) return reply_error(c, fmt::format("job {} is not open", id));
      continue;
    }
    closing.push_back(id);
  }
  if (selector.isIds() && ids.empty()) return reply_error(c, "no such job");
  const int64_t now = unix_millis_now();
  for (JobId id : closing) {
    pending_open_[id].closing = true;
    if (!journal_) continue;
    journal::EventMessage event(now);
    event.event().initJobClosed().setJob(id);
    record(event);
  }
  auto weak = std::weak_ptr<net::Connection>(c.shared_from_this());
  when_durable([this, weak, closing](const Status& stored) {
    auto connection = weak.lock();
    for (JobId id : closing) {
      auto it = pending_open_.find(id);
      if (it != pending_open_.end()) {
        it->second.closing = false;
        if (it->second.submits == 0) pending_open_.erase(it);
      }
      if (stored) scheduler_.close_job(id);
    }
    if (!stored) {
      if (connection)
        reply_error(*connection, "the close may not have been stored: " + stored.message());
      return;
    }
    spdlog::debug("{} job(s) closed", closing.size());
    if (connection) reply_job_summaries(*connection, closing);
    after_state_change();
  });
}

}  // namespace hq::server
