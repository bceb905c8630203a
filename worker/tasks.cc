#include "worker/daemon_impl.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/host.h"
#include "common/placeholders.h"

namespace hq::worker {

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

bool Worker::remove_queued(const TaskKey& key) {
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

void Worker::cancel(const TaskKey& key) {
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

void Worker::intern_variants(JobBody& job) {
  for (const ResourceRequest& r : job.body.variants) {
    job.variant_pools.push_back(intern_request(r, names_));
  }
}

// Starts queued tasks in queue order while their requests fit the free resources: the first
// that does not fit stops the rest. The server promotes its queued tasks the same way.
void Worker::start_queued() {
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
void Worker::end_at_once(const TaskKey& key, const Allocation& allocation) {
  pool_.release(allocation);
  node_hosts_.erase(key);
  task_entries_.erase(key.ref());
  int64_t now = unix_millis_now();
  ReportBatch& reports = reports_.pending();
  reports.started.push_back({key, now, {}, nullptr});
  reports.finished.push_back({key, now, {}, nullptr, now});
  flush_soon();
}

void Worker::fail_unstarted(const TaskKey& key, std::string error) {
  node_hosts_.erase(key);
  task_bodies_.erase(key.ref());
  task_entries_.erase(key.ref());
  task_variants_.erase(key.ref());
  reports_.pending().failed.push_back({key, unix_millis_now(), std::move(error), nullptr});
  flush_soon();
}

// The units of `resource` in `allocation` (indexed resources only): the whole ones in unit
// order, then the one shared with other tasks (a fraction), last, as HyperQueue orders them.
std::vector<uint32_t> Worker::allocated_units(const Allocation& allocation,
                                              uint32_t resource) const {
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

bool Worker::job_sets(const JobBody& job, std::string_view name) {
  return std::any_of(job.body.env.begin(), job.body.env.end(),
                     [name](const auto& kv) { return kv.first == name; });
}

// The variables that tell a task what it got, and how to bind to it, named and formed as
// HyperQueue does (docs/hyperqueue.md lists what hq adds).
void Worker::add_resource_env(const JobBody& job, uint8_t variant, const Allocation& allocation,
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
void Worker::start_task(const TaskKey& key, const JobBody& job, uint8_t variant,
                        Allocation allocation) {
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
Result<std::shared_ptr<stream::StreamWriter>> Worker::stream_writer(const std::string& dir) {
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
void Worker::check_stream(RunningTask& task, const Status& st) {
  if (st || !task.stream_error.empty()) return;
  task.stream_error = "cannot write the output stream: " + st.message();
  spdlog::error("task {}.{}: {}", task.key.job, task.key.task, task.stream_error);
  drop_stream(task.stream);
}

// Forgets a broken writer, so that the next task of its directory starts a new file.
void Worker::drop_stream(const std::shared_ptr<stream::StreamWriter>& writer) {
  for (auto it = stream_writers_.begin(); it != stream_writers_.end(); ++it) {
    if (it->second == writer) {
      stream_writers_.erase(it);
      return;
    }
  }
}

void Worker::on_output(TaskRef ref, OutputChannel channel, std::span<const uint8_t> bytes) {
  auto it = running_.find(ref);
  if (shut_down_ || it == running_.end() || !it->second.stream) return;
  RunningTask& task = it->second;
  if (!task.stream_error.empty()) return;
  auto ch = channel == OutputChannel::kStdout ? stream::Channel::kStdout : stream::Channel::kStderr;
  check_stream(task, task.stream->data(task.key, ch, bytes));
  schedule_stream_flush();
}

// Output of running tasks reaches the files within kStreamFlushInterval (not only at their
// end), so that `hq output cat --allow-unfinished` shows it and a killed worker loses little.
void Worker::schedule_stream_flush() {
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

void Worker::on_time_limit(TaskRef ref) {
  auto it = running_.find(ref);
  if (it == running_.end() || it->second.canceled || it->second.timed_out) return;
  it->second.timed_out = true;
  spdlog::info("task {}.{} reached its time limit", it->second.key.job, it->second.key.task);
  runner_.terminate(it->second.pid, options_.cancel_grace);
}

void Worker::on_exit(TaskRef ref, ExitStatus status) {
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
    check_stream(
        task, task.stream->task_end(task.key, status.success() && !task.canceled && !task.timed_out,
                                    code, now));
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

// How long until the worker's time limit stops it (zero when it has none left).
Millis Worker::remaining() const {
  if (!options_.time_limit) return Millis::max();
  auto elapsed = std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - started_);
  return std::max(Millis(0), *options_.time_limit - elapsed);
}

}  // namespace hq::worker
