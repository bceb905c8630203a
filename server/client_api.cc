// The client-facing half of the server: one handler per ClientRequest.

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "server/server_state.h"

namespace hq::server {
void Server::on_client(std::shared_ptr<net::Connection> connection) {
  if (stopping_) return connection->close();
  clients_.insert(connection);
  std::weak_ptr<net::Connection> weak = connection;
  connection->start(
      [this, weak](net::Message& message) {
        if (auto c = weak.lock()) on_client_request(c, message);
      },
      [this, weak](const std::string&) {
        if (auto c = weak.lock()) clients_.erase(c);
        finish_stop_when_idle();
      });
}

void Server::reply_error(net::Connection& connection, const std::string& error) {
  capnp::MallocMessageBuilder reply;
  reply.initRoot<wire::ClientResponse>().setError(error);
  connection.send(reply);
}

void Server::on_client_request(const std::shared_ptr<net::Connection>& connection,
                               net::Message& message) {
  auto request = message.root<wire::ClientRequest>();
  net::Connection& c = *connection;
  switch (request.which()) {
    case wire::ClientRequest::SUBMIT:
      return handle_submit(c, request.getSubmit());
    case wire::ClientRequest::JOB_LIST:
      return handle_job_list(c);
    case wire::ClientRequest::JOB_INFO:
      return handle_job_info(c, request.getJobInfo());
    case wire::ClientRequest::JOB_CANCEL:
      return handle_job_cancel(c, request.getJobCancel());
    case wire::ClientRequest::JOB_WAIT:
      return handle_job_wait(connection, request.getJobWait());
    case wire::ClientRequest::JOB_WAIT_OPEN:
      return handle_job_wait(connection, request.getJobWaitOpen(), /*without_close=*/true);
    case wire::ClientRequest::JOB_OPEN:
      return handle_job_open(c, request.getJobOpen());
    case wire::ClientRequest::JOB_CLOSE:
      return handle_job_close(c, request.getJobClose());
    case wire::ClientRequest::TASK_LIST:
      return handle_task_list(c, request.getTaskList());
    case wire::ClientRequest::TASK_EXPLAIN:
      return handle_task_explain(c, request.getTaskExplain());
    case wire::ClientRequest::TASK_CANCEL:
      return handle_task_cancel(c, request.getTaskCancel());
    case wire::ClientRequest::JOB_FORGET:
      return handle_job_forget(c, request.getJobForget());
    case wire::ClientRequest::JOB_WATCH:
      return handle_job_watch(connection, request.getJobWatch());
    case wire::ClientRequest::WORKER_LIST: {
      std::vector<WorkerId> ids;
      for (const auto& [id, w] : workers_) ids.push_back(id);
      return handle_worker_list(c, ids);
    }
    case wire::ClientRequest::WORKER_INFO: {
      WorkerId id = request.getWorkerInfo();
      if (!workers_.count(id)) return reply_error(c, fmt::format("worker {} not found", id));
      return handle_worker_list(c, {id});
    }
    case wire::ClientRequest::WORKER_STOP:
      return handle_worker_stop(c, request.getWorkerStop());
    case wire::ClientRequest::SERVER_INFO:
      return handle_server_info(c);
    case wire::ClientRequest::JOURNAL_PRUNE:
      return handle_journal_prune(c);
    case wire::ClientRequest::JOURNAL_FLUSH:
      return handle_journal_flush(c);
    case wire::ClientRequest::ALLOC_ADD:
    case wire::ClientRequest::ALLOC_LIST:
    case wire::ClientRequest::ALLOC_PAUSE:
    case wire::ClientRequest::ALLOC_RESUME:
    case wire::ClientRequest::ALLOC_REMOVE:
      return handle_alloc_request(connection, request);
    case wire::ClientRequest::SERVER_STOP: {
      capnp::MallocMessageBuilder reply;
      reply.initRoot<wire::ClientResponse>().setOk();
      c.send(reply);
      spdlog::info("stop requested by a client");
      asio::post(io_, [this] { stop(); });
      return;
    }
  }
  reply_error(c, "unknown request (is this client newer than the server?)");
}

// --- Jobs -------------------------------------------------------------------------------------

void Server::handle_submit(net::Connection& c, wire::JobDescription::Reader description) {
  auto job = net::from_wire(description);
  if (!job) return reply_error(c, "invalid job: " + job.message());
  if (job->tasks.empty() && job->body.program.empty()) {
    return reply_error(c, "invalid job: no program to run");
  }
  for (const GraphTaskSpec& t : job->tasks) {
    if (t.body.program.empty()) {
      return reply_error(c, fmt::format("invalid job: task {} has no program to run", t.id));
    }
    if (t.body.time_limit_ms > 366ull * 24 * 3600 * 1000) {
      return reply_error(
          c, fmt::format("invalid job: task {} has a time limit longer than a year", t.id));
    }
  }
  if (job->body.cpus == 0 && job->body.resources.entries.empty()) {
    return reply_error(c, "invalid job: a task needs at least 1 CPU");
  }
  if (job->task_ids.empty()) return reply_error(c, "invalid job: no task ids");
  constexpr uint64_t kYearMs = 366ull * 24 * 3600 * 1000;
  if (job->body.time_limit_ms > kYearMs || job->body.time_request_ms > kYearMs) {
    return reply_error(c, "invalid job: a time limit or time request longer than a year");
  }
  if (job->nodes > 1'000'000) return reply_error(c, "invalid job: too many nodes per task");
  if (job->job != 0) return handle_add_tasks(c, std::move(*job));
  if (!job->submit_deps.empty()) {
    return reply_error(c, "invalid job: --deps names tasks of an open job: use it with --job");
  }
  const JobId id = last_job_id_ + 1;
  auto made = sched::job_spec(id, *job);
  if (!made) return reply_error(c, "invalid job: " + made.message());
  sched::JobSpec spec = std::move(made).value();
  if (job->task_ids.size() > kMaxTasksPerJob) {
    return reply_error(c, fmt::format("invalid job: {} tasks; a job holds at most {} (split it "
                                      "into several jobs)",
                                      job->task_ids.size(), kMaxTasksPerJob));
  }

  if (!journal_status_) return reply_error(c, journal_status_.message());

  if (auto st = sched::Scheduler::validate_job(spec); !st) {
    return reply_error(c, "invalid job: " + st.message());
  }
  last_job_id_ = id;  // never reused, even if the journal fails now
  const int64_t now = unix_millis_now();
  if (journal_) {
    journal::EventMessage event(now);
    if (journal::needs_tasks_submitted(*job)) {  // tasks with their own parameters
      journal::to_record(id, *job, /*new_job=*/true, event.event().initTasksSubmitted());
    } else {
      auto submitted = event.event().initJobSubmitted();
      submitted.setJob(id);
      journal::to_record(*job, submitted.initDescription());
    }
    record(event);
  }
  // The job exists (for workers and for every client) once it is durable.
  auto weak = std::weak_ptr<net::Connection>(c.shared_from_this());
  when_durable([this, weak, id, now, spec = std::move(spec),
                description = std::move(*job)](const Status& stored) mutable {
    auto connection = weak.lock();
    if (!stored) {
      if (connection) {
        reply_error(*connection, "the job may not have been stored: " + stored.message());
      }
      return;
    }
    if (auto st = scheduler_.add_job(spec); !st) {  // validated above: a bug
      spdlog::error("job {} could not be added after it was journaled: {}", id, st.message());
    }
    JobRecord& record = jobs_[id];
    record.description = std::move(description);
    record.submit_time = now;
    spdlog::debug("job {} submitted: {} task(s)", id, record.description.task_ids.size());
    if (connection) {
      capnp::MallocMessageBuilder reply;
      reply.initRoot<wire::ClientResponse>().setSubmitted(id);
      connection->send(reply);
    }
    request_schedule();
  });
}

std::vector<JobId> Server::select_jobs(wire::JobSelector::Reader selector) const {
  std::vector<JobId> ids;
  switch (selector.which()) {
    case wire::JobSelector::ALL:
      for (const auto& [id, job] : jobs_) ids.push_back(id);
      break;
    case wire::JobSelector::LAST:
      if (last_job_id_ != 0 && jobs_.count(last_job_id_)) ids.push_back(last_job_id_);
      break;
    case wire::JobSelector::IDS:
      // Walks the known jobs inside each range, so "1-4000000000" costs what exists.
      for (auto r : selector.getIds()) {
        if (r.getStep() == 0) continue;
        for (auto it = jobs_.lower_bound(r.getStart());
             it != jobs_.end() && it->first <= r.getEnd(); ++it) {
          if ((it->first - r.getStart()) % r.getStep() == 0) ids.push_back(it->first);
        }
      }
      break;
  }
  return ids;
}

void Server::fill_job_summary(JobId id, wire::JobSummary::Builder out) const {
  const JobRecord& job = jobs_.at(id);
  sched::TaskCounts counts = scheduler_.counts(id);
  out.setId(id);
  out.setName(job.description.name);
  out.setState(static_cast<wire::JobState>(scheduler_.job_state(id)));
  auto c = out.initCounts();
  c.setWaiting(counts[sched::TaskState::kWaiting]);
  c.setRunning(counts[sched::TaskState::kRunning]);
  c.setFinished(counts[sched::TaskState::kFinished]);
  c.setFailed(counts[sched::TaskState::kFailed]);
  c.setCanceled(counts[sched::TaskState::kCanceled]);
  c.setAborted(counts[sched::TaskState::kAborted]);
  out.setSubmitTime(job.submit_time);
  out.setEndTime(job.end_time);
  out.setIsOpen(scheduler_.job_open(id));
}

void Server::reply_job_summaries(net::Connection& c, const std::vector<JobId>& ids) {
  capnp::MallocMessageBuilder reply;
  auto list = reply.initRoot<wire::ClientResponse>().initJobs(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) fill_job_summary(ids[i], list[i]);
  respond(c, reply);
}

void Server::handle_job_list(net::Connection& c) {
  std::vector<JobId> ids;
  ids.reserve(jobs_.size());
  for (const auto& [id, job] : jobs_) ids.push_back(id);
  reply_job_summaries(c, ids);
}

void Server::handle_job_info(net::Connection& c, wire::JobSelector::Reader selector) {
  std::vector<JobId> ids = select_jobs(selector);
  capnp::MallocMessageBuilder reply;
  auto list = reply.initRoot<wire::ClientResponse>().initJobDetails(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    fill_job_summary(ids[i], list[i].initSummary());
    const JobRecord& record = jobs_.at(ids[i]);
    constexpr size_t kMaxTasksShown = 1000;
    if (record.added.empty()) {
      net::to_wire(record.description, list[i].initDescription(), kMaxTasksShown);
    } else {
      net::to_wire(record.merged(kMaxTasksShown), list[i].initDescription(), kMaxTasksShown);
    }
    list[i].setDependencies(scheduler_.dependency_count(ids[i]));
  }
  respond(c, reply);
}

void Server::handle_job_cancel(net::Connection& c, wire::JobSelector::Reader selector) {
  // A cancel the journal cannot store would kill tasks that run again after a restart.
  if (!journal_status_) return reply_error(c, journal_status_.message());
  std::vector<JobId> ids = select_jobs(selector);
  int64_t now = unix_millis_now();
  capnp::MallocMessageBuilder reply;
  auto list = reply.initRoot<wire::ClientResponse>().initCanceled(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    sched::TaskCounts before = scheduler_.counts(ids[i]);
    std::vector<sched::Assignment> held = scheduler_.cancel_job(ids[i], now);
    sched::TaskCounts after = scheduler_.counts(ids[i]);
    uint32_t canceled = after[sched::TaskState::kCanceled] - before[sched::TaskState::kCanceled];
    list[i].setJob(ids[i]);
    list[i].setCanceledTasks(canceled);
    list[i].setAlreadyDone(canceled == 0);
    send_cancels(held);
    if (canceled == 0) continue;
    spdlog::info("job {} canceled: {} task(s)", ids[i], canceled);
    journal::EventMessage event(now);
    event.event().initJobCanceled().setJob(ids[i]);
    record(event);
  }
  respond(c, reply);
  after_state_change();
}

bool Server::job_done_for(const Waiter& w, JobId id) const {
  return scheduler_.counts(id).complete() && (w.without_close || !scheduler_.job_open(id));
}

void Server::handle_job_wait(const std::shared_ptr<net::Connection>& c,
                             wire::JobSelector::Reader selector, bool without_close) {
  Waiter waiter{c, select_jobs(selector)};
  waiter.without_close = without_close;
  for (JobId id : waiter.jobs) waiter.incomplete += !job_done_for(waiter, id);
  if (waiter.incomplete == 0) return reply_job_summaries(*c, waiter.jobs);
  if (waiters_.size() >= waiters_swept_at_) {
    // Waiters of clients that went away, swept once their number doubled: O(1) per wait.
    std::erase_if(waiters_, [this](const auto& entry) {
      if (!entry.second.connection.expired()) return false;
      for (JobId id : entry.second.jobs) {
        auto it = waiters_by_job_.find(id);
        if (it == waiters_by_job_.end()) continue;
        std::erase(it->second, entry.first);
        if (it->second.empty()) waiters_by_job_.erase(it);
      }
      return true;
    });
    waiters_swept_at_ = std::max<size_t>(64, 2 * waiters_.size());
  }
  const uint64_t key = next_waiter_++;
  for (JobId id : waiter.jobs) {
    if (!job_done_for(waiter, id)) waiters_by_job_[id].push_back(key);
  }
  waiters_.emplace(key, std::move(waiter));
}

void Server::notify_waiters(const std::vector<JobId>& completed) {
  // While the journal fails, completions wait to be stored: answered when it recovers.
  if (!journal_status_ && !journal_broken_) {
    deferred_completions_.insert(deferred_completions_.end(), completed.begin(), completed.end());
    return;
  }
  for (JobId id : completed) {
    auto by_job = waiters_by_job_.find(id);
    if (by_job == waiters_by_job_.end()) continue;
    std::vector<uint64_t> keys = std::move(by_job->second);
    waiters_by_job_.erase(by_job);
    std::vector<uint64_t> still;  // waiting for an open job to be closed too
    for (uint64_t key : keys) {
      auto it = waiters_.find(key);
      if (it == waiters_.end()) continue;
      if (!job_done_for(it->second, id)) {
        still.push_back(key);
        continue;
      }
      if (--it->second.incomplete > 0) continue;
      auto connection = it->second.connection.lock();
      if (connection && connection->is_open()) reply_job_summaries(*connection, it->second.jobs);
      waiters_.erase(it);
    }
    if (!still.empty()) waiters_by_job_[id] = std::move(still);
  }
}

void Server::handle_task_explain(net::Connection& c, wire::TaskKey::Reader key) {
  auto job = jobs_.find(key.getJob());
  if (job == jobs_.end()) return reply_error(c, fmt::format("job {} not found", key.getJob()));
  std::optional<sched::TaskView> task = scheduler_.task(key.getJob(), key.getTask());
  if (!task) {
    return reply_error(c, fmt::format("job {} has no task {}", key.getJob(), key.getTask()));
  }
  const TaskBodySpec& body = task_body(job->second.holder(key.getTask()), key.getTask());
  std::string request =
      body.resources.entries.empty() ? fmt::format("cpus={}", body.cpus) : describe(body.resources);
  // Alternatives, in the order the scheduler tries them.
  for (size_t v = 1; v < body.variants.size(); ++v) {
    request += fmt::format(" or (variant {}) {}", v, describe(body.variants[v]));
  }
  std::vector<sched::WorkerFit> fits =
      scheduler_.explain(key.getJob(), unix_millis_now(), key.getTask());
  capnp::MallocMessageBuilder reply;
  auto out = reply.initRoot<wire::ClientResponse>().initExplanation();
  out.setRequest(request);
  out.setState(static_cast<wire::TaskState>(task->state));
  if (task->state == sched::TaskState::kWaiting) {
    std::vector<TaskId> waiting = scheduler_.unfinished_dependencies(key.getJob(), key.getTask());
    auto list = out.initWaitingFor(static_cast<unsigned>(waiting.size()));
    for (size_t i = 0; i < waiting.size(); ++i) list.set(i, waiting[i]);
  }
  auto list = out.initWorkers(fits.size());
  for (size_t i = 0; i < fits.size(); ++i) {
    list[i].setWorker(fits[i].worker);
    auto w = workers_.find(fits[i].worker);
    if (w != workers_.end()) list[i].setHostname(w->second.hostname);
    list[i].setFitsNow(fits[i].fits_now);
    list[i].setCouldFit(fits[i].could_fit);
    list[i].setReason(fits[i].reason);
  }
  respond(c, reply);
}

void Server::handle_task_list(net::Connection& c, wire::TaskQuery::Reader query) {
  JobId job = query.getJob();
  if (!jobs_.count(job)) return reply_error(c, fmt::format("job {} not found", job));
  uint32_t state_mask = 0;
  for (auto s : query.getStates()) {
    if (static_cast<unsigned>(s) < 32) state_mask |= 1u << static_cast<unsigned>(s);
  }
  const TaskId from = query.getFrom();
  // One page: at most kTasksPerPage tasks and about kPageBytes, so that no answer comes near the
  // peer's message limit however large the job; the client asks for the next page from `next`.
  std::vector<sched::TaskView> views;
  std::vector<std::string> errors;  // copied at once: TaskView::error is valid for one call only
  size_t bytes = 0;
  bool more = false;
  TaskId next = 0;
  auto keep = [&](const sched::TaskView& v) {
    if (state_mask != 0 && !(state_mask & (1u << static_cast<unsigned>(v.state)))) return true;
    if (views.size() == kTasksPerPage || bytes >= kPageBytes) {
      more = true;
      next = v.id;
      return false;
    }
    views.push_back(v);
    if (v.aborted_by) {
      auto cause = scheduler_.task(v.aborted_by->job, v.aborted_by->task);
      const char* how = !cause                                        ? "ended"
                        : cause->state == sched::TaskState::kCanceled ? "was canceled"
                        : cause->state == sched::TaskState::kAborted  ? "was aborted"
                                                                      : "failed";
      errors.push_back(fmt::format("Aborted: its dependency task {} of job {} {}",
                                   v.aborted_by->task, v.aborted_by->job, how));
    } else {
      errors.push_back(v.error ? *v.error : std::string());
    }
    bytes += 64 + errors.back().size() + 4 * scheduler_.dependencies(job, v.id).size();
    return true;
  };
  if (query.getTasks().size() == 0) {
    scheduler_.for_each_task_from(job, from, keep);
  } else {
    auto ids = net::from_wire(query.getTasks());
    if (!ids) return reply_error(c, "invalid task selection: " + ids.message());
    if (ids->size() > scheduler_.counts(job).total()) {
      // A selection larger than the job: walk the job, not the selection.
      scheduler_.for_each_task_from(
          job, from, [&](const sched::TaskView& v) { return !ids->contains(v.id) || keep(v); });
    } else {
      bool going = true;
      const IdSet selected = ids->normalized();
      for (const IdRange& r : selected.ranges()) {
        for (uint64_t t = r.start; going && t <= r.end; t += r.step) {
          if (t < from) continue;
          if (auto v = scheduler_.task(job, static_cast<TaskId>(t))) going = keep(*v);
        }
        if (!going) break;
      }
    }
    if (views.empty() && state_mask == 0 && from == 0) {
      return reply_error(c, fmt::format("job {} has no task {}", job, ids->to_string()));
    }
  }
  capnp::MallocMessageBuilder reply;
  auto page = reply.initRoot<wire::ClientResponse>().initTaskPage();
  page.setMore(more);
  page.setNext(next);
  auto list = page.initTasks(static_cast<unsigned>(views.size()));
  for (size_t i = 0; i < views.size(); ++i) {
    const sched::TaskView& v = views[i];
    list[i].setId(v.id);
    list[i].setState(static_cast<wire::TaskState>(v.state));
    list[i].setInstance(v.instance);
    list[i].setWorker(v.worker);
    if (!errors[i].empty()) list[i].setError(errors[i]);
    list[i].setStartTime(v.start_time);
    list[i].setEndTime(v.end_time);
    list[i].setCrashCount(v.crashes);
    list[i].setReattached(reattached_count(job, v));
    std::vector<TaskId> deps = scheduler_.dependencies(job, v.id);
    auto out_deps = list[i].initDeps(static_cast<unsigned>(deps.size()));
    for (size_t k = 0; k < deps.size(); ++k) out_deps.set(k, deps[k]);
    if (v.aborted_by) {
      list[i].setAbortedByJob(v.aborted_by->job);
      list[i].setAbortedByTask(v.aborted_by->task);
    }
  }
  respond(c, reply);
}

// --- Workers and the server -------------------------------------------------------------------

void Server::fill_worker_summary(const WorkerRecord& w, wire::WorkerSummary::Builder out) const {
  out.setId(w.id);
  out.setHostname(w.hostname);
  out.setCpus(w.cpus);
  out.setConnected(w.connection != nullptr);
  out.setConnectTime(w.connect_time);
  out.setEndTime(w.end_time);
  out.setEndReason(w.end_reason);
  out.setRunningTasks(w.connection ? scheduler_.running_tasks(w.id) : 0);
  out.setWorkDir(w.work_dir);
  out.setAddress(w.address);
  net::to_wire(w.resources, out.initResources(w.resources.resources.size()));
  out.setLimitTime(w.limit_time);
  out.setGroup(w.group);
  out.setPid(w.pid);
  out.setHeartbeatMs(static_cast<uint32_t>(w.heartbeat.count()));
  if (w.idle_timeout) out.setIdleTimeoutMs(static_cast<uint64_t>(w.idle_timeout->count()));
  out.setOnServerLost(w.on_server_lost);
  out.setReattachCount(w.reattach_count);
  out.setReattachTime(w.reattach_time);
  out.setState(w.connection ? wire::WorkerState::RUNNING
                            : w.end_state.value_or(wire::WorkerState::CONNECTION_LOST));
}

void Server::handle_worker_list(net::Connection& c, const std::vector<WorkerId>& ids) {
  capnp::MallocMessageBuilder reply;
  auto list = reply.initRoot<wire::ClientResponse>().initWorkers(ids.size());
  for (size_t i = 0; i < ids.size(); ++i) fill_worker_summary(workers_.at(ids[i]), list[i]);
  respond(c, reply);
}

void Server::handle_worker_stop(net::Connection& c, wire::WorkerSelector::Reader selector) {
  std::vector<WorkerId> ids;
  if (selector.isAll()) {
    for (const auto& [id, w] : workers_) {
      if (w.connection) ids.push_back(id);
    }
  } else {
    auto set = net::from_wire(selector.getIds());
    if (!set) return reply_error(c, "invalid worker selection: " + set.message());
    bool any_known = false;
    for (const IdRange& r : set->ranges()) {
      for (auto it = workers_.lower_bound(r.start); it != workers_.end() && it->first <= r.end;
           ++it) {
        if ((it->first - r.start) % r.step != 0) continue;
        any_known = true;
        if (it->second.connection) ids.push_back(it->first);
      }
    }
    if (!any_known) return reply_error(c, fmt::format("worker {} not found", set->to_string()));
  }
  for (WorkerId id : ids) {
    WorkerRecord& w = workers_.at(id);
    if (!w.end_state) w.end_state = wire::WorkerState::STOPPED;
    capnp::MallocMessageBuilder message;
    message.initRoot<wire::ToWorker>().setStop();
    send_to_worker(w, message);
    spdlog::info("stopping worker {}", id);
  }
  handle_worker_list(c, ids);
}

void Server::fill_server_info(wire::ServerInfo::Builder info) const {
  info.setServerUid(access_.server_uid);
  info.setHost(access_.client->host);
  info.setClientPort(access_.client->port);
  info.setWorkerPort(access_.worker->port);
  info.setWorkerHost(access_.worker->host);
  info.setPid(access_.pid);
  info.setStartTime(start_time_);
  info.setVersion(HQ_VERSION);
  info.setServerDir(options_.server_dir.string());
  info.setJournal(journal_path_.string());
  if (!journal_status_) info.setJournalError(journal_status_.message());
  info.setRestoredJobs(restored_jobs_);
  info.setRestoredTasks(restored_tasks_);
  info.setReplayMs(replay_ms_);
}

void Server::handle_server_info(net::Connection& c) {
  capnp::MallocMessageBuilder reply;
  fill_server_info(reply.initRoot<wire::ClientResponse>().initServerInfo());
  c.send(reply);  // even when the journal failed: this is where to read why
}

}  // namespace hq::server
