#include "worker/daemon.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <map>
#include <optional>
#include <unordered_map>
#include <vector>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/host.h"
#include "common/job_spec.h"
#include "common/placeholders.h"
#include "common/resource_pool.h"
#include "common/resources.h"
#include "net/access.h"
#include "net/connection.h"
#include "net/convert.h"
#include "output-stream/stream.h"
#include "worker/process.h"
#include "worker/reaper.h"
#include "worker/reports.h"

namespace hq::worker {
namespace {

struct JobBody {
  TaskBodySpec body;
  // A pattern (resolve_stream_dir); empty: no stream (see JobDescriptionSpec::stream).
  std::string stream;
  // What each task needs: body.resources, or `body.cpus` whole CPUs when that is empty.
  ResourceRequest request;
  PoolRequest pool_request;  // `request` interned in the worker's ResourceNames
  // body.variants, each interned as pool_request (the first is `request` again); empty: none.
  std::vector<PoolRequest> variant_pools = {};

  // Variant `v` of the request (0 when the body has none).
  const ResourceRequest& request_of(uint8_t v) const {
    return v < body.variants.size() ? body.variants[v] : request;
  }
  const PoolRequest& pool_of(uint8_t v) const {
    return v < variant_pools.size() ? variant_pools[v] : pool_request;
  }
};

struct RunningTask {
  TaskKey key;
  pid_t pid = 0;
  int64_t start_time = 0;  // Unix ms
  uint8_t variant = 0;     // the resource variant it runs with (HQ_RESOURCE_VARIANT)
  Allocation allocation;   // given back to the pool when the task ends
  bool canceled = false;
  bool timed_out = false;  // killed by the job's --time-limit
  // HQ_NODE_FILE and HQ_HOST_FILE of a multi-node task, removed at its end.
  std::vector<std::string> node_files;
  std::shared_ptr<asio::steady_timer> time_limit;
  // The writer of the job's stream directory, when a channel of the task goes there.
  std::shared_ptr<stream::StreamWriter> stream;
  std::string stream_error;  // the first failed write of this task's records; fails the task
  // `--task-dir`: HQ_TASK_DIR, removed at the task's end; empty: none.
  std::string task_dir;
  // `:rm-if-finished` output files, removed when the task finishes.
  std::vector<std::string> remove_if_finished;
};

constexpr Millis kStreamFlushInterval{1000};
// A task's start is reported with the next batch that goes out, or after this long: the start of
// a short task then travels with its end, in one message instead of two (the server knows the
// task is on this worker already; only `hq task list` sees it running a little later).
constexpr Millis kStartReportDelay{20};
// A task's end is reported at once when this worker has no queued task left to start (the
// server must send more before a CPU idles), else with the next batch or after this long: the
// ends of short tasks then share a message, and the server a round of scheduling.
constexpr Millis kEndReportDelay{5};
// Ended tasks whose results a reattaching worker presents again: the server may have lost the
// last ones it was sent (unsynced when it crashed). Results older than these many ends are
// taken as recorded.
constexpr size_t kRecentEnds = 10'000;
// Reconnect attempts: the first this soon after the loss, doubling up to the maximum.
constexpr Millis kReconnectFirst{200};
constexpr Millis kReconnectMax{5000};

// A result the worker keeps for a reattach (wire::EndedClaim).
struct EndedTask {
  TaskKey key;
  int64_t start = 0, end = 0;
  bool finished = false;
  std::string error;
};
// What of HQ_ERROR_FILENAME becomes a failed task's error text.
constexpr size_t kMaxErrorFileBytes = 2048;

// The error message a task wrote into its HQ_ERROR_FILENAME (at most kMaxErrorFileBytes,
// surrounding white space trimmed); empty when it wrote none.
std::string read_error_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  std::string text(kMaxErrorFileBytes, '\0');
  ssize_t n;
  do {
    n = ::read(fd, text.data(), text.size());
  } while (n < 0 && errno == EINTR);
  ::close(fd);
  text.resize(n > 0 ? static_cast<size_t>(n) : 0);
  auto space = [](char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; };
  while (!text.empty() && space(text.back())) text.pop_back();
  size_t start = 0;
  while (start < text.size() && space(text[start])) ++start;
  return text.substr(start);
}

// Removes a task's directory and everything in it; failures are logged, not fatal.
void remove_task_dir(const std::string& dir) {
  if (dir.empty()) return;
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) spdlog::warn("cannot remove the task directory '{}': {}", dir, ec.message());
}

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

