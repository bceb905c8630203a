#include "server/server.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <optional>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/host.h"
#include "net/convert.h"
#include "net/framing.h"
#include "server/server_state.h"

namespace hq::server {
namespace {

// How a worker ended, in HyperQueue's words (lower case, spaces): the start of its end reason.
std::string worker_end_text(wire::WorkerState state) {
  std::string text = net::worker_state_name(state);
  std::replace(text.begin(), text.end(), '_', ' ');
  return text;
}

}  // namespace

Server::Server(asio::io_context& io, ServerOptions options)
    : io_(io),
      options_(std::move(options)),
      signals_(io, SIGINT, SIGTERM),
      heartbeat_timer_(io),
      reattach_timer_(io),
      lazy_commit_timer_(io) {
  allocator_ = std::make_unique<Allocator>(
      io, fs::absolute(options_.server_dir),
      [this](const sched::WorkerShape& shape) { return scheduler_.allocation_demand(shape); },
      [this](const std::function<void(journal::schema::Event::Builder)>& fill) {
        journal::EventMessage event(unix_millis_now());
        fill(event.event());
        record(event);
      });
}

Server::~Server() {
  // What the last loop turns recorded: the journal writes committed groups before it closes.
  if (journal_) {
    flush_task_batches();
    journal_->commit({});
  }
  journal_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Status Server::start() {
  std::error_code ec;
  fs::create_directories(options_.server_dir, ec);
  if (ec) {
    return Status::error(fmt::format("cannot create server directory '{}': {}",
                                     options_.server_dir.string(), ec.message()));
  }
  fs::permissions(options_.server_dir, fs::perms::owner_all, fs::perm_options::replace, ec);

  // The lock is held for the life of the process and released by the kernel when it dies, so a
  // directory whose server was killed is free again at once.
  fs::path lock_path = lock_file_path(options_.server_dir);
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (lock_fd_ < 0) {
    return Status::error(
        fmt::format("cannot open lock file '{}': {}", lock_path.string(), std::strerror(errno)));
  }
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    std::string who;
    auto access =
        net::read_access_file(access_file_path(options_.server_dir), net::AccessUse::kAny);
    if (access && access->client) {
      who = fmt::format(" (pid {}, listening on {}:{})", access->pid, access->client->host,
                        access->client->port);
    }
    return Status::error(fmt::format(
        "a server is already running in '{}'{}; stop it with `hq server stop` or use another "
        "--server-dir",
        options_.server_dir.string(), who));
  }

  // Read before the journal opens: a mistake in the file must not leave a journal behind.
  std::optional<net::AccessRecord> given;
  if (!options_.access_file.empty()) {
    auto read = net::read_access_file(options_.access_file, net::AccessUse::kServer);
    if (!read) return read.status();
    given = std::move(*read);
  }

  // Connections must never take the descriptors the journal needs (handshakes in flight are
  // capped per listener as well: net/connection.h).
  raise_descriptor_limit();
  if (auto st = open_journal(); !st) return st;

  const fs::path access_path = access_file_path(options_.server_dir);
  const std::string host = options_.host.empty() ? local_hostname() : options_.host;
  access_ = net::new_access_record(host, host);
  // Ports the server must listen on (from --access-file), and ports it prefers (its previous
  // ones) when the options leave them free.
  uint16_t client_port = options_.client_port, worker_port = options_.worker_port;
  uint16_t client_before = 0, worker_before = 0;
  const std::string& journal_uid = journal_ ? journal_->recovery().server_uid : std::string();
  if (given) {
    // The server is the one the file describes: its keys, its UID, its hosts and ports.
    if (!journal_uid.empty() && journal_uid != given->server_uid) {
      return Status::error(fmt::format(
          "the journal '{}' belongs to server {}, but the access file '{}' is of server {}: "
          "start with the access file of that server (its server directory's access.json), or "
          "with another journal",
          journal_path_.string(), journal_uid, options_.access_file.string(), given->server_uid));
    }
    access_.server_uid = given->server_uid;
    access_.client = given->client;
    access_.worker = given->worker;
    client_port = access_.client->port;
    worker_port = access_.worker->port;
  } else if (fs::exists(access_path)) {
    // A restarted server keeps its access file: the same keys (clients, scripts and workers set
    // up with it keep working), the same server UID as its journal, and the same ports where
    // free.
    if (auto read = net::read_access_file(access_path, net::AccessUse::kServer)) {
      access_.client->key = read->client->key;
      access_.worker->key = read->worker->key;
      if (journal_) access_.server_uid = read->server_uid;
      client_before = read->client->port;
      worker_before = read->worker->port;
    } else {
      spdlog::warn("ignoring the previous access file: {}", read.message());
    }
  }
  if (!journal_uid.empty()) access_.server_uid = journal_uid;
  auto listen = [&](uint16_t wanted, uint16_t before, wire::Role role, const net::Key& key,
                    const char* what) -> Result<std::unique_ptr<net::Listener>> {
    if (wanted == 0 && before != 0) {
      auto same = net::Listener::bind(io_, "0.0.0.0", before, role, key, access_.server_uid);
      if (same) return same;
      spdlog::warn("the previous {} port {} is taken ({}); picking another", what, before,
                   same.message());
    }
    auto bound = net::Listener::bind(io_, "0.0.0.0", wanted, role, key, access_.server_uid);
    if (!bound) {
      std::string from =
          given ? fmt::format(" (from the access file '{}')", options_.access_file.string()) : "";
      return Error{fmt::format("cannot listen for {}s on port {}{}: {}", what, wanted, from,
                               bound.message())};
    }
    return bound;
  };
  auto clients =
      listen(client_port, client_before, wire::Role::CLIENT, access_.client->key, "client");
  if (!clients) return clients.status();
  auto workers =
      listen(worker_port, worker_before, wire::Role::WORKER, access_.worker->key, "worker");
  if (!workers) return workers.status();
  client_listener_ = std::move(*clients);
  worker_listener_ = std::move(*workers);
  access_.client->port = client_listener_->port();
  access_.worker->port = worker_listener_->port();
  access_.pid = static_cast<int>(::getpid());
  start_time_ = access_.start_time = unix_millis_now();

  if (journal_) {
    journal::EventMessage started(start_time_);
    auto e = started.event().initServerStarted();
    e.setServerUid(access_.server_uid);
    e.setVersion(HQ_VERSION);
    e.setReattach(true);
    record(started);
  }
  if (auto st = net::write_access_file(access_path, access_); !st) return st;

  client_listener_->start([this](std::shared_ptr<net::Connection> c) { on_client(std::move(c)); });
  worker_listener_->start([this](std::shared_ptr<net::Connection> c) { on_worker(std::move(c)); });
  signals_.async_wait([this](const std::error_code& error, int signal) {
    if (error) return;
    spdlog::info("received signal {}, stopping; workers keep their tasks for the next server",
                 signal);
    stop(/*stop_workers=*/false);
  });
  check_heartbeats();
  start_reattach_grace();
  spdlog::info("server {} started in '{}': clients on {}:{}, workers on {}:{}", access_.server_uid,
               options_.server_dir.string(), access_.client->host, access_.client->port,
               access_.worker->host, access_.worker->port);
  return Status::ok();
}

void Server::stop(bool stop_workers) {
  if (stopping_) return;
  stopping_ = true;
  leaving_ = !stop_workers;
  if (client_listener_) client_listener_->stop();
  if (worker_listener_) worker_listener_->stop();
  signals_.cancel();
  heartbeat_timer_.cancel();
  reattach_timer_.cancel();
  lazy_commit_timer_.cancel();
  allocator_->stop(/*cancel=*/stop_workers);
  // Workers are told to stop, so that they end cleanly rather than as lost; or told that the
  // server leaves, so that they keep their tasks and reattach to the next server. The journal
  // learns which: stopped workers are not waited for after a restart.
  const int64_t now = unix_millis_now();
  for (auto& [id, w] : workers_) {
    if (!w.connection) continue;
    capnp::MallocMessageBuilder message;
    if (stop_workers) {
      if (!w.end_state) w.end_state = wire::WorkerState::STOPPED;
      message.initRoot<wire::ToWorker>().setStop();
      journal::EventMessage lost(now);
      lost.event().initWorkerLost().setWorker(id);
      lost.event().getWorkerLost().setReason(worker_end_text(wire::WorkerState::STOPPED));
      record(lost);
    } else {
      message.initRoot<wire::ToWorker>().setServerLeaving();
    }
    w.connection->send(message);
    w.connection->close();
  }
  for (const auto& c : clients_) c->close();
  finish_stop_when_idle();
  // Peers that do not finish the TLS shutdown must not keep the process alive.
  auto backstop = std::make_shared<asio::steady_timer>(io_, std::chrono::seconds(2));
  backstop->async_wait([backstop, this](const std::error_code&) { io_.stop(); });
  spdlog::info("server stopped");
}

void Server::finish_stop_when_idle() {
  if (!stopping_ || !clients_.empty()) return;
  for (const auto& [id, w] : workers_) {
    if (w.connection) return;
  }
  io_.stop();
}

// --- Workers ----------------------------------------------------------------------------------

void Server::on_worker(std::shared_ptr<net::Connection> connection) {
  if (stopping_) return connection->close();
  // The id is 0 until the worker registers.
  auto id = std::make_shared<WorkerId>(0);
  std::weak_ptr<net::Connection> weak = connection;
  connection->start(
      [this, weak, id](net::Message& message) {
        if (auto c = weak.lock()) on_worker_message(c, id.get(), message);
      },
      [this, id](const std::string& reason) {
        if (*id != 0) on_worker_lost(*id, reason);
      });
}

void Server::on_worker_message(std::shared_ptr<net::Connection> connection, WorkerId* id,
                               net::Message& message) {
  auto msg = message.root<wire::FromWorker>();
  switch (msg.which()) {
    case wire::FromWorker::REGISTER: {
      if (*id != 0) throw std::runtime_error("worker registered twice");
      auto reg = msg.getRegister();
      WorkerRecord w;
      if (auto st = read_registration(reg, *connection, w); !st) {
        throw std::runtime_error("worker registration: " + st.message());
      }
      if (expects_reattach(reg)) {
        *id = reg.getPreviousWorkerId();
        return reattach_worker(connection, std::move(w), reg);
      }
      WorkerId wid = ++last_worker_id_;
      *id = wid;
      w.id = wid;
      workers_[wid] = std::move(w);
      register_new_worker(connection, wid, reg);
      return;
    }
    case wire::FromWorker::EVENTS: {
      if (*id == 0) throw std::runtime_error("worker sent events before registering");
      WorkerRecord& w = workers_.at(*id);
      w.last_seen = asio::steady_timer::clock_type::now();
      handle_worker_events(w, msg.getEvents());
      return;
    }
    case wire::FromWorker::STOPPING: {
      if (*id == 0) throw std::runtime_error("worker announced its stop before registering");
      WorkerRecord& w = workers_.at(*id);
      w.last_seen = asio::steady_timer::clock_type::now();
      if (w.end_state) return;  // the server decided first
      switch (msg.getStopping().getReason()) {
        case wire::WorkerStopReason::STOPPED:
          w.end_state = wire::WorkerState::STOPPED;
          return;
        case wire::WorkerStopReason::IDLE_TIMEOUT:
          w.end_state = wire::WorkerState::IDLE_TIMEOUT;
          return;
        case wire::WorkerStopReason::TIME_LIMIT_REACHED:
          w.end_state = wire::WorkerState::TIME_LIMIT_REACHED;
          return;
      }
      throw std::runtime_error("unknown stop reason from worker");
    }
  }
  throw std::runtime_error("unknown message from worker");
}

namespace {

bool ended(const std::optional<sched::TaskView>& v) {
  return !v || (v->state != sched::TaskState::kWaiting && v->state != sched::TaskState::kRunning);
}

}  // namespace

bool Server::apply_task_end(WorkerRecord& w, TaskKey key, int64_t time, bool finished,
                            const std::string& error) {
  // A report may only give back the CPUs of a canceled task: only real ends are recorded.
  const bool live = !ended(scheduler_.task(key.job, key.task));
  if (finished) {
    if (!scheduler_.task_finished(w.id, key, time)) return false;
    if (live) record_task(TaskRecord::kFinished, w.id, key, time);
    return true;
  }
  if (!scheduler_.task_failed(w.id, key, time, error)) return false;
  if (!live) return true;
  journal::EventMessage event(time);
  auto failed = event.event().initTaskFailed();
  failed.setJob(key.job);
  failed.setTask(key.task);
  failed.setInstance(key.instance);
  failed.setError(error);
  failed.setWorker(w.id);
  record(event);
  return true;
}

void Server::handle_worker_events(WorkerRecord& w, wire::WorkerEvents::Reader events) {
  bool changed = false;
  // The worker started its new tasks on what the ended ones left: ends of tasks that started
  // before this message go first, and a task that started and ended within it ends right after
  // its start, so that the model never holds more than the worker did.
  auto started = events.getStarted();
  std::vector<TaskKey> started_here;
  started_here.reserve(started.size());
  for (auto e : started) started_here.push_back(net::from_wire(e.getKey()));
  std::vector<TaskKey> sorted_starts = started_here;
  std::sort(sorted_starts.begin(), sorted_starts.end());
  auto started_here_too = [&](const TaskKey& key) {
    return std::binary_search(sorted_starts.begin(), sorted_starts.end(), key);
  };
  // (key, index into finished, or into failed when `failed`) of the ends after their starts.
  struct LaterEnd {
    TaskKey key;
    uint32_t index;
    bool failed;
    bool operator<(const LaterEnd& o) const { return key < o.key; }
  };
  std::vector<LaterEnd> later;
  auto finished = events.getFinished();
  auto failed = events.getFailed();
  auto end_one = [&](const LaterEnd& e) {
    if (e.failed) {
      auto f = failed[e.index];
      return apply_task_end(w, e.key, f.getTime(), false, f.getError().cStr());
    }
    return apply_task_end(w, e.key, finished[e.index].getTime(), true, {});
  };
  auto end_now_or_later = [&](const LaterEnd& e) {
    if (started_here_too(e.key)) {
      later.push_back(e);
    } else {
      changed |= end_one(e);
    }
  };
  for (uint32_t i = 0; i < finished.size(); ++i) {
    end_now_or_later({net::from_wire(finished[i].getKey()), i, false});
  }
  for (uint32_t i = 0; i < failed.size(); ++i) {
    end_now_or_later({net::from_wire(failed[i].getKey()), i, true});
  }
  std::sort(later.begin(), later.end());
  for (uint32_t i = 0; i < started.size(); ++i) {
    const TaskKey& key = started_here[i];
    if (scheduler_.task_started(w.id, key, started[i].getTime())) {
      record_task(TaskRecord::kStarted, w.id, key, started[i].getTime());
      changed = true;
    }
    auto end = std::lower_bound(later.begin(), later.end(), LaterEnd{key, 0, false});
    if (end != later.end() && end->key == key) changed |= end_one(*end);
  }
  for (auto k : events.getRetracted()) {
    // Back to waiting as the same instance, never started: within the job's reservation, which
    // is all the journal must know.
    changed |= scheduler_.task_retracted(w.id, net::from_wire(k));
  }
  if (changed) after_state_change();
}

void Server::on_worker_lost(WorkerId id, const std::string& reason) {
  auto it = workers_.find(id);
  if (it == workers_.end() || it->second.end_time != 0) return;
  WorkerRecord& w = it->second;
  if (leaving_) {
    // The server leaves its workers running (SIGTERM): nothing of them changes in the journal,
    // so that the next server waits for them and their tasks.
    w.connection.reset();
    return finish_stop_when_idle();
  }
  w.end_time = unix_millis_now();
  // Stopped on purpose (by the server, or announced by the worker: SIGTERM, idle timeout, time
  // limit), or lost: the server gave up on its heartbeats (end_state already set), or the
  // connection ended unannounced (a crash, SIGKILL, a broken network). Only a loss counts as a
  // crash of its tasks.
  if (!w.end_state) w.end_state = wire::WorkerState::CONNECTION_LOST;
  const bool lost = *w.end_state == wire::WorkerState::CONNECTION_LOST ||
                    *w.end_state == wire::WorkerState::HEARTBEAT_LOST;
  if (w.end_reason.empty()) {
    w.end_reason = worker_end_text(*w.end_state);
    if (*w.end_state == wire::WorkerState::CONNECTION_LOST && !reason.empty()) {
      w.end_reason += ": " + reason;
    }
  }
  w.connection.reset();
  allocator_->on_worker_lost(id);
  std::vector<TaskKey> requeued = scheduler_.remove_worker(id, w.end_time, lost);
  journal::EventMessage event(w.end_time);
  event.event().initWorkerLost().setWorker(id);
  event.event().getWorkerLost().setReason(w.end_reason);
  record(event);
  record_requeued(requeued);
  for (const TaskKey& key : scheduler_.take_crash_failures()) {
    auto view = scheduler_.task(key.job, key.task);
    journal::EventMessage failed(w.end_time);
    auto e = failed.event().initTaskFailed();
    e.setJob(key.job);
    e.setTask(key.task);
    e.setInstance(key.instance);
    if (view && view->error) e.setError(*view->error);
    record(failed);
    spdlog::info("task {}.{} failed: its crash limit is reached", key.job, key.task);
  }
  spdlog::info("worker {} lost: {}; {} task(s) back to waiting", id, w.end_reason, requeued.size());
  after_state_change();
  finish_stop_when_idle();
}

void Server::check_heartbeats() {
  auto now = asio::steady_timer::clock_type::now();
  // Checked as often as the most frequent heartbeat: a worker is declared lost at most one of
  // its own intervals late.
  Millis period = options_.heartbeat;
  for (auto& [id, w] : workers_) {
    if (!w.connection) continue;
    auto limit = w.heartbeat * options_.missed_heartbeats;
    if (now - w.last_seen > limit && !w.end_state) {
      w.end_state = wire::WorkerState::HEARTBEAT_LOST;
      w.end_reason = fmt::format("{} (silent for more than {})",
                                 worker_end_text(wire::WorkerState::HEARTBEAT_LOST),
                                 format_duration(std::chrono::duration_cast<Millis>(limit)));
      w.connection->close();
      continue;
    }
    period = std::min(period, w.heartbeat);
  }
  arm_heartbeat_check(period);
}

void Server::arm_heartbeat_check(Millis period) {
  // Re-arming cancels the pending wait, whose handler then does nothing.
  heartbeat_timer_.expires_after(period);
  heartbeat_timer_.async_wait([this](const std::error_code& error) {
    if (!error) check_heartbeats();
  });
}

namespace {

std::map<WorkerId, std::vector<TaskKey>> by_worker(const std::vector<sched::Assignment>& list) {
  std::map<WorkerId, std::vector<TaskKey>> out;
  for (const auto& a : list) out[a.worker].push_back(a.key);
  return out;
}

}  // namespace

void Server::send_cancels(const std::vector<sched::Assignment>& held) {
  for (auto& [wid, keys] : by_worker(held)) {
    auto it = workers_.find(wid);
    if (it == workers_.end() || !it->second.connection) continue;
    capnp::MallocMessageBuilder message;
    net::to_wire(keys, message.initRoot<wire::ToWorker>().initCancel(keys.size()));
    send_to_worker(it->second, message);
  }
}

void Server::send_to_worker(WorkerRecord& w, capnp::MessageBuilder& message) {
  if (!w.connection) return;
  // A journal that lost records cannot back any assignment: nothing goes out until a restart.
  if (journal_broken_) return;
  if (!journal_ || (durable_seq_ >= must_sync_seq_ && worker_sends_waiting_ == 0)) {
    return w.connection->send(message);
  }
  // Behind the records it depends on, and in order with the messages already waiting: a worker
  // never gets a cancel or a retraction before the task it names. While the journal fails to
  // write, it waits (the records are retried), so that no task runs unless the journal knows
  // it may have run.
  auto frame = std::make_shared<kj::Array<capnp::word>>(net::encode(message));
  ++worker_sends_waiting_;
  auto send = [this, frame,
               weak = std::weak_ptr<net::Connection>(w.connection)](const Status& stored) {
    --worker_sends_waiting_;
    if (!stored) return;  // never stored: the worker must not act on it
    if (auto c = weak.lock()) c->send_frame(std::move(*frame));
  };
  durable_waiters_.emplace_back(must_sync_seq_, std::move(send));
  commit_now();
}

// --- Scheduling -------------------------------------------------------------------------------

void Server::set_serving(WorkerRecord& w, bool serving) {
  if (w.serving == serving) return;
  w.serving = serving;
  capnp::MallocMessageBuilder message;
  message.initRoot<wire::ToWorker>().setServing(serving);
  send_to_worker(w, message);
}

void Server::after_state_change() {
  // Secondary nodes whose multi-node task ended take work again: they may idle out again too.
  for (auto& [id, w] : workers_) {
    if (w.serving && w.connection && !scheduler_.serving(id)) set_serving(w, false);
  }
  for (JobId id : scheduler_.take_aborted_jobs()) {
    spdlog::info("job {}: more failed tasks than --max-fails allows; the rest is aborted", id);
    journal::EventMessage event(unix_millis_now());
    event.event().initJobAborted().setJob(id);
    record(event);
  }
  send_cancels(scheduler_.take_kills());
  const std::vector<JobId> completed = scheduler_.take_completed_jobs();
  for (JobId id : completed) {
    auto it = jobs_.find(id);
    if (it != jobs_.end() && it->second.end_time == 0 && !scheduler_.job_open(id)) {
      it->second.end_time = unix_millis_now();
    }
  }
  notify_waiters(completed);
  note_watchers();
  request_schedule();
}

void Server::request_schedule() {
  if (schedule_pending_ || stopping_) return;
  schedule_pending_ = true;
  // Coalesces the events of one loop iteration into one scheduling pass.
  asio::post(io_, [this] { run_schedule(); });
}

void Server::run_schedule() {
  schedule_pending_ = false;
  if (stopping_ || journal_broken_) return;
  sched::Decisions decisions = scheduler_.schedule(unix_millis_now());
  if (decisions.empty()) return;

  JobId last = 0;
  bool graph_tasks = false;
  for (const auto& a : decisions.assign) {
    if (a.key.job != last) reserve_assigned(last = a.key.job);
    graph_tasks = graph_tasks || scheduler_.dependency_count(a.key.job) > 0;
  }
  if (graph_tasks && journal_) {
    // A task of a graph may be ready because its dependencies finished: those ends are synced
    // before it goes out, so that a crash never forgets a finish the dependant builds on (the
    // dependant would then run again after the rerun dependency).
    flush_task_batches();
    must_sync_seq_ = appended_seq_;
  }
  std::map<TaskKey, std::vector<std::string>> hosts;  // of multi-node tasks, the runner first
  for (const auto& a : decisions.assign) {
    if (a.others.empty()) continue;
    auto& list = hosts[a.key];
    list.push_back(workers_.at(a.worker).hostname);
    for (WorkerId o : a.others) list.push_back(workers_.at(o).hostname);
  }
  // Tasks with alternatives placed with another than the first (the worker takes that one).
  std::map<TaskKey, uint8_t> variants;
  for (const auto& a : decisions.assign) {
    if (a.variant != 0) variants[a.key] = a.variant;
  }
  for (auto& [wid, keys] : by_worker(decisions.assign)) {
    WorkerRecord& w = workers_.at(wid);
    std::vector<JobId> new_jobs;
    for (const TaskKey& k : keys) {
      if (w.known_jobs.insert(k.job).second) new_jobs.push_back(k.job);
    }
    capnp::MallocMessageBuilder message;
    auto out = message.initRoot<wire::ToWorker>().initAssign();
    auto jobs = out.initJobs(new_jobs.size());
    for (size_t i = 0; i < new_jobs.size(); ++i) {
      const JobRecord& job = jobs_.at(new_jobs[i]);
      jobs[i].setJob(new_jobs[i]);
      net::to_wire(job.description.body, jobs[i].initBody());
      jobs[i].setStream(job.description.stream);
    }
    net::to_wire(keys, out.initTasks(keys.size()));
    size_t own_bodies = 0;
    // Tasks of job files and of open jobs come with their own bodies.
    auto own_body = [this](const TaskKey& k) {
      const JobRecord& r = jobs_.at(k.job);
      return !r.description.tasks.empty() || !r.added.empty();
    };
    for (const TaskKey& k : keys) own_bodies += own_body(k);
    auto bodies = out.initTaskBodies(own_bodies);
    size_t b = 0;
    for (const TaskKey& k : keys) {
      if (!own_body(k)) continue;
      const JobDescriptionSpec& d = jobs_.at(k.job).holder(k.task);
      bodies[b].setJob(k.job);
      bodies[b].setTask(k.task);
      net::to_wire(task_body(d, k.task), bodies[b++].initBody());
    }
    size_t with_entry = 0;
    for (const TaskKey& k : keys) {
      with_entry += !jobs_.at(k.job).holder(k.task).entries.empty();
    }
    auto entries = out.initEntries(with_entry);
    size_t e = 0;
    for (const TaskKey& k : keys) {
      const JobDescriptionSpec& d = jobs_.at(k.job).holder(k.task);
      if (d.entries.empty()) continue;
      const std::string* entry = task_entry(d, k.task);
      entries[e].setJob(k.job);
      entries[e].setTask(k.task);
      entries[e++].setEntry(entry ? *entry : std::string());
    }
    size_t with_variant = 0;
    for (const TaskKey& k : keys) with_variant += variants.count(k);
    auto variant_list = out.initVariants(with_variant);
    size_t vi = 0;
    for (const TaskKey& k : keys) {
      auto it = variants.find(k);
      if (it == variants.end()) continue;
      variant_list[vi].setJob(k.job);
      variant_list[vi].setTask(k.task);
      variant_list[vi++].setVariant(it->second);
    }
    size_t multi = 0;
    for (const TaskKey& k : keys) multi += hosts.count(k);
    auto nodes = out.initNodes(multi);
    size_t n = 0;
    for (const TaskKey& k : keys) {
      auto it = hosts.find(k);
      if (it == hosts.end()) continue;
      net::to_wire(k, nodes[n].initKey());
      auto list = nodes[n++].initHosts(it->second.size());
      for (size_t i = 0; i < it->second.size(); ++i) list.set(i, it->second[i]);
    }
    if (!w.connection) continue;
    // Sent once the journal has reserved these tasks (above), so that after a crash a task the
    // worker may have started comes back as a new instance (never runs twice as one instance).
    send_to_worker(w, message);
  }

  for (const auto& a : decisions.assign) {
    for (WorkerId o : a.others) set_serving(workers_.at(o), true);
  }
  for (auto& [wid, keys] : by_worker(decisions.retract)) {
    WorkerRecord& w = workers_.at(wid);
    capnp::MallocMessageBuilder message;
    net::to_wire(keys, message.initRoot<wire::ToWorker>().initRetract(keys.size()));
    send_to_worker(w, message);
  }
}

int run_server(const ServerOptions& options) {
  // A file size limit (ulimit -f) must fail the journal's write, which the server reports, not
  // kill the process.
  ::signal(SIGXFSZ, SIG_IGN);
  asio::io_context io(1);
  Server server(io, options);
  if (auto st = server.start(); !st) {
    spdlog::error("{}", st.message());
    return 1;
  }
  if (options.on_started) {
    capnp::MallocMessageBuilder info;
    server.fill_server_info(info.initRoot<wire::ServerInfo>());
    capnp::SegmentArrayMessageReader reader(info.getSegmentsForOutput());
    options.on_started(reader);
  }
  io.run();
  return 0;
}

}  // namespace hq::server
