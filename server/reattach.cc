// Worker registration, and workers reattaching after a server restart (DESIGN.md, the
// durability contract, point 8): a worker whose connection broke comes back with its old id
// and what it holds (running tasks, results the server may not have recorded). The restarted
// server keeps the tasks that may be running as orphans (scheduler/reattach.cc) for
// --reattach-grace; a claim of an orphan keeps its instance, every other claim is killed.

#include <algorithm>
#include <map>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "net/convert.h"
#include "server/server_state.h"

namespace hq::server {

namespace {

constexpr uint64_t kYearMs = 366ull * 24 * 3600 * 1000;

std::vector<TaskKey> claimed_keys(wire::WorkerRegistration::Reader reg) {
  std::vector<TaskKey> keys;
  for (auto c : reg.getRunning()) keys.push_back(net::from_wire(c.getKey()));
  return keys;
}

void send_cancel(net::Connection& c, const std::vector<TaskKey>& keys) {
  if (keys.empty()) return;
  capnp::MallocMessageBuilder message;
  net::to_wire(keys, message.initRoot<wire::ToWorker>().initCancel(keys.size()));
  c.send(message);
}

}  // namespace

Status Server::read_registration(wire::WorkerRegistration::Reader reg, net::Connection& connection,
                                 WorkerRecord& w) const {
  auto resources = net::from_wire(reg.getResources());
  if (!resources) return resources.status();
  if (resources->resources.empty() && reg.getCpus() > 0) {
    resources->set(*parse_cpu_definition(std::to_string(reg.getCpus())));
  }
  if (resources->cpus() == 0) return Status::error("zero CPUs");
  if (reg.getHeartbeatMs() != 0 && reg.getHeartbeatMs() < 100) {
    return Status::error("a heartbeat shorter than 100ms");
  }
  if (reg.getTimeLimitMs() > kYearMs) return Status::error("a time limit longer than a year");
  if (reg.getIdleTimeoutMs() > kYearMs) return Status::error("an idle timeout longer than a year");
  const std::string policy = reg.getOnServerLost().cStr();
  if (policy != "" && policy != "stop" && policy != "finish-running" && policy != "reconnect") {
    return Status::error("an unknown --on-server-lost policy '" + policy + "'");
  }
  const int64_t now = unix_millis_now();
  w.hostname = reg.getHostname().cStr();
  w.cpus = resources->cpus();
  w.resources = std::move(*resources);
  if (reg.getTimeLimitMs() > 0) w.limit_time = now + static_cast<int64_t>(reg.getTimeLimitMs());
  w.group = reg.getGroup().size() ? reg.getGroup().cStr() : "default";
  w.allocation = reg.getAllocation().cStr();
  w.pid = reg.getPid();
  w.work_dir = reg.getWorkDir().cStr();
  w.address = connection.remote_address();
  w.connect_time = now;
  w.last_seen = asio::steady_timer::clock_type::now();
  w.heartbeat = reg.getHeartbeatMs() ? Millis(reg.getHeartbeatMs()) : options_.heartbeat;
  w.idle_timeout = options_.idle_timeout;
  if (reg.getIdleTimeoutMs()) w.idle_timeout = Millis(reg.getIdleTimeoutMs());
  w.on_server_lost = policy.empty() ? "stop" : policy;
  return Status::ok();
}

void Server::register_new_worker(const std::shared_ptr<net::Connection>& connection, WorkerId wid,
                                 wire::WorkerRegistration::Reader reg) {
  WorkerRecord& w = workers_.at(wid);
  w.connection = connection;
  // A worker that reports more often than the check runs is checked as often.
  if (!stopping_ &&
      heartbeat_timer_.expiry() - asio::steady_timer::clock_type::now() > w.heartbeat) {
    arm_heartbeat_check(w.heartbeat);
  }
  journal::EventMessage event(w.connect_time);
  auto connected = event.event().initWorkerConnected();
  connected.setWorker(wid);
  connected.setHostname(w.hostname);
  connected.setCpus(w.cpus);
  connected.setWorkDir(w.work_dir);
  connected.setAddress(w.address);
  connected.setReattaches(w.on_server_lost == "reconnect");
  record(event);
  // Claims of a worker that comes back unexpected (a server that gave up on it, another
  // server's worker): none of its tasks is one this server runs there.
  std::vector<TaskKey> stale = claimed_keys(reg);
  if (!stale.empty()) {
    spdlog::warn(
        "worker {} (was {} of server {}) claims {} task(s) this server does not expect "
        "there: killing them",
        wid, reg.getPreviousWorkerId(), reg.getPreviousServerUid().cStr(), stale.size());
  }
  // The worker learns its id, and gets tasks, once the id is durable: a crash right after
  // must not give the same id to the next worker.
  std::weak_ptr<net::Connection> weak = connection;
  when_durable([this, weak, wid, stale = std::move(stale)](const Status& stored) {
    auto c = weak.lock();
    if (!c || !c->is_open()) return;
    if (!stored) return c->close();
    WorkerRecord& w = workers_.at(wid);
    if (auto st = scheduler_.add_worker(wid, w.resources, w.limit_time, w.group); !st) {
      spdlog::error("worker {}: {}", wid, st.message());
      return c->close();
    }
    send_registered(*c, wid, w, stale);
    spdlog::info("worker {} connected from {} ({}, {})", wid, w.address, w.hostname,
                 describe(w.resources));
    allocator_->on_worker_connected(wid, w.allocation);
    request_schedule();
  });
}

void Server::send_registered(net::Connection& c, WorkerId wid, const WorkerRecord& w,
                             const std::vector<TaskKey>& stale) {
  capnp::MallocMessageBuilder reply;
  auto registered = reply.initRoot<wire::ToWorker>().initRegistered();
  registered.setWorkerId(wid);
  registered.setServerUid(access_.server_uid);
  registered.setHeartbeatMs(static_cast<uint32_t>(w.heartbeat.count()));
  if (options_.idle_timeout) {
    registered.setIdleTimeoutMs(static_cast<uint64_t>(options_.idle_timeout->count()));
  }
  c.send(reply);
  send_cancel(c, stale);
}

bool Server::expects_reattach(wire::WorkerRegistration::Reader reg) const {
  const WorkerId prev = reg.getPreviousWorkerId();
  return prev != 0 && reattaching_ &&
         std::string(reg.getPreviousServerUid().cStr()) == access_.server_uid &&
         reattach_expected_.contains(prev) && !workers_.contains(prev);
}

void Server::reattach_worker(std::shared_ptr<net::Connection> connection, WorkerRecord given,
                             wire::WorkerRegistration::Reader reg) {
  const WorkerId wid = reg.getPreviousWorkerId();
  reattach_expected_.erase(wid);
  given.id = wid;
  given.connection = connection;
  given.reattach_time = given.connect_time;
  given.reattach_count = std::max<uint32_t>(reg.getReattachCount(), 1);
  WorkerRecord& w = workers_[wid] = std::move(given);
  if (auto st = scheduler_.add_worker(wid, w.resources, w.limit_time, w.group); !st) {
    spdlog::error("worker {}: {}", wid, st.message());
    w.end_time = unix_millis_now();
    w.end_reason = "cannot reattach: " + st.message();
    w.end_state = wire::WorkerState::CONNECTION_LOST;
    w.connection.reset();
    return connection->close();
  }
  if (!stopping_ &&
      heartbeat_timer_.expiry() - asio::steady_timer::clock_type::now() > w.heartbeat) {
    arm_heartbeat_check(w.heartbeat);
  }
  journal::EventMessage event(w.connect_time);
  auto back = event.event().initWorkerReattached();
  back.setWorker(wid);
  back.setHostname(w.hostname);
  back.setAddress(w.address);
  record(event);

  // Adopted claims, by job, as the journal records them; stale ones are killed there.
  std::map<JobId, std::vector<std::pair<TaskKey, int64_t>>> adopted;
  std::vector<TaskKey> stale;
  for (auto c : reg.getRunning()) {
    const TaskKey key = net::from_wire(c.getKey());
    if (scheduler_.reattach_task(wid, key, c.getStartTime(), c.getVariant())) {
      adopted[key.job].emplace_back(key, c.getStartTime());
    } else {
      stale.push_back(key);
    }
  }
  struct End {
    TaskKey key;
    int64_t time;
    bool finished;
    std::string error;
  };
  std::vector<End> ends;
  uint32_t ignored = 0;
  for (auto c : reg.getEnded()) {
    const TaskKey key = net::from_wire(c.getKey());
    if (!scheduler_.reattach_task(wid, key, c.getStartTime())) {
      ++ignored;  // not the run this server waits for: its result is never recorded
      continue;
    }
    adopted[key.job].emplace_back(key, c.getStartTime());
    ends.push_back({key, c.getEndTime(), c.getFinished(), c.getError().cStr()});
  }
  for (auto& [job, tasks] : adopted) {
    journal::EventMessage claimed(w.connect_time);
    auto batch = claimed.event().initTasksReattached();
    batch.setJob(job);
    batch.setWorker(wid);
    auto list = batch.initTasks(static_cast<unsigned>(tasks.size()));
    auto rec = jobs_.find(job);
    for (size_t i = 0; i < tasks.size(); ++i) {
      list[i].setTask(tasks[i].first.task);
      list[i].setInstance(tasks[i].first.instance);
      list[i].setTime(tasks[i].second);
      if (rec != jobs_.end()) note_reattached(rec->second, tasks[i].first);
    }
    record(claimed);
  }
  // Results that arrived while the server was away: as if they had arrived live.
  for (const End& e : ends) apply_task_end(w, e.key, e.time, e.finished, e.error);

  send_registered(*connection, wid, w, stale);
  size_t running = 0;
  for (const auto& [job, tasks] : adopted) running += tasks.size();
  running -= ends.size();
  spdlog::info(
      "worker {} reattached from {} ({}): {} running task(s) kept, {} result(s) recorded, {} "
      "stale task(s) killed, {} stale result(s) ignored",
      wid, w.address, w.hostname, running, ends.size(), stale.size(), ignored);
  allocator_->on_worker_connected(wid, w.allocation);
  if (reattach_expected_.empty()) end_reattach_grace("every worker is back");
  after_state_change();
}

uint32_t Server::reattached_count(JobId job, const sched::TaskView& task) const {
  auto it = jobs_.find(job);
  if (it == jobs_.end()) return 0;
  auto t = it->second.reattached.find(task.id);
  if (t == it->second.reattached.end() || t->second.first != task.instance) return 0;
  return t->second.second;
}

void Server::start_reattach_grace() {
  const uint64_t orphans = scheduler_.orphan_count();
  if (orphans == 0 && reattach_expected_.empty()) return;
  reattaching_ = true;
  if (reattach_expected_.empty()) return end_reattach_grace("no worker was connected");
  spdlog::info("{} task(s) wait up to {} for {} worker(s) to reattach", orphans,
               format_duration(options_.reattach_grace), reattach_expected_.size());
  reattach_timer_.expires_after(options_.reattach_grace);
  reattach_timer_.async_wait([this](const std::error_code& error) {
    if (!error) end_reattach_grace("the reattach grace is over");
  });
}

void Server::end_reattach_grace(const char* why) {
  if (!reattaching_) return;
  reattaching_ = false;
  reattach_timer_.cancel();
  const int64_t now = unix_millis_now();
  for (WorkerId id : reattach_expected_) {
    journal::EventMessage lost(now);
    lost.event().initWorkerLost().setWorker(id);
    lost.event().getWorkerLost().setReason("did not reattach after a server restart");
    record(lost);
  }
  const size_t missing = reattach_expected_.size();
  reattach_expected_.clear();
  std::vector<TaskKey> requeued = scheduler_.end_reattach();
  journal::EventMessage ended(now);
  ended.event().setReattachEnded();
  record(ended);
  // The new instances must be durable before any of them goes out.
  if (!requeued.empty()) must_sync_seq_ = appended_seq_;
  spdlog::info("{}: {} task(s) nobody claimed wait again as a new instance, {} worker(s) lost", why,
               requeued.size(), missing);
  after_state_change();
}

}  // namespace hq::server
