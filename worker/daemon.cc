#include "worker/daemon.h"

#include <unistd.h>

#include <deque>
#include <unordered_map>
#include <vector>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/host.h"
#include "common/job_spec.h"
#include "common/placeholders.h"
#include "net/access.h"
#include "net/connection.h"
#include "net/convert.h"
#include "output-stream/stream.h"
#include "worker/process.h"

namespace hq::worker {
namespace {

struct JobBody {
  TaskBodySpec body;
  std::string stream;  // absolute; empty: no stream (see JobDescriptionSpec::stream)
};

struct RunningTask {
  TaskKey key;
  pid_t pid = 0;
  std::vector<uint32_t> cpus;  // indices
  bool canceled = false;
  bool timed_out = false;  // killed by the job's --time-limit
  std::shared_ptr<asio::steady_timer> time_limit;
  // The writer of the job's stream directory, when a channel of the task goes there.
  std::shared_ptr<stream::StreamWriter> stream;
  std::string stream_error;  // the first failed write of this task's records; fails the task
};

constexpr Millis kStreamFlushInterval{1000};

// Resolves `path` against `base` unless it is absolute.
std::string resolve(const std::string& base, const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  return (fs::path(base) / path).string();
}

class Worker {
 public:
  Worker(asio::io_context& io, WorkerOptions options)
      : io_(io),
        options_(std::move(options)),
        runner_(io),
        signals_(io, SIGINT, SIGTERM),
        heartbeat_timer_(io),
        idle_timer_(io),
        stream_flush_timer_(io) {}

  Status start() {
    auto access = net::read_access_file(access_file_path(options_.server_dir));
    if (!access) return access.status();
    if (options_.cpus == 0) options_.cpus = available_cpus();
    if (options_.hostname.empty()) options_.hostname = local_hostname();
    for (uint32_t i = 0; i < options_.cpus; ++i) free_cpus_.push_back(options_.cpus - 1 - i);
    std::error_code ec;
    if (options_.work_dir.empty()) {
      options_.work_dir = fs::temp_directory_path() / fmt::format("hq-worker-{}", ::getpid());
    }
    fs::create_directories(options_.work_dir, ec);
    if (ec) {
      return Status::error(fmt::format("cannot create work directory '{}': {}",
                                       options_.work_dir.string(), ec.message()));
    }
    signals_.async_wait([this](const std::error_code& error, int signal) {
      if (!error) shutdown(fmt::format("received signal {}", signal), 0);
    });
    net::async_connect(io_, access->host, access->worker_port, wire::Role::WORKER,
                       access->worker_key,
                       [this](Result<net::Connected> connected) { on_connected(connected); });
    return Status::ok();
  }

  int exit_code() const { return exit_code_; }

 private:
  void on_connected(Result<net::Connected>& connected) {
    if (!connected) return shutdown("cannot connect to the server: " + connected.message(), 1);
    connection_ = connected->connection;
    connection_->start([this](net::Message& m) { on_message(m); },
                       [this](const std::string& reason) {
                         if (shut_down_) return io_.stop();  // our own close completed
                         shutdown(reason.empty() ? "the server closed the connection"
                                                 : "lost the server: " + reason,
                                  stopping_on_request_ ? 0 : 1);
                       });
    capnp::MallocMessageBuilder message;
    auto reg = message.initRoot<wire::FromWorker>().initRegister();
    reg.setHostname(options_.hostname);
    reg.setCpus(options_.cpus);
    reg.setWorkDir(options_.work_dir.string());
    connection_->send(message);
  }

  void on_message(net::Message& m) {
    auto msg = m.root<wire::ToWorker>();
    switch (msg.which()) {
      case wire::ToWorker::REGISTERED: {
        auto r = msg.getRegistered();
        worker_id_ = r.getWorkerId();
        server_uid_ = r.getServerUid().cStr();
        heartbeat_ = Millis(std::max<uint32_t>(r.getHeartbeatMs(), 100));
        spdlog::info("worker {} registered with server {} ({} cpus)", worker_id_, server_uid_,
                     options_.cpus);
        send_heartbeats();
        update_idle();
        return;
      }
      case wire::ToWorker::ASSIGN: {
        auto a = msg.getAssign();
        for (auto job : a.getJobs()) {
          jobs_[job.getJob()] = JobBody{net::from_wire(job.getBody()), job.getStream().cStr()};
        }
        for (auto k : a.getTasks()) queue_.push_back(net::from_wire(k));
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
          if (remove_queued(key)) events_.retracted.push_back(key), flush_soon();
        }
        update_idle();
        return;
      case wire::ToWorker::STOP:
        stopping_on_request_ = true;
        return shutdown("stopped by the server", 0);
    }
    throw std::runtime_error("unknown message from the server");
  }