void remove_files(const std::vector<std::string>& paths) {
  for (const std::string& path : paths) {
    std::error_code ec;
    fs::remove(path, ec);
  }
}

// Writes one line per entry into a new file (mode 0600) at `path`, replacing what was there.
// Never writes through a link or into a file that someone else created at that name.
Status write_lines(const std::string& path, const std::vector<std::string>& lines) {
  auto fail = [&](int err) {
    return Status::error(
        fmt::format("cannot write the node file '{}': {}", path, std::strerror(err)));
  };
  if (::unlink(path.c_str()) != 0 && errno != ENOENT) return fail(errno);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return fail(errno);
  std::string text;
  for (const std::string& line : lines) text += line + '\n';
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      ::close(fd);
      return fail(err);
    }
    done += static_cast<size_t>(n);
  }
  if (::close(fd) != 0) return fail(errno);
  return Status::ok();
}

class Worker {
 public:
  // `reaper` must outlive the worker.
  Worker(asio::io_context& io, WorkerOptions options, TaskReaper& reaper)
      : io_(io),
        options_(std::move(options)),
        runner_(io, Millis(1000), &reaper),
        signals_(io, SIGINT, SIGTERM),
        heartbeat_timer_(io),
        idle_timer_(io),
        lifetime_timer_(io),
        reconnect_timer_(io),
        stream_flush_timer_(io),
        report_timer_(io) {}

