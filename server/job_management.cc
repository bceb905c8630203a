// `hq task cancel`, `hq job forget` and `hq job progress`: the server's side.

#include <malloc.h>

#include <algorithm>
#include <chrono>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "server/server_state.h"

namespace hq::server {

namespace {

// How often, at most, a watcher hears of its jobs.
constexpr auto kWatchInterval = std::chrono::milliseconds(250);

bool task_ended(sched::TaskState s) {
  return s != sched::TaskState::kWaiting && s != sched::TaskState::kRunning;
}

}  // namespace

// --- hq task cancel ---------------------------------------------------------------------------

void Server::handle_task_cancel(net::Connection& c, wire::TaskCancelRequest::Reader request) {
  // A cancel the journal cannot store would kill tasks that run again after a restart.
  if (!journal_status_) return reply_error(c, journal_status_.message());
  const JobId job = request.getJob();
  if (!jobs_.count(job)) return reply_error(c, fmt::format("job {} not found", job));
  auto selection = net::from_wire(request.getTasks());
  if (!selection) return reply_error(c, "invalid task selection: " + selection.message());
  if (selection->empty()) return reply_error(c, "no task selected");
  const IdSet wanted = selection->normalized();

  // What the selection holds: tasks to cancel (not ended), tasks already ended, unknown ids.
  IdSetBuilder to_cancel;
  uint64_t found = 0, already_ended = 0;
  auto visit = [&](const sched::TaskView& v) {
    ++found;
    if (task_ended(v.state)) {
      ++already_ended;
    } else {
      to_cancel.add(v.id);
    }
  };
  if (wanted.size() > scheduler_.counts(job).total()) {
    // A selection larger than the job: walk the job, not the selection.
    scheduler_.for_each_task(job, [&](const sched::TaskView& v) {
      if (wanted.contains(v.id)) visit(v);
    });
  } else {
    wanted.for_each([&](uint32_t id) {
      if (auto v = scheduler_.task(job, id)) visit(*v);
    });
  }
  const uint64_t unknown = wanted.size() - found;
  if (found == 0) {
    return reply_error(c, fmt::format("job {} has no task {}", job, wanted.to_string()));
  }
  const IdSet canceled = std::move(to_cancel).build();

  const int64_t now = unix_millis_now();
  const sched::TaskCounts before = scheduler_.counts(job);
  std::vector<sched::Assignment> held = scheduler_.cancel_tasks(job, canceled, now);
  const sched::TaskCounts after = scheduler_.counts(job);
  const uint32_t n_canceled =
      after[sched::TaskState::kCanceled] - before[sched::TaskState::kCanceled];
  const uint32_t n_aborted = after[sched::TaskState::kAborted] - before[sched::TaskState::kAborted];
  if (n_canceled > 0 && journal_) {
    // Only the canceled tasks: their dependants' aborts follow from them on replay.
    journal::EventMessage event(now);
    auto e = event.event().initTasksCanceled();
    e.setJob(job);
    auto ranges = e.initTasks(static_cast<unsigned>(canceled.ranges().size()));
    for (size_t i = 0; i < canceled.ranges().size(); ++i) {
      ranges[i].setStart(canceled.ranges()[i].start);
      ranges[i].setEnd(canceled.ranges()[i].end);
      ranges[i].setStep(canceled.ranges()[i].step);
    }
    record(event);
  }
  if (n_canceled > 0) {
    spdlog::info("job {}: task(s) {} canceled, {} dependant(s) aborted", job, canceled.to_string(),
                 n_aborted);
  }
  send_cancels(held);
  capnp::MallocMessageBuilder reply;
  auto result = reply.initRoot<wire::ClientResponse>().initCanceled(1)[0];
  result.setJob(job);
  result.setCanceledTasks(n_canceled);
  result.setAlreadyDone(n_canceled == 0);
  result.setAbortedTasks(n_aborted);
  result.setEndedTasks(static_cast<uint32_t>(std::min<uint64_t>(already_ended, UINT32_MAX)));
  result.setUnknownTasks(static_cast<uint32_t>(std::min<uint64_t>(unknown, UINT32_MAX)));
  respond(c, reply);
  after_state_change();
}

// --- hq job forget ----------------------------------------------------------------------------

void Server::handle_job_forget(net::Connection& c, wire::JobForgetRequest::Reader request) {
  if (!journal_status_) return reply_error(c, journal_status_.message());
  uint32_t state_mask = 0;
  for (auto s : request.getStates()) {
    if (static_cast<unsigned>(s) < 32) state_mask |= 1u << static_cast<unsigned>(s);
  }
  const std::vector<JobId> ids = select_jobs(request.getSelector());
  std::vector<JobId> forgotten;
  uint32_t ignored = 0;
  const int64_t now = unix_millis_now();
  for (JobId id : ids) {
    const auto state = static_cast<unsigned>(scheduler_.job_state(id));
    if (!scheduler_.counts(id).complete() || (state_mask && !(state_mask & (1u << state)))) {
      ++ignored;
      continue;
    }
    if (Status st = scheduler_.remove_job(id); !st) {
      spdlog::info("job {} not forgotten: {}", id, st.message());
      ++ignored;
      continue;
    }
    jobs_.erase(id);
    reserved_.erase(id);
    for (auto& [wid, w] : workers_) w.known_jobs.erase(id);
    forgotten_.insert(id);
    forgotten.push_back(id);
    if (journal_) {
      journal::EventMessage event(now);
      event.event().initJobForgotten().setJob(id);
      record(event);
    }
  }
  if (!forgotten.empty()) {
    spdlog::info("forgot {} job(s)", forgotten.size());
    // The job's slots are large blocks, returned to the system when freed; what the many small
    // ones (descriptions, error texts) leave in the heap goes back too.
    malloc_trim(0);
  }
  capnp::MallocMessageBuilder reply;
  auto result = reply.initRoot<wire::ClientResponse>().initForgotten();
  auto list = result.initForgotten(static_cast<unsigned>(forgotten.size()));
  for (size_t i = 0; i < forgotten.size(); ++i) list.set(i, forgotten[i]);
  result.setIgnored(ignored);
  respond(c, reply);
}

// --- hq job progress --------------------------------------------------------------------------

void Server::handle_job_watch(const std::shared_ptr<net::Connection>& c,
                              wire::JobSelector::Reader selector) {
  Watcher watcher{c, select_jobs(selector)};
  // Counted as changed, so that the first message goes out at once.
  std::fill(std::begin(watcher.last_counts), std::end(watcher.last_counts), UINT32_MAX);
  watchers_.emplace(next_watcher_++, std::move(watcher));
  send_progress();
}

void Server::note_watchers() {
  if (watchers_.empty() || watch_armed_ || stopping_) return;
  if (!watch_timer_) watch_timer_ = std::make_unique<asio::steady_timer>(io_);
  watch_armed_ = true;
  watch_timer_->expires_after(kWatchInterval);
  watch_timer_->async_wait([this](const std::error_code& error) {
    watch_armed_ = false;
    if (!error) send_progress();
  });
}

bool Server::send_progress() {
  for (auto it = watchers_.begin(); it != watchers_.end();) {
    Watcher& w = it->second;
    auto connection = w.connection.lock();
    if (!connection || !connection->is_open()) {
      it = watchers_.erase(it);
      continue;
    }
    uint32_t counts[6] = {};
    uint32_t complete = 0;
    for (JobId id : w.jobs) {
      const sched::TaskCounts c = scheduler_.counts(id);  // a forgotten job: none, complete
      for (int s = 0; s < 6; ++s) counts[s] += c.by_state[s];
      complete += c.complete();
    }
    const bool done = complete == w.jobs.size();
    const bool changed =
        !std::equal(std::begin(counts), std::end(counts), std::begin(w.last_counts)) ||
        complete != w.last_complete;
    if (changed || done) {
      std::copy(std::begin(counts), std::end(counts), std::begin(w.last_counts));
      w.last_complete = complete;
      capnp::MallocMessageBuilder reply;
      auto p = reply.initRoot<wire::ClientResponse>().initProgress();
      auto out = p.initCounts();
      out.setWaiting(counts[static_cast<int>(sched::TaskState::kWaiting)]);
      out.setRunning(counts[static_cast<int>(sched::TaskState::kRunning)]);
      out.setFinished(counts[static_cast<int>(sched::TaskState::kFinished)]);
      out.setFailed(counts[static_cast<int>(sched::TaskState::kFailed)]);
      out.setCanceled(counts[static_cast<int>(sched::TaskState::kCanceled)]);
      out.setAborted(counts[static_cast<int>(sched::TaskState::kAborted)]);
      p.setJobs(static_cast<uint32_t>(w.jobs.size()));
      p.setCompleteJobs(complete);
      p.setDone(done);
      // Like every reply: sent once the state it shows is durable.
      respond(*connection, reply);
    }
    if (done) {
      it = watchers_.erase(it);
    } else {
      ++it;
    }
  }
  return !watchers_.empty();
}

}  // namespace hq::server