  bool remove_queued(const TaskKey& key) {
    for (auto it = queue_.begin(); it != queue_.end(); ++it) {
      if (*it == key) {
        queue_.erase(it);
        return true;
      }
    }
    return false;
  }

  void cancel(const TaskKey& key) {
    if (remove_queued(key)) {
      // Never started: giving it back releases its place on the server.
      events_.retracted.push_back(key);
      flush_soon();
      return;
    }
    auto it = running_.find(key.ref());
    if (it != running_.end() && it->second.key == key && !it->second.canceled) {
      it->second.canceled = true;
      runner_.terminate(it->second.pid, options_.cancel_grace);
    }
  }

  uint32_t job_cpus(JobId job) const {
    auto it = jobs_.find(job);
    return it == jobs_.end() ? 1 : std::max<uint32_t>(it->second.body.cpus, 1);
  }

  void start_queued() {
    if (shut_down_) return;  // exits of killed tasks must not start queued ones
    while (!queue_.empty() && job_cpus(queue_.front().job) <= free_cpus_.size()) {
      TaskKey key = queue_.front();
      queue_.pop_front();
      start_task(key);
    }
  }

  void start_task(const TaskKey& key) {
    auto job_it = jobs_.find(key.job);
    int64_t now = unix_millis_now();
    if (job_it == jobs_.end()) {
      events_.failed.push_back({key, now, "the worker never received the job's description"});
      return flush_soon();
    }
    const JobBody& job = job_it->second;
    RunningTask task;
    task.key = key;
    for (uint32_t i = 0; i < std::max<uint32_t>(job.body.cpus, 1); ++i) {
      task.cpus.push_back(free_cpus_.back());
      free_cpus_.pop_back();
    }
    std::sort(task.cpus.begin(), task.cpus.end());
    std::string cpu_list;
    for (uint32_t c : task.cpus) cpu_list += (cpu_list.empty() ? "" : ",") + std::to_string(c);

    PlaceholderValues values;
    values.job_id = std::to_string(key.job);
    values.task_id = std::to_string(key.task);
    values.instance_id = std::to_string(key.instance);
    values.submit_dir = job.body.submit_dir;
    values.server_uid = server_uid_;
    values.cwd = job.body.submit_dir;
    std::string cwd = expand_placeholders(job.body.cwd, values);
    if (cwd.empty()) cwd = job.body.submit_dir;
    cwd = resolve(job.body.submit_dir, cwd);
    values.cwd = cwd;

    SpawnSpec spec;
    spec.argv = job.body.program;
    spec.cwd = cwd;
    // With a stream directory, an empty output path means "into the stream".
    spec.capture_stdout = !job.stream.empty() && job.body.stdout_path.empty();
    spec.capture_stderr = !job.stream.empty() && job.body.stderr_path.empty();
    spec.stdout_path = resolve(cwd, expand_placeholders(job.body.stdout_path, values));
    spec.stderr_path = resolve(cwd, expand_placeholders(job.body.stderr_path, values));
    if (spec.capture_stdout || spec.capture_stderr) {
      auto writer = stream_writer(resolve(job.body.submit_dir, job.stream));
      if (!writer) {
        release_cpus(task.cpus);
        events_.failed.push_back({key, now, writer.message()});
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
    spec.env.emplace_back("HQ_CPUS", cpu_list);

    auto pid = runner_.spawn(
        spec, [this, ref = key.ref()](ExitStatus status) { on_exit(ref, status); },
        [this, ref = key.ref()](OutputChannel channel, std::span<const uint8_t> bytes) {
          on_output(ref, channel, bytes);
        });
    if (!pid) {
      release_cpus(task.cpus);
      events_.failed.push_back({key, now, pid.message()});
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
    events_.started.push_back({key, now, {}});
    flush_soon();
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
    for (auto it = stream_writers_.begin(); it != stream_writers_.end(); ++it) {
      if (it->second == task.stream) {
        stream_writers_.erase(it);
        break;
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
    release_cpus(task.cpus);
    int64_t now = unix_millis_now();
    // A task killed because the worker stops gets no end record: it did not end, it will run
    // again (a later instance) elsewhere.
    if (task.stream && !shut_down_) {
      int32_t code = status.signaled ? -status.signal : status.code;
      check_stream(task,
                   task.stream->task_end(
                       task.key, status.success() && !task.canceled && !task.timed_out, code, now));
    }
    if (task.timed_out && !task.canceled) {
      events_.failed.push_back({task.key, now, "Time limit reached"});
    } else if (!task.stream_error.empty()) {
      events_.failed.push_back({task.key, now, task.stream_error});
    } else if (status.success()) {
      events_.finished.push_back({task.key, now, {}});
    } else {
      events_.failed.push_back({task.key, now, task.canceled ? "canceled" : describe_exit(status)});
    }
    flush_soon();
    start_queued();
    update_idle();
  }

  void release_cpus(const std::vector<uint32_t>& cpus) {
    free_cpus_.insert(free_cpus_.end(), cpus.rbegin(), cpus.rend());
  }

  // Events of one loop iteration go out as one message.
  void flush_soon() {
    if (flush_pending_) return;
    flush_pending_ = true;
    asio::post(io_, [this] { flush(); });
  }

  void flush() {
    flush_pending_ = false;
    if (!connection_ || !connection_->is_open()) return;
    capnp::MallocMessageBuilder message;
    auto ev = message.initRoot<wire::FromWorker>().initEvents();
    auto started = ev.initStarted(events_.started.size());
    for (size_t i = 0; i < events_.started.size(); ++i) {
      net::to_wire(events_.started[i].key, started[i].initKey());
      started[i].setTime(events_.started[i].time);
    }
    auto finished = ev.initFinished(events_.finished.size());
    for (size_t i = 0; i < events_.finished.size(); ++i) {
      net::to_wire(events_.finished[i].key, finished[i].initKey());
      finished[i].setTime(events_.finished[i].time);
    }
    auto failed = ev.initFailed(events_.failed.size());
    for (size_t i = 0; i < events_.failed.size(); ++i) {
      net::to_wire(events_.failed[i].key, failed[i].initKey());
      failed[i].setTime(events_.failed[i].time);
      failed[i].setError(events_.failed[i].error);
    }
    net::to_wire(events_.retracted, ev.initRetracted(events_.retracted.size()));
    connection_->send(message);
    events_ = {};
    sent_since_heartbeat_ = true;
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
    bool idle = queue_.empty() && running_.empty();
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
      shutdown("idle timeout reached", 0);
    });
  }

  void shutdown(const std::string& reason, int code) {
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
    stream_flush_timer_.cancel();
    if (!connection_ || !connection_->is_open()) return io_.stop();
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

  struct Event {
    TaskKey key;
    int64_t time;
    std::string error;
  };
  struct Events {
    std::vector<Event> started, finished, failed;
    std::vector<TaskKey> retracted;
  };

  asio::io_context& io_;
  WorkerOptions options_;
  ProcessRunner runner_;
  asio::signal_set signals_;
  asio::steady_timer heartbeat_timer_;
  asio::steady_timer idle_timer_;
  asio::steady_timer stream_flush_timer_;
  std::shared_ptr<net::Connection> connection_;
  WorkerId worker_id_ = 0;
  std::string server_uid_;
  Millis heartbeat_{8000};
  std::unordered_map<JobId, JobBody> jobs_;
  std::deque<TaskKey> queue_;
  std::unordered_map<TaskRef, RunningTask> running_;
  // By absolute directory. Running tasks share ownership, so a dropped (failed) writer lives
  // until its last task ends.
  std::unordered_map<std::string, std::shared_ptr<stream::StreamWriter>> stream_writers_;
  std::vector<uint32_t> free_cpus_;  // a stack; lowest index on top
  Events events_;
  bool flush_pending_ = false;
  bool sent_since_heartbeat_ = false;
  bool idle_armed_ = false;
  bool stream_flush_armed_ = false;
  bool stopping_on_request_ = false;
  bool shut_down_ = false;
  int exit_code_ = 0;
};

}  // namespace

int run_worker(const WorkerOptions& options) {
  asio::io_context io(1);
  Worker worker(io, options);
  if (auto st = worker.start(); !st) {
    spdlog::error("{}", st.message());
    return 1;
  }
  io.run();
  return worker.exit_code();
}

}  // namespace hq::worker