  Status start() {
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

  int exit_code() const { return exit_code_; }

  ~Worker() {
    if (!owned_work_dir_) return;
    std::error_code ec;
    fs::remove_all(options_.work_dir, ec);
    if (ec) {
      spdlog::warn("cannot remove the work directory '{}': {}", options_.work_dir.string(),
                   ec.message());
    }
  }

 private:
  void on_connected(Result<net::Connected>& connected) {
    if (!connected) return shutdown("cannot connect to the server: " + connected.message(), 1);
    use_connection(connected->connection);
    capnp::MallocMessageBuilder message;
    fill_registration(message.initRoot<wire::FromWorker>().initRegister());
    connection_->send(message);
  }

  void use_connection(std::shared_ptr<net::Connection> connection) {
    connection_ = std::move(connection);
    server_leaving_ = false;
    connection_->start([this](net::Message& m) { on_message(m); },
                       [this, c = std::weak_ptr<net::Connection>(connection_)](
                           const std::string& reason) { on_closed(c, reason); });
  }

  void on_closed(const std::weak_ptr<net::Connection>& closed, const std::string& reason) {
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

  void fill_registration(wire::WorkerRegistration::Builder reg) {
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
  void lose_server(const std::string& why) {
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

  void schedule_reconnect() {
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
  void reattach(std::shared_ptr<net::Connection> connection) {
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

  void remember_ends(const ReportBatch& batch) {
    for (const TaskReport& r : batch.finished)
      recent_ends_.push_back({r.key, r.start, r.time, true, {}});
    for (const TaskReport& r : batch.failed) {
      recent_ends_.push_back({r.key, r.start, r.time, false, r.error});
    }
    while (recent_ends_.size() > kRecentEnds) recent_ends_.pop_front();
  }

  void on_message(net::Message& m) {
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

  bool remove_queued(const TaskKey& key) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (*it == key) {
        queue_.erase(it);
        node_hosts_.erase(key);
        task_bodies_.erase(key.ref());
        task_entries_.erase(key.ref());
        task_variants_.erase(key.ref());
        return true;
      }
    }
    return false;
  }

  void cancel(const TaskKey& key) {
    if (remove_queued(key)) {
      // Never started: giving it back releases its place on the server.
      reports_.pending().retracted.push_back(key);
      flush_soon();
      return;
    }
    auto it = running_.find(key.ref());
    if (it != running_.end() && it->second.key == key && !it->second.canceled) {
      it->second.canceled = true;
      runner_.terminate(it->second.pid, options_.cancel_grace);
    }
  }

  void intern_variants(JobBody& job) {
    for (const ResourceRequest& r : job.body.variants) {
      job.variant_pools.push_back(intern_request(r, names_));
    }
  }

  // Starts queued tasks in queue order while their requests fit the free resources: the first
  // that does not fit stops the rest. The server promotes its queued tasks the same way.
  void start_queued() {
    if (shut_down_) return;  // exits of killed tasks must not start queued ones
    for (auto it = queue_.begin(); it != queue_.end();) {
      TaskKey key = *it;
      auto job_it = jobs_.find(key.job);
      if (job_it == jobs_.end()) {
        it = queue_.erase(it);
        fail_unstarted(key, "the worker never received the job's description");
        continue;
      }
      auto own = task_bodies_.find(key.ref());
      const JobBody& job = own != task_bodies_.end() ? own->second : job_it->second;
      if (options_.time_limit && job.body.time_request_ms > 0 &&
          Millis(static_cast<int64_t>(job.body.time_request_ms)) > remaining()) {
        // It could not finish before this worker stops: back to the server for another one.
        it = queue_.erase(it);
        reports_.pending().retracted.push_back(key);
        flush_soon();
        continue;
      }
      // An older instance still runs here (a stale run killed after this worker came back):
      // this one starts once it is gone, since a worker runs one instance of a task at a time.
      if (running_.contains(key.ref())) {
        ++it;
        continue;
      }
      // The variant the server chose (HQ_RESOURCE_VARIANT); 0 when it named none.
      uint8_t variant = 0;
      if (auto v = task_variants_.find(key.ref()); v != task_variants_.end()) variant = v->second;
      if (variant > 0 && variant >= job.body.variants.size()) {
        it = queue_.erase(it);
        fail_unstarted(key, fmt::format("the server chose resource variant {} of a task with {}",
                                        variant, job.body.variants.size()));
        continue;
      }
      const PoolRequest& pool_request = job.pool_of(variant);
      Allocation allocation;
      if (!pool_.allocate(pool_request, allocation)) {
        // It waits for running tasks to end, and the tasks behind it wait too: the server models
        // this worker the same way, and a big task must not be overtaken forever.
        if (pool_.could_fit(pool_request)) break;
        // The server assigns a task only where it could fit: the two disagree on what this
        // worker has. Waiting would be forever.
        it = queue_.erase(it);
        fail_unstarted(key, fmt::format("the task can never run on worker {}: {}", worker_id_,
                                        pool_.why_not(pool_request, names_)));
        continue;
      }
      it = queue_.erase(it);  // start_task never touches the queue
      task_variants_.erase(key.ref());
      if (options_.zero_work) {
        end_at_once(key, allocation);
      } else {
        start_task(key, job, variant, std::move(allocation));
      }
      if (own != task_bodies_.end()) task_bodies_.erase(own);
    }
  }

  // --zero-work: the task starts and finishes now, giving its resources back at once.
  void end_at_once(const TaskKey& key, const Allocation& allocation) {
    pool_.release(allocation);
    node_hosts_.erase(key);
    task_entries_.erase(key.ref());
    int64_t now = unix_millis_now();
    ReportBatch& reports = reports_.pending();
    reports.started.push_back({key, now, {}, nullptr});
    reports.finished.push_back({key, now, {}, nullptr, now});
    flush_soon();
  }

  void fail_unstarted(const TaskKey& key, std::string error) {
    node_hosts_.erase(key);
    task_bodies_.erase(key.ref());
    task_entries_.erase(key.ref());
    task_variants_.erase(key.ref());
    reports_.pending().failed.push_back({key, unix_millis_now(), std::move(error), nullptr});
    flush_soon();
  }

  // The units of `resource` in `allocation` (indexed resources only): the whole ones in unit
  // order, then the one shared with other tasks (a fraction), last, as HyperQueue orders them.
  std::vector<uint32_t> allocated_units(const Allocation& allocation, uint32_t resource) const {
    std::vector<uint32_t> units;
    uint32_t shared = kSumUnit;
    for (const AllocationEntry& a : allocation) {
      if (a.resource != resource || a.unit == kSumUnit) continue;
      if (a.amount < kAmountUnit) {
        shared = a.unit;
      } else {
        units.push_back(a.unit);
      }
    }
    std::sort(units.begin(), units.end());
    if (shared != kSumUnit) units.push_back(shared);
    return units;
  }

  static bool job_sets(const JobBody& job, std::string_view name) {
    return std::any_of(job.body.env.begin(), job.body.env.end(),
                       [name](const auto& kv) { return kv.first == name; });
  }

  // The variables that tell a task what it got, and how to bind to it, named and formed as
  // HyperQueue does (docs/hyperqueue.md lists what hq adds).
  void add_resource_env(const JobBody& job, uint8_t variant, const Allocation& allocation,
                        SpawnSpec& spec) const {
    auto& env = spec.env;
    // CPU labels are numbers (parse_cpu_definition): whole CPUs in numeric order, a shared one
    // last.
    std::vector<uint32_t> cpus;
    bool shared_cpu = false;
    for (uint32_t u : allocated_units(allocation, cpus_id_)) {
      const std::string& label = labels_[cpus_id_][u];
      uint32_t cpu = 0;
      std::from_chars(label.data(), label.data() + label.size(), cpu);
      cpus.push_back(cpu);
    }
    for (const AllocationEntry& a : allocation) {
      shared_cpu = shared_cpu || (a.resource == cpus_id_ && a.amount < kAmountUnit);
    }
    std::sort(cpus.begin(), cpus.end() - (shared_cpu ? 1 : 0));
    std::string cpu_list = fmt::format("{}", fmt::join(cpus, ","));
    env.emplace_back("HQ_CPUS", cpu_list);
    // A task with a share of a CPU gets no thread count, as in HyperQueue.
    if (!shared_cpu && !job_sets(job, "OMP_NUM_THREADS")) {
      env.emplace_back("OMP_NUM_THREADS", std::to_string(cpus.size()));
    }
    // As HyperQueue: only a task with alternatives is told which one it runs with.
    if (job.body.variants.size() > 1) {
      env.emplace_back("HQ_RESOURCE_VARIANT", std::to_string(variant));
    }
    for (const ResourceRequestEntry& e : job.request_of(variant).entries) {
      uint32_t id = names_.find(e.name);
      std::string suffix = env_name(e.name);
      env.emplace_back("HQ_RESOURCE_REQUEST_" + suffix, describe_with_policy(e));
      const ResourceDefinition* def = descriptor_.find(e.name);
      std::string values;
      if (def && def->kind == ResourceKind::kSum) {
        // hq's addition: HyperQueue sets no _VALUES_ for a sum.
        ResourceAmount amount = 0;
        for (const AllocationEntry& a : allocation) {
          if (a.resource == id) amount += a.amount;
        }
        values = format_amount(amount);
      } else if (id == cpus_id_) {
        values = cpu_list;
      } else {
        std::vector<std::string_view> labels;
        for (uint32_t u : allocated_units(allocation, id)) labels.push_back(labels_[id][u]);
        values = fmt::format("{}", fmt::join(labels, ","));
        if (id == nvidia_id_) {
          env.emplace_back("CUDA_VISIBLE_DEVICES", values);
          env.emplace_back("CUDA_DEVICE_ORDER", "PCI_BUS_ID");
        } else if (id == amd_id_) {
          env.emplace_back("ROCR_VISIBLE_DEVICES", values);
        }
      }
      env.emplace_back("HQ_RESOURCE_VALUES_" + suffix, values);
    }
    if (job.body.pin == PinMode::kTaskset) {
      spec.cpu_affinity = cpus;
      env.emplace_back("HQ_PIN", "taskset");
    } else if (job.body.pin == PinMode::kOmp) {
      // One place holding every CPU of the task; the job's own settings win.
      if (!job_sets(job, "OMP_PROC_BIND")) env.emplace_back("OMP_PROC_BIND", "close");
      if (!job_sets(job, "OMP_PLACES")) env.emplace_back("OMP_PLACES", "{" + cpu_list + "}");
      env.emplace_back("HQ_PIN", "omp");
    }
  }

  // Runs `key` on the resources of `allocation`, which it owns from now on (given back to the
  // pool when it cannot start or when it ends).
  void start_task(const TaskKey& key, const JobBody& job, uint8_t variant, Allocation allocation) {
    int64_t now = unix_millis_now();
    RunningTask task;
    task.key = key;
    task.start_time = now;
    task.variant = variant;
    task.allocation = std::move(allocation);

    TaskPaths paths = task_paths(job.body, key.job, key.task, key.instance, server_uid_);
    PlaceholderValues values;
    values.job_id = std::to_string(key.job);
    values.task_id = std::to_string(key.task);
    values.instance_id = std::to_string(key.instance);
    values.submit_dir = job.body.submit_dir;
    values.server_uid = server_uid_;
    values.cwd = paths.cwd;

    SpawnSpec spec;
    spec.argv = job.body.program;
    spec.cwd = paths.cwd;
    // With a stream directory, an empty output path means "into the stream".
    spec.capture_stdout = !job.stream.empty() && job.body.stdout_path.empty();
    spec.capture_stderr = !job.stream.empty() && job.body.stderr_path.empty();
    spec.stdout_path = std::move(paths.stdout_path);
    spec.stderr_path = std::move(paths.stderr_path);
    if (spec.capture_stdout || spec.capture_stderr) {
      auto writer = stream_writer(resolve_stream_dir(job.stream, values));
      if (!writer) {
        pool_.release(task.allocation);
        reports_.pending().failed.push_back({key, now, writer.message(), nullptr});
        return flush_soon();
      }
      task.stream = std::move(*writer);
    }
    spec.env = job.body.env;
    spec.env.emplace_back("HQ_JOB_ID", values.job_id);
    spec.env.emplace_back("HQ_TASK_ID", values.task_id);
    spec.env.emplace_back("HQ_INSTANCE_ID", values.instance_id);
    spec.env.emplace_back("HQ_SUBMIT_DIR", job.body.submit_dir);
    spec.env.emplace_back("HQ_SERVER_UID", server_uid_);
    spec.env.emplace_back("HQ_WORKER_ID", std::to_string(worker_id_));
    add_resource_env(job, variant, task.allocation, spec);
    if (auto entry = task_entries_.find(key.ref()); entry != task_entries_.end()) {
      spec.env.emplace_back("HQ_ENTRY", std::move(entry->second));
      task_entries_.erase(entry);
    }
    if (!job.body.stdin_data.empty()) spec.stdin_data = &job.body.stdin_data;
    if (!spec.capture_stdout && job.body.stdout_rm_if_finished && !spec.stdout_path.empty()) {
      task.remove_if_finished.push_back(spec.stdout_path);
    }
    if (!spec.capture_stderr && job.body.stderr_rm_if_finished && !spec.stderr_path.empty()) {
      task.remove_if_finished.push_back(spec.stderr_path);
    }
    if (job.body.task_dir) {
      // Fresh for each instance: what an earlier instance left there is gone.
      std::string dir =
          (options_.work_dir / "tasks" / fmt::format("{}-{}-{}", key.job, key.task, key.instance))
              .string();
      std::error_code ec;
      fs::remove_all(dir, ec);
      if (!ec) fs::create_directories(dir, ec);
      if (ec) {
        pool_.release(task.allocation);
        reports_.pending().failed.push_back(
            {key, now, fmt::format("cannot create the task directory '{}': {}", dir, ec.message()),
             nullptr});
        return flush_soon();
      }
      task.task_dir = dir;
      spec.env.emplace_back("HQ_TASK_DIR", dir);
      spec.env.emplace_back("HQ_ERROR_FILENAME", dir + "/hq-error");
    }
    if (auto hosts = node_hosts_.find(key); hosts != node_hosts_.end()) {
      // A multi-node task: it runs here and is told every worker it spans, this one first, in
      // two files as HyperQueue writes them: short names (HQ_NODE_FILE) and full ones
      // (HQ_HOST_FILE).
      std::vector<std::string> short_names;
      for (const std::string& host : hosts->second) short_names.push_back(short_hostname(host));
      std::string stem = fmt::format("{}-{}-{}", key.job, key.task, key.instance);
      std::string node_path = (options_.work_dir / ("nodes-" + stem)).string();
      std::string host_path = (options_.work_dir / ("hosts-" + stem)).string();
      Status st = write_lines(node_path, short_names);
      if (st) task.node_files.push_back(node_path);
      if (st) st = write_lines(host_path, hosts->second);
      if (st) task.node_files.push_back(host_path);
      if (!st) {
        node_hosts_.erase(hosts);
        remove_files(task.node_files);
        remove_task_dir(task.task_dir);
        pool_.release(task.allocation);
        reports_.pending().failed.push_back({key, now, st.message(), nullptr});
        return flush_soon();
      }
      spec.env.emplace_back("HQ_NUM_NODES", std::to_string(hosts->second.size()));
      spec.env.emplace_back("HQ_NODE_FILE", node_path);
      spec.env.emplace_back("HQ_HOST_FILE", host_path);
      node_hosts_.erase(hosts);
    }

    auto pid = runner_.spawn(
        spec, [this, ref = key.ref()](ExitStatus status) { on_exit(ref, status); },
        [this, ref = key.ref()](OutputChannel channel, std::span<const uint8_t> bytes) {
          on_output(ref, channel, bytes);
        });
    if (!pid) {
      pool_.release(task.allocation);
      remove_files(task.node_files);
      remove_task_dir(task.task_dir);
      reports_.pending().failed.push_back({key, now, pid.message(), nullptr});
      return flush_soon();
    }
    task.pid = *pid;
    if (job.body.time_limit_ms > 0) {
      task.time_limit = std::make_shared<asio::steady_timer>(
          io_, std::chrono::milliseconds(job.body.time_limit_ms));
      task.time_limit->async_wait([this, ref = key.ref()](const std::error_code& error) {
        if (!error) on_time_limit(ref);
      });
    }
    if (task.stream) {
      check_stream(task, task.stream->task_start(key, now));
      schedule_stream_flush();
    }
    running_[key.ref()] = std::move(task);
    reports_.pending().started.push_back({key, now, {}, nullptr});
    flush_later();
  }

  // The writer of stream directory `dir`, created at the first task that needs it: one file per
  // worker process and directory.
  Result<std::shared_ptr<stream::StreamWriter>> stream_writer(const std::string& dir) {
    auto it = stream_writers_.find(dir);
    if (it != stream_writers_.end()) return it->second;
    auto created = stream::StreamWriter::create(dir, server_uid_, worker_id_);
    if (!created) return Error{"cannot create the output stream: " + created.message()};
    std::shared_ptr<stream::StreamWriter> writer = std::move(*created);
    stream_writers_.emplace(dir, writer);
    spdlog::debug("writing output stream file {}", writer->path().string());
    return writer;
  }

  // Records the first failed write of `task`'s records. A failed writer stays failed: it is
  // dropped, so that the next task of its directory starts a new file.
  void check_stream(RunningTask& task, const Status& st) {
    if (st || !task.stream_error.empty()) return;
    task.stream_error = "cannot write the output stream: " + st.message();
    spdlog::error("task {}.{}: {}", task.key.job, task.key.task, task.stream_error);
    drop_stream(task.stream);
  }

  // Forgets a broken writer, so that the next task of its directory starts a new file.
  void drop_stream(const std::shared_ptr<stream::StreamWriter>& writer) {
    for (auto it = stream_writers_.begin(); it != stream_writers_.end(); ++it) {
      if (it->second == writer) {
        stream_writers_.erase(it);
        return;
      }
    }
  }

  void on_output(TaskRef ref, OutputChannel channel, std::span<const uint8_t> bytes) {
    auto it = running_.find(ref);
    if (shut_down_ || it == running_.end() || !it->second.stream) return;
    RunningTask& task = it->second;
    if (!task.stream_error.empty()) return;
    auto ch =
        channel == OutputChannel::kStdout ? stream::Channel::kStdout : stream::Channel::kStderr;
    check_stream(task, task.stream->data(task.key, ch, bytes));
    schedule_stream_flush();
  }

  // Output of running tasks reaches the files within kStreamFlushInterval (not only at their
  // end), so that `hq output cat --allow-unfinished` shows it and a killed worker loses little.
  void schedule_stream_flush() {
    if (stream_flush_armed_ || shut_down_) return;
    stream_flush_armed_ = true;
    stream_flush_timer_.expires_after(kStreamFlushInterval);
    stream_flush_timer_.async_wait([this](const std::error_code& error) {
      stream_flush_armed_ = false;
      if (error || shut_down_) return;
      for (auto it = stream_writers_.begin(); it != stream_writers_.end();) {
        if (auto st = it->second->flush(); !st) {
          // Its tasks see the same error at their next record and fail.
          spdlog::error("{}", st.message());
          it = stream_writers_.erase(it);
        } else {
          ++it;
        }
      }
    });
  }

  void on_time_limit(TaskRef ref) {
    auto it = running_.find(ref);
    if (it == running_.end() || it->second.canceled || it->second.timed_out) return;
    it->second.timed_out = true;
    spdlog::info("task {}.{} reached its time limit", it->second.key.job, it->second.key.task);
    runner_.terminate(it->second.pid, options_.cancel_grace);
  }

  void on_exit(TaskRef ref, ExitStatus status) {
    auto it = running_.find(ref);
    if (it == running_.end()) return;
    RunningTask task = std::move(it->second);
    running_.erase(it);
    if (task.time_limit) task.time_limit->cancel();
    pool_.release(task.allocation);
    remove_files(task.node_files);
    int64_t now = unix_millis_now();
    // A task killed because the worker stops gets no end record: it did not end, it will run
    // again (a later instance) elsewhere.
    if (task.stream && !shut_down_) {
      int32_t code = status.signaled ? -status.signal : status.code;
      check_stream(task,
                   task.stream->task_end(
                       task.key, status.success() && !task.canceled && !task.timed_out, code, now));
    }
    // The report waits for the stream's sync when the end record went there.
    std::shared_ptr<stream::StreamWriter> written;
    if (task.stream && !shut_down_ && task.stream_error.empty()) written = task.stream;
    // The task's own word on why it failed, read before its directory goes.
    std::string own_error;
    if (!task.task_dir.empty() && !status.success() && !task.canceled && !task.timed_out) {
      own_error = read_error_file(task.task_dir + "/hq-error");
    }
    remove_task_dir(task.task_dir);
    bool finished =
        status.success() && !task.canceled && !task.timed_out && task.stream_error.empty();
    if (finished && !shut_down_) remove_files(task.remove_if_finished);
    ReportBatch& reports = reports_.pending();
    if (task.timed_out && !task.canceled) {
      reports.failed.push_back({task.key, now, "Time limit reached", written, task.start_time});
    } else if (!task.stream_error.empty()) {
      reports.failed.push_back({task.key, now, task.stream_error, nullptr, task.start_time});
    } else if (status.success()) {
      reports.finished.push_back({task.key, now, {}, written, task.start_time});
    } else {
      std::string error = task.canceled        ? std::string("canceled")
                          : !own_error.empty() ? std::move(own_error)
                                               : describe_exit(status);
      reports.failed.push_back({task.key, now, std::move(error), written, task.start_time});
    }
    if (draining_) {
      flush_soon();
      if (running_.empty()) shutdown(drain_reason_ + "; its running tasks ended", 1);
      return;
    }
    start_queued();
    if (queue_.empty()) {
      flush_soon();
    } else {
      flush_later(kEndReportDelay);
    }
    update_idle();
  }

  // The server is gone: queued tasks are dropped, running ones end, then the worker stops.
  void drain(const std::string& reason) {
    spdlog::warn("{}: letting {} running task(s) finish", reason, running_.size());
    draining_ = true;
    drain_reason_ = reason;
    queue_.clear();
  }

  // How long until the worker's time limit stops it (zero when it has none left).
  Millis remaining() const {
    if (!options_.time_limit) return Millis::max();
    auto elapsed = std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - started_);
    return std::max(Millis(0), *options_.time_limit - elapsed);
  }

  // Events of one loop iteration go out as one message.
  void flush_soon() {
    if (flush_pending_) return;
    flush_pending_ = true;
    asio::post(io_, [this] { flush(); });
  }

  // The batch goes out with the next flush, or after `delay` (sooner if an earlier call asked).
  void flush_later(Millis delay = kStartReportDelay) {
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
  void flush() {
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

  void send(const ReportBatch& batch) {
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

  void send_heartbeats() {
    if (!sent_since_heartbeat_) flush();
    sent_since_heartbeat_ = false;
    heartbeat_timer_.expires_after(heartbeat_);
    heartbeat_timer_.async_wait([this](const std::error_code& error) {
      if (!error) send_heartbeats();
    });
  }

  void update_idle() {
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
  void shutdown(const std::string& reason, int code,
                std::optional<wire::WorkerStopReason> why = std::nullopt) {
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
  void close_streams() {
    for (auto& [dir, writer] : stream_writers_) {
      if (auto st = writer->close(); !st) spdlog::error("{}", st.message());
    }
    stream_writers_.clear();
  }

  asio::io_context& io_;
  WorkerOptions options_;
  ProcessRunner runner_;
  asio::signal_set signals_;
  asio::steady_timer heartbeat_timer_;
  asio::steady_timer idle_timer_;
  asio::steady_timer lifetime_timer_;
  asio::steady_timer reconnect_timer_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point away_since_;  // of the current loss of the server
  Millis reconnect_delay_ = kReconnectFirst;
  uint32_t reconnects_ = 0;
  bool server_leaving_ = false;        // the server said it leaves without stopping this worker
  std::deque<EndedTask> recent_ends_;  // the last kRecentEnds results, oldest first
  bool draining_ = false;
  bool serving_ = false;  // a secondary node of a multi-node task
  std::string drain_reason_;
  asio::steady_timer stream_flush_timer_;
  asio::steady_timer report_timer_;
  std::shared_ptr<net::Connection> connection_;
  WorkerId worker_id_ = 0;
  std::string server_uid_;
  Millis heartbeat_{8000};
  std::unordered_map<JobId, JobBody> jobs_;
  // Tasks of jobs with per-task bodies, from their assignment until they end or go back.
  std::unordered_map<TaskRef, JobBody> task_bodies_;
  // HQ_ENTRY of queued tasks of jobs with entries, from their assignment until they start or go.
  std::unordered_map<TaskRef, std::string> task_entries_;
  // The resource variant of queued tasks the server gave one other than the first.
  std::unordered_map<TaskRef, uint8_t> task_variants_;
  std::deque<TaskKey> queue_;
  std::map<TaskKey, std::vector<std::string>> node_hosts_;  // of queued multi-node tasks
  std::unordered_map<TaskRef, RunningTask> running_;
  // By absolute directory. Running tasks share ownership, so a dropped (failed) writer lives
  // until its last task ends.
  std::unordered_map<std::string, std::shared_ptr<stream::StreamWriter>> stream_writers_;
  ResourceDescriptor descriptor_;  // what the worker offers, fixed at start
  ResourceNames names_;
  ResourcePool pool_;                             // what is free now
  std::vector<std::vector<std::string>> labels_;  // by resource id: unit labels, groups flattened
  uint32_t cpus_id_ = 0, nvidia_id_ = 0, amd_id_ = 0;
  Reports reports_;
  bool flush_pending_ = false;
  bool report_armed_ = false;                                // report_timer_ waits to flush
  std::chrono::steady_clock::time_point report_deadline_{};  // of report_timer_, when armed
  bool sent_since_heartbeat_ = false;
  bool idle_armed_ = false;
  bool stream_flush_armed_ = false;
  bool stopping_on_request_ = false;
  bool shut_down_ = false;
  bool owned_work_dir_ = false;  // made by start(): removed at the end
  int exit_code_ = 0;
};

}  // namespace

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
