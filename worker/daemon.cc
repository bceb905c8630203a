#include "worker/daemon_impl.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/host.h"
#include "net/access.h"
#include "net/convert.h"

namespace hq::worker {
namespace {

// The worker's resources: what detection finds, with `--cpus` and each `--resource` replacing
// the detected resource of their name (which is then not detected at all).
Result<ResourceDescriptor> worker_resources(const WorkerOptions& options) {
  ResourceDescriptor given;
  std::vector<std::string> defined;
  if (!options.cpus.empty()) {
    auto cpus = parse_cpu_definition(options.cpus);
    if (!cpus) return cpus.error();
    if (auto st = add_definition(given, std::move(*cpus), defined); !st) return Error{st.message()};
  }
  for (const std::string& text : options.resources) {
    auto def = parse_resource_definition(text);
    if (!def) return def.error();
    if (def->name == kCpus && !options.cpus.empty()) {
      return Error{"the CPUs are given twice, by --cpus and by --resource cpus=...: keep one"};
    }
    if (auto st = add_definition(given, std::move(*def), defined); !st) return Error{st.message()};
  }
  DetectOptions detect = options.detect;
  detect.cpus = detect.cpus && !given.find(kCpus);
  detect.mem = detect.mem && !given.find(kMem);
  detect.nvidia = detect.nvidia && !given.find(kNvidiaGpus);
  detect.amd = detect.amd && !given.find(kAmdGpus);
  auto descriptor = detect_resources(detect);
  if (!descriptor) return Error{"hardware detection failed: " + descriptor.message()};
  for (ResourceDefinition& def : given.resources) descriptor->set(std::move(def));
  if (!descriptor->find(kCpus)) {
    return Error{
        "the worker has no CPUs: give them with --cpus, or let it detect them "
        "(--detect-resources)"};
  }
  std::sort(descriptor->resources.begin(), descriptor->resources.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  return descriptor;
}

}  // namespace

Worker::~Worker() {
  if (!owned_work_dir_) return;
  std::error_code ec;
  fs::remove_all(options_.work_dir, ec);
  if (ec) {
    spdlog::warn("cannot remove the work directory '{}': {}", options_.work_dir.string(),
                 ec.message());
  }
}

Status Worker::start() {
  auto resources = worker_resources(options_);
  if (!resources) return resources.status();
  descriptor_ = std::move(*resources);
  pool_ = ResourcePool(descriptor_, names_);
  for (const ResourceDefinition& def : descriptor_.resources) {
    uint32_t id = names_.intern(def.name);
    if (labels_.size() <= id) labels_.resize(id + 1);
    for (const auto& group : def.groups) {
      labels_[id].insert(labels_[id].end(), group.begin(), group.end());
    }
  }
  cpus_id_ = names_.intern(kCpus);
  nvidia_id_ = names_.intern(kNvidiaGpus);
  amd_id_ = names_.intern(kAmdGpus);
  auto access =
      net::read_access_file(access_file_path(options_.server_dir), net::AccessUse::kWorker);
  if (!access) return access.status();
  if (options_.hostname.empty()) options_.hostname = local_hostname();
  if (options_.work_dir.empty()) {
    // Private and unpredictable: another user of the machine can neither guess nor plant it.
    std::error_code ec;
    fs::path tmp = fs::temp_directory_path(ec);
    if (ec) tmp = "/tmp";
    std::string pattern = (tmp / "hq-worker-XXXXXX").string();
    if (::mkdtemp(pattern.data()) == nullptr) {
      return Status::error(
          fmt::format("cannot create a work directory in '{}': {} (give one "
                      "with --work-dir)",
                      tmp.string(), std::strerror(errno)));
    }
    options_.work_dir = pattern;
    owned_work_dir_ = true;
  } else if (auto st = create_private_directories(options_.work_dir); !st) {
    return Status::error(fmt::format("cannot create work directory '{}': {}",
                                     options_.work_dir.string(), st.message()));
  }
  signals_.async_wait([this](const std::error_code& error, int signal) {
    if (!error) {
      shutdown(fmt::format("received signal {}", signal), 0, wire::WorkerStopReason::STOPPED);
    }
  });
  started_ = std::chrono::steady_clock::now();
  if (options_.time_limit) {
    lifetime_timer_.expires_after(*options_.time_limit);
    lifetime_timer_.async_wait([this](const std::error_code& error) {
      if (error) return;
      stopping_on_request_ = true;
      shutdown("time limit reached", 0, wire::WorkerStopReason::TIME_LIMIT_REACHED);
    });
  }
  net::async_connect(io_, access->worker->host, access->worker->port, wire::Role::WORKER,
                     access->worker->key,
                     [this](Result<net::Connected> connected) { on_connected(connected); });
  return Status::ok();
}

void Worker::on_connected(Result<net::Connected>& connected) {
  if (!connected) return shutdown("cannot connect to the server: " + connected.message(), 1);
  use_connection(connected->connection);
  capnp::MallocMessageBuilder message;
  fill_registration(message.initRoot<wire::FromWorker>().initRegister());
  connection_->send(message);
}

void Worker::use_connection(std::shared_ptr<net::Connection> connection) {
  connection_ = std::move(connection);
  server_leaving_ = false;
  connection_->start([this](net::Message& m) { on_message(m); },
                     [this, c = std::weak_ptr<net::Connection>(connection_)](
                         const std::string& reason) { on_closed(c, reason); });
}

void Worker::on_closed(const std::weak_ptr<net::Connection>& closed, const std::string& reason) {
  if (shut_down_) return io_.stop();         // our own close completed
  if (closed.lock() != connection_) return;  // an earlier connection, replaced already
  std::string why =
      reason.empty() ? "the server closed the connection" : "lost the server: " + reason;
  if (server_leaving_) why = "the server stopped without stopping its workers";
  // An orderly close means the server dropped this worker (its tasks run elsewhere now):
  // only a broken connection, or a server that leaves without stopping its workers, lets
  // them go on here.
  const bool broken = !reason.empty() || server_leaving_;
  if (!stopping_on_request_ && broken && worker_id_ != 0) {
    if (options_.on_server_lost == OnServerLost::kReconnect) return lose_server(why);
    if (options_.on_server_lost == OnServerLost::kFinishRunning && !running_.empty()) {
      return drain(why);
    }
  }
  shutdown(why, stopping_on_request_ ? 0 : 1);
}

void Worker::fill_registration(wire::WorkerRegistration::Builder reg) {
  reg.setHostname(options_.hostname);
  reg.setCpus(descriptor_.cpus());
  reg.setWorkDir(options_.work_dir.string());
  reg.setGroup(options_.group);
  reg.setAllocation(options_.allocation);
  reg.setPid(static_cast<uint32_t>(::getpid()));
  if (options_.heartbeat) reg.setHeartbeatMs(static_cast<uint32_t>(options_.heartbeat->count()));
  if (options_.idle_timeout) {
    reg.setIdleTimeoutMs(static_cast<uint64_t>(options_.idle_timeout->count()));
  }
  reg.setOnServerLost(on_server_lost_name(options_.on_server_lost));
  if (options_.time_limit) reg.setTimeLimitMs(static_cast<uint64_t>(remaining().count()));
  net::to_wire(descriptor_, reg.initResources(descriptor_.resources.size()));
  if (worker_id_ == 0) return;
  // Back after a loss: who it was, and what it holds.
  reg.setPreviousWorkerId(worker_id_);
  reg.setPreviousServerUid(server_uid_);
  reg.setReattachCount(reconnects_);
  auto running = reg.initRunning(static_cast<unsigned>(running_.size()));
  unsigned i = 0;
  for (const auto& [ref, task] : running_) {
    net::to_wire(task.key, running[i].initKey());
    running[i].setStartTime(task.start_time);
    running[i].setVariant(task.variant);
    auto units = running[i].initUnits(static_cast<unsigned>(task.allocation.size()));
    for (size_t k = 0; k < task.allocation.size(); ++k) {
      const AllocationEntry& a = task.allocation[k];
      units[k].setResource(names_.name(a.resource));
      units[k].setUnit(a.unit == kSumUnit ? 0 : a.unit);
      units[k].setAmount(a.amount);
    }
    ++i;
  }
  auto ended = reg.initEnded(static_cast<unsigned>(recent_ends_.size()));
  i = 0;
  for (const EndedTask& e : recent_ends_) {
    net::to_wire(e.key, ended[i].initKey());
    ended[i].setStartTime(e.start);
    ended[i].setEndTime(e.end);
    ended[i].setFinished(e.finished);
    ended[i].setError(e.error);
    ++i;
  }
}

// The connection broke (--on-server-lost reconnect): tasks and their output capture go on;
// queued tasks are dropped (the server gives them out again); reconnect until the timeout.
void Worker::lose_server(const std::string& why) {
  spdlog::warn("{}: keeping {} running task(s), reconnecting for up to {}", why, running_.size(),
               format_duration(options_.reconnect_timeout));
  connection_.reset();
  heartbeat_timer_.cancel();
  for (const TaskKey& key : queue_) {
    node_hosts_.erase(key);
    task_bodies_.erase(key.ref());
    task_entries_.erase(key.ref());
  }
  queue_.clear();
  serving_ = false;
  away_since_ = std::chrono::steady_clock::now();
  reconnect_delay_ = kReconnectFirst;
  schedule_reconnect();
}

void Worker::schedule_reconnect() {
  if (shut_down_) return;
  const auto away = std::chrono::steady_clock::now() - away_since_;
  if (away >= options_.reconnect_timeout) {
    return shutdown(fmt::format("the server did not come back within {} (--reconnect-timeout)",
                                format_duration(options_.reconnect_timeout)),
                    1);
  }
  const auto left = std::chrono::duration_cast<Millis>(options_.reconnect_timeout - away);
  reconnect_timer_.expires_after(std::min(reconnect_delay_, left));
  reconnect_delay_ = std::min(reconnect_delay_ * 2, kReconnectMax);
  reconnect_timer_.async_wait([this](const std::error_code& error) {
    if (error || shut_down_) return;
    // The access file of a restarted server: the same keys, maybe other ports.
    auto access =
        net::read_access_file(access_file_path(options_.server_dir), net::AccessUse::kWorker);
    if (!access) {
      spdlog::debug("reconnect: {}", access.message());
      return schedule_reconnect();
    }
    net::async_connect(io_, access->worker->host, access->worker->port, wire::Role::WORKER,
                       access->worker->key, [this](Result<net::Connected> connected) {
                         if (shut_down_) return;
                         if (!connected) {
                           spdlog::debug("reconnect: {}", connected.message());
                           return schedule_reconnect();
                         }
                         reattach(connected->connection);
                       });
  });
}

// Presents the old id and what the worker holds, once the streams of the tasks that ended
// meanwhile are synced (their results count only then).
void Worker::reattach(std::shared_ptr<net::Connection> connection) {
  ++reconnects_;
  auto broken = reports_.flush([this](const ReportBatch& batch) { remember_ends(batch); });
  for (const auto& writer : broken) drop_stream(writer);
  use_connection(std::move(connection));
  capnp::MallocMessageBuilder message;
  fill_registration(message.initRoot<wire::FromWorker>().initRegister());
  connection_->send(message);
  spdlog::info(
      "reconnected to the server: reattaching as worker {} with {} running task(s) "
      "and {} result(s)",
      worker_id_, running_.size(), recent_ends_.size());
}

void Worker::remember_ends(const ReportBatch& batch) {
  for (const TaskReport& r : batch.finished)
    recent_ends_.push_back({r.key, r.start, r.time, true, {}});
  for (const TaskReport& r : batch.failed) {
    recent_ends_.push_back({r.key, r.start, r.time, false, r.error});
  }
  while (recent_ends_.size() > kRecentEnds) recent_ends_.pop_front();
}

void Worker::on_message(net::Message& m) {
  auto msg = m.root<wire::ToWorker>();
  switch (msg.which()) {
    case wire::ToWorker::REGISTERED: {
      auto r = msg.getRegistered();
      if (worker_id_ != 0 && worker_id_ != r.getWorkerId()) {
        spdlog::warn(
            "the server registered this worker anew, as worker {} (was {}): it kills "
            "the tasks it no longer expects here",
            r.getWorkerId(), worker_id_);
      }
      worker_id_ = r.getWorkerId();
      server_uid_ = r.getServerUid().cStr();
      heartbeat_ = Millis(std::max<uint32_t>(r.getHeartbeatMs(), 100));
      if (!options_.idle_timeout && r.getIdleTimeoutMs() > 0) {
        options_.idle_timeout = Millis(static_cast<int64_t>(r.getIdleTimeoutMs()));
      }
      spdlog::info("worker {} registered with server {} ({})", worker_id_, server_uid_,
                   describe(descriptor_));
      send_heartbeats();
      update_idle();
      return;
    }
    case wire::ToWorker::ASSIGN: {
      auto a = msg.getAssign();
      for (auto job : a.getJobs()) {
        auto body = net::from_wire(job.getBody());
        if (!body) throw std::runtime_error("bad job description: " + body.message());
        ResourceRequest request = task_request(*body);
        PoolRequest pool_request = intern_request(request, names_);
        JobBody& b = jobs_[job.getJob()] = JobBody{std::move(*body), job.getStream().cStr(),
                                                   std::move(request), std::move(pool_request)};
        intern_variants(b);
      }
      for (auto t : a.getTaskBodies()) {
        auto job_it = jobs_.find(t.getJob());
        auto body = net::from_wire(t.getBody());
        if (!body) throw std::runtime_error("bad task description: " + body.message());
        if (job_it == jobs_.end()) continue;  // the task fails for the missing job body
        ResourceRequest request = task_request(*body);
        PoolRequest pool_request = intern_request(request, names_);
        JobBody& b = task_bodies_[TaskRef{t.getJob(), t.getTask()}] = JobBody{
            std::move(*body), job_it->second.stream, std::move(request), std::move(pool_request)};
        intern_variants(b);
      }
      for (auto e : a.getEntries()) {
        task_entries_[TaskRef{e.getJob(), e.getTask()}] =
            std::string(e.getEntry().cStr(), e.getEntry().size());
      }
      for (auto v : a.getVariants()) {
        task_variants_[TaskRef{v.getJob(), v.getTask()}] = v.getVariant();
      }
      for (auto k : a.getTasks()) queue_.push_back(net::from_wire(k));
      for (auto n : a.getNodes()) {
        auto& hosts = node_hosts_[net::from_wire(n.getKey())];
        hosts.clear();
        for (auto h : n.getHosts()) hosts.emplace_back(h.cStr(), h.size());
      }
      start_queued();
      update_idle();
      return;
    }
    case wire::ToWorker::CANCEL:
      for (auto k : msg.getCancel()) cancel(net::from_wire(k));
      update_idle();
      return;
    case wire::ToWorker::RETRACT:
      for (auto k : msg.getRetract()) {
        TaskKey key = net::from_wire(k);
        if (remove_queued(key)) reports_.pending().retracted.push_back(key), flush_soon();
      }
      update_idle();
      return;
    case wire::ToWorker::SERVING:
      // A secondary node of a multi-node task: busy (no idle timeout) while it serves.
      serving_ = msg.getServing();
      update_idle();
      return;
    case wire::ToWorker::STOP:
      stopping_on_request_ = true;
      return shutdown("stopped by the server", 0, wire::WorkerStopReason::STOPPED);
    case wire::ToWorker::SERVER_LEAVING:
      server_leaving_ = true;  // the close that follows is a loss, not a dismissal
      return;
  }
  throw std::runtime_error("unknown message from the server");
}

// The server is gone: queued tasks are dropped, running ones end, then the worker stops.
void Worker::drain(const std::string& reason) {
  spdlog::warn("{}: letting {} running task(s) finish", reason, running_.size());
  draining_ = true;
  drain_reason_ = reason;
  queue_.clear();
}

// Events of one loop iteration go out as one message.
void Worker::flush_soon() {
  if (flush_pending_) return;
  flush_pending_ = true;
  asio::post(io_, [this] { flush(); });
}

// The batch goes out with the next flush, or after `delay` (sooner if an earlier call asked).
void Worker::flush_later(Millis delay) {
  if (flush_pending_) return;
  const auto deadline = std::chrono::steady_clock::now() + delay;
  if (report_armed_ && report_deadline_ <= deadline) return;
  report_armed_ = true;
  report_deadline_ = deadline;
  report_timer_.expires_at(deadline);  // a wait armed before ends with operation_aborted
  report_timer_.async_wait([this](const std::error_code& error) {
    if (error || !report_armed_) return;
    report_armed_ = false;
    flush();
  });
}

// Sends what the turn gathered, once the streams of the ended tasks are synced.
void Worker::flush() {
  flush_pending_ = false;
  if (report_armed_) {
    report_armed_ = false;
    report_timer_.cancel();
  }
  if (!connection_ || !connection_->is_open()) return;
  auto broken = reports_.flush([this](const ReportBatch& batch) { send(batch); });
  for (const auto& writer : broken) drop_stream(writer);
  sent_since_heartbeat_ = true;
}

void Worker::send(const ReportBatch& batch) {
  remember_ends(batch);
  capnp::MallocMessageBuilder message;
  auto ev = message.initRoot<wire::FromWorker>().initEvents();
  auto started = ev.initStarted(batch.started.size());
  for (size_t i = 0; i < batch.started.size(); ++i) {
    net::to_wire(batch.started[i].key, started[i].initKey());
    started[i].setTime(batch.started[i].time);
  }
  auto finished = ev.initFinished(batch.finished.size());
  for (size_t i = 0; i < batch.finished.size(); ++i) {
    net::to_wire(batch.finished[i].key, finished[i].initKey());
    finished[i].setTime(batch.finished[i].time);
  }
  auto failed = ev.initFailed(batch.failed.size());
  for (size_t i = 0; i < batch.failed.size(); ++i) {
    net::to_wire(batch.failed[i].key, failed[i].initKey());
    failed[i].setTime(batch.failed[i].time);
    failed[i].setError(batch.failed[i].error);
  }
  net::to_wire(batch.retracted, ev.initRetracted(batch.retracted.size()));
  connection_->send(message);
}

void Worker::send_heartbeats() {
  if (!sent_since_heartbeat_) flush();
  sent_since_heartbeat_ = false;
  heartbeat_timer_.expires_after(heartbeat_);
  heartbeat_timer_.async_wait([this](const std::error_code& error) {
    if (!error) send_heartbeats();
  });
}

void Worker::update_idle() {
  if (!options_.idle_timeout) return;
  bool idle = queue_.empty() && running_.empty() && !serving_;
  if (!idle) {
    idle_armed_ = false;
    idle_timer_.cancel();
    return;
  }
  if (idle_armed_) return;
  idle_armed_ = true;
  idle_timer_.expires_after(*options_.idle_timeout);
  idle_timer_.async_wait([this](const std::error_code& error) {
    if (error || !idle_armed_) return;
    stopping_on_request_ = true;
    shutdown("idle timeout reached", 0, wire::WorkerStopReason::IDLE_TIMEOUT);
  });
}

// Kills everything and closes the connection. A stop on purpose (`why`) is announced to the
// server first, which then records a stop rather than a loss of this worker.
void Worker::shutdown(const std::string& reason, int code,
                      std::optional<wire::WorkerStopReason> why) {
  if (shut_down_) return;
  shut_down_ = true;
  exit_code_ = code;
  if (code == 0) {
    spdlog::info("worker stopping: {}", reason);
  } else {
    spdlog::error("worker stopping: {}", reason);
  }
  flush();  // reports of tasks that ended this turn must reach the server
  runner_.kill_all();
  close_streams();
  signals_.cancel();
  heartbeat_timer_.cancel();
  idle_timer_.cancel();
  lifetime_timer_.cancel();
  stream_flush_timer_.cancel();
  reconnect_timer_.cancel();
  report_timer_.cancel();
  if (!connection_ || !connection_->is_open()) return io_.stop();
  if (why) {
    capnp::MallocMessageBuilder message;
    message.initRoot<wire::FromWorker>().initStopping().setReason(*why);
    connection_->send(message);
  }
  connection_->close();
  auto backstop = std::make_shared<asio::steady_timer>(io_, std::chrono::seconds(2));
  backstop->async_wait([backstop, this](const std::error_code&) { io_.stop(); });
}

// Flushes, fsyncs and closes every stream file. Output arriving later is dropped.
void Worker::close_streams() {
  for (auto& [dir, writer] : stream_writers_) {
    if (auto st = writer->close(); !st) spdlog::error("{}", st.message());
  }
  stream_writers_.clear();
}

const char* on_server_lost_name(OnServerLost policy) {
  switch (policy) {
    case OnServerLost::kStop:
      return "stop";
    case OnServerLost::kFinishRunning:
      return "finish-running";
    case OnServerLost::kReconnect:
      return "reconnect";
  }
  return "stop";
}

int run_worker(const WorkerOptions& options) {
  // First, while this process has a single thread; it outlives everything below.
  auto reaper = TaskReaper::start();
  if (!reaper) {
    spdlog::error("{}", reaper.message());
    return 1;
  }
  asio::io_context io(1);
  Worker worker(io, options, **reaper);
  if (auto st = worker.start(); !st) {
    spdlog::error("{}", st.message());
    return 1;
  }
  io.run();
  return worker.exit_code();
}

}  // namespace hq::worker
