#include "worker/process.h"

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <new>
#include <optional>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/core.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "worker/reaper.h"
#include "worker/spawn.h"

extern char** environ;

namespace hq::worker {

namespace fs = std::filesystem;

namespace {

std::string errno_text(int err) { return std::generic_category().message(err); }

// Owns one file descriptor of the worker process.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() { return std::exchange(fd_, -1); }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
};

// A CPU set of any size (CPU_ALLOC), for machines with more than CPU_SETSIZE CPUs.
class CpuSet {
 public:
  CpuSet() = default;
  explicit CpuSet(size_t cpus)
      : set_(CPU_ALLOC(std::max<size_t>(cpus, 1))),
        bytes_(CPU_ALLOC_SIZE(std::max<size_t>(cpus, 1))) {
    if (!set_) throw std::bad_alloc();
    CPU_ZERO_S(bytes_, set_.get());
  }
  cpu_set_t* get() const { return set_.get(); }
  size_t bytes() const { return bytes_; }
  bool empty() const { return !set_; }

 private:
  struct Free {
    void operator()(cpu_set_t* set) const { CPU_FREE(set); }
  };
  std::unique_ptr<cpu_set_t, Free> set_;
  size_t bytes_ = 0;
};

// The command that runs the script `program` (a path, relative to `cwd` when not absolute)
// through the interpreter its first line names: "#!INTERPRETER [ARG]" gives {INTERPRETER, ARG,
// program}, with ARG everything after the interpreter (one argument, as Linux passes it). An
// error names why it cannot, for a file that was found but is not executable.
Result<std::vector<std::string>> script_command(const std::string& program,
                                                const std::string& cwd) {
  const std::string not_executable = "Permission denied: the file is not executable";
  fs::path path(program);
  if (path.is_relative() && !cwd.empty()) path = fs::path(cwd) / path;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return Error{"Permission denied"};
  int raw;
  do {
    raw = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) {
    return Error{fmt::format("{}, and it cannot be read: {}", not_executable, errno_text(errno))};
  }
  UniqueFd fd(raw);
  char buf[256];  // Linux reads no more of a shebang line either (BINPRM_BUF_SIZE)
  size_t len = 0;
  while (len < sizeof(buf)) {
    ssize_t n = ::read(fd.get(), buf + len, sizeof(buf) - len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += static_cast<size_t>(n);
  }
  std::string_view line(buf, len);
  line = line.substr(0, line.find('\n'));
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\r'; };
  auto trim = [&](std::string_view v) {
    while (!v.empty() && space(v.front())) v.remove_prefix(1);
    while (!v.empty() && space(v.back())) v.remove_suffix(1);
    return v;
  };
  if (!line.starts_with("#!") || trim(line.substr(2)).empty()) {
    return Error{fmt::format(
        "{} and has no '#!' line naming an interpreter (make it executable with chmod +x, or "
        "start it with a line such as #!/bin/bash)",
        not_executable)};
  }
  line = trim(line.substr(2));
  size_t end = 0;
  while (end < line.size() && !space(line[end])) ++end;
  std::vector<std::string> command{std::string(line.substr(0, end))};
  if (std::string_view arg = trim(line.substr(end)); !arg.empty()) command.emplace_back(arg);
  command.push_back(program);
  return command;
}

const char* step_name(ChildStep step) {
  switch (step) {
    case ChildStep::kStart:
      return "creating its process";
    case ChildStep::kGroup:
      return "making its process group";
    case ChildStep::kAffinity:
      return "setting its CPU affinity";
    case ChildStep::kDescriptors:
      return "setting up its standard input and outputs";
    case ChildStep::kDirectory:
      return "entering its working directory";
    case ChildStep::kSignals:
      return "resetting its signals";
    case ChildStep::kExec:
      return "running the program";
  }
  return "starting";
}

std::string join_cpus(const std::vector<uint32_t>& cpus) {
  return fmt::format("{}", fmt::join(cpus, ","));
}

// Output paths are resolved like the child would resolve them: relative to its cwd.
fs::path resolve_output(const std::string& path, const std::string& cwd) {
  fs::path p(path);
  if (p.is_relative() && !cwd.empty()) p = fs::path(cwd) / p;
  return p.lexically_normal();
}

// Opens an output file for the child (parents created, truncated). The descriptor is close-on-exec
// and never 0, 1 or 2, so the file actions that install it cannot clobber one another.
Result<UniqueFd> open_output(std::string_view what, const fs::path& path) {
  auto fail = [&](const std::string& reason) -> Error {
    return Error{fmt::format("cannot open {} file '{}': {}", what, path.string(), reason)};
  };
  if (path.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    if (ec) return fail(ec.message());
  }
  int raw;
  do {
    raw = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  } while (raw < 0 && errno == EINTR);
  if (raw < 0) return fail(errno_text(errno));
  UniqueFd fd(raw);
  if (fd.get() <= STDERR_FILENO) {
    int moved = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    if (moved < 0) return fail(errno_text(errno));
    fd = UniqueFd(moved);
  }
  return fd;
}

// A pipe for one captured channel: the read end non-blocking and close-on-exec, the write end
// close-on-exec and never 0, 1 or 2 (like open_output's descriptors).
Result<std::pair<UniqueFd, UniqueFd>> open_capture_pipe(std::string_view what) {
  auto fail = [&]() -> Error {
    return Error{fmt::format("cannot create a pipe for {}: {}", what, errno_text(errno))};
  };
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return fail();
  UniqueFd read_end(fds[0]);
  UniqueFd write_end(fds[1]);
  // The child's end must block: programs do not expect EAGAIN on stdout.
  if (::fcntl(write_end.get(), F_SETFL, 0) != 0) return fail();
  if (write_end.get() <= STDERR_FILENO) {
    int moved = ::fcntl(write_end.get(), F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    if (moved < 0) return fail();
    write_end = UniqueFd(moved);
  }
  return std::pair{std::move(read_end), std::move(write_end)};
}

// An anonymous in-memory file holding `data`, positioned at its start, close-on-exec and never
// 0, 1 or 2: a child's standard input that no other child's reads can move.
Result<UniqueFd> stdin_file(const std::string& data) {
  int raw = ::memfd_create("hq-stdin", MFD_CLOEXEC);
  if (raw < 0) return Error{errno_text(errno)};
  UniqueFd fd(raw);
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd.get(), data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error{errno_text(errno)};
    done += static_cast<size_t>(n);
  }
  if (::lseek(fd.get(), 0, SEEK_SET) != 0) return Error{errno_text(errno)};
  if (fd.get() <= STDERR_FILENO) {
    int moved = ::fcntl(fd.get(), F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    if (moved < 0) return Error{errno_text(errno)};
    fd = UniqueFd(moved);
  }
  return fd;
}

// The worker's environment with `overrides` added or replacing same-named entries. The returned
// pointers refer into `storage` and `environ`.
std::vector<char*> build_environment(const std::vector<std::pair<std::string, std::string>>& env,
                                     std::vector<std::string>& storage) {
  std::unordered_set<std::string_view> overridden;
  storage.reserve(env.size());
  for (const auto& [name, value] : env) {
    overridden.insert(name);
    storage.push_back(name + "=" + value);
  }
  std::vector<char*> envp;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    std::string_view text(*entry);
    std::string_view name = text.substr(0, text.find('='));
    if (!overridden.contains(name)) envp.push_back(*entry);
  }
  // Later duplicates in `env` win: keep only the last occurrence of each name.
  std::unordered_set<std::string_view> seen;
  std::vector<char*> added;
  for (size_t i = storage.size(); i-- > 0;) {
    if (seen.insert(env[i].first).second) added.push_back(storage[i].data());
  }
  envp.insert(envp.end(), added.rbegin(), added.rend());
  envp.push_back(nullptr);
  return envp;
}

// Reaps `pid` without blocking. Returns nullopt while it is still running.
std::optional<ExitStatus> try_reap(pid_t pid) {
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return std::nullopt;
  ExitStatus exit;
  if (r < 0) {
    // Someone else reaped it (SIGCHLD set to SIG_IGN, or a waitpid(-1) elsewhere in the process).
    spdlog::warn("child {} was reaped outside ProcessRunner: {}", pid, errno_text(errno));
    exit.code = -1;
  } else if (WIFSIGNALED(status)) {
    exit.signaled = true;
    exit.signal = WTERMSIG(status);
  } else {
    exit.code = WEXITSTATUS(status);
  }
  return exit;
}

void reap_blocking(pid_t pid) {
  int status;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
}

// Signals the group that `leader` (a child not yet reaped) started with; the leader itself too,
// should it have moved to another group.
void signal_group(pid_t leader, int sig) {
  if (::kill(-leader, sig) == 0) return;
  if (errno == ESRCH && ::kill(leader, sig) == 0) return;
  if (errno != ESRCH) {
    spdlog::warn("cannot send signal {} to process group {}: {}", sig, leader, errno_text(errno));
  }
}

}  // namespace

std::string describe_exit(const ExitStatus& status) {
  if (!status.signaled) return fmt::format("Program terminated with exit code {}", status.code);
  int sig = status.signal;
  if (const char* abbrev = sigabbrev_np(sig)) {
    return fmt::format("Program terminated. Received signal {} (SIG{})", sig, abbrev);
  }
  if (sig >= SIGRTMIN && sig <= SIGRTMAX) {
    return fmt::format("Program terminated. Received signal {} (SIGRTMIN+{})", sig, sig - SIGRTMIN);
  }
  return fmt::format("Program terminated. Received signal {}", sig);
}

// Each child is watched through a pidfd (Linux >= 5.3): the descriptor becomes readable once the
// child has exited, so no SIGCHLD handler is installed and other children of the process are never
// touched. The child stays a zombie until it is reaped here, so its pid (and its process group id)
// cannot be reused while it is in `live`. Captured pipes are read on the loop too: a readiness
// wait, then one non-blocking read into a buffer shared by all children.
struct ProcessRunner::Impl {
  struct Child {
    Child(asio::io_context& io, uint64_t serial, pid_t pid, int pidfd, ExitHandler on_exit,
          OutputHandler on_output)
        : serial(serial),
          pid(pid),
          pidfd(io, pidfd),
          on_exit(std::move(on_exit)),
          on_output(std::move(on_output)) {}
    uint64_t serial;  // tells this child from a later one that reuses its pid
    pid_t pid;
    asio::posix::stream_descriptor pidfd;
    ExitHandler on_exit;
    OutputHandler on_output;
    // Read ends of the captured channels (indexed by OutputChannel); empty once at end-of-file.
    std::optional<asio::posix::stream_descriptor> pipes[2];
    std::optional<ExitStatus> status;  // set once reaped
    bool terminating = false;  // terminate() or kill_all() was called: kill the group at exit
    std::optional<asio::steady_timer> kill_timer;
    std::optional<asio::steady_timer> drain_timer;
  };

  Impl(asio::io_context& io, Millis drain_grace, TaskReaper* reaper)
      : io(io), drain_grace(drain_grace), reaper(reaper), self(std::make_shared<Impl*>(this)) {}
  ~Impl();

  Result<pid_t> spawn(const SpawnSpec& spec, ExitHandler on_exit, OutputHandler on_output);
  Child* find(uint64_t serial);
  Child* find_live(pid_t pid);
  void watch(Child& child);
  void on_ready(uint64_t serial);
  void watch_pipe(Child& child, OutputChannel channel);
  // Reads once from a pipe; false when it is closed (end-of-file or error).
  bool read_pipe(Child& child, OutputChannel channel);
  void on_readable(uint64_t serial, OutputChannel channel);
  void on_drain_timeout(uint64_t serial);
  // Reports the child when it is reaped and its pipes are closed.
  void finish_if_done(uint64_t serial);
  void terminate(pid_t pid, Millis grace);
  void escalate(pid_t pid, uint64_t serial);
  void kill_all();
  // The leader of group `pgid` was reaped: the group is unregistered from the reaper once no
  // member is left (now, or at a later check_lingering()).
  void leader_reaped(pid_t pgid);
  void check_lingering();

  asio::io_context& io;
  Millis drain_grace;
  TaskReaper* reaper;  // may be null
  // Groups registered with the reaper whose leader was reaped while members were left.
  std::unordered_set<pid_t> lingering;
  std::optional<asio::steady_timer> linger_timer;
  // Handlers hold a weak reference, so a handler that runs after the runner is gone does nothing.
  std::shared_ptr<Impl*> self;
  uint64_t next_serial = 1;
  // Every child not yet reported, by serial; and those not yet reaped, by pid.
  std::unordered_map<uint64_t, std::unique_ptr<Child>> children;
  std::unordered_map<pid_t, uint64_t> live;
  std::vector<uint8_t> buffer = std::vector<uint8_t>(kCaptureChunkBytes);
  Spawner spawner;
};

ProcessRunner::Impl::~Impl() {
  self.reset();
  for (const auto& [pid, serial] : live) signal_group(pid, SIGKILL);
  for (pid_t pgid : lingering) ::kill(-pgid, SIGKILL);
  for (const auto& [pid, serial] : live) {
    reap_blocking(pid);
    // Registered still when killed members are left: the reaper kills them once more at the
    // worker's exit, while they are still dying.
    if (reaper && ::kill(-pid, 0) != 0 && errno == ESRCH) reaper->remove(pid).ignore();
  }
  children.clear();
}

void ProcessRunner::Impl::leader_reaped(pid_t pgid) {
  if (!reaper) return;
  if (::kill(-pgid, 0) == 0 || errno != ESRCH) {
    lingering.insert(pgid);
    if (!linger_timer) {
      linger_timer.emplace(io, Millis(1000));
      linger_timer->async_wait([weak = std::weak_ptr<Impl*>(self)](const asio::error_code& ec) {
        if (ec == asio::error::operation_aborted) return;
        if (auto impl = weak.lock()) (*impl)->check_lingering();
      });
    }
    return;
  }
  if (auto st = reaper->remove(pgid); !st) spdlog::error("{}", st.message());
}

void ProcessRunner::Impl::check_lingering() {
  linger_timer.reset();
  std::vector<pid_t> groups(lingering.begin(), lingering.end());
  lingering.clear();
  for (pid_t pgid : groups) leader_reaped(pgid);
}

ProcessRunner::Impl::Child* ProcessRunner::Impl::find(uint64_t serial) {
  auto it = children.find(serial);
  return it == children.end() ? nullptr : it->second.get();
}

ProcessRunner::Impl::Child* ProcessRunner::Impl::find_live(pid_t pid) {
  auto it = live.find(pid);
  return it == live.end() ? nullptr : find(it->second);
}

Result<pid_t> ProcessRunner::Impl::spawn(const SpawnSpec& spec, ExitHandler on_exit,
                                         OutputHandler on_output) {
  if (spec.argv.empty()) return Error{"cannot start a task with an empty command"};
  const std::string& program = spec.argv[0];
  for (const auto& [name, value] : spec.env) {
    if (name.empty() || name.find('=') != std::string::npos) {
      return Error{fmt::format("invalid environment variable name '{}' for '{}'", name, program)};
    }
  }

  // The descriptors the child gets as stdout and stderr (when not /dev/null), and the read ends
  // of the captured channels.
  UniqueFd out_fd;
  UniqueFd err_fd;
  UniqueFd read_ends[2];
  fs::path out_path;
  if (spec.capture_stdout) {
    auto pipe = open_capture_pipe("stdout");
    if (!pipe) return pipe.error();
    read_ends[0] = std::move(pipe->first);
    out_fd = std::move(pipe->second);
  } else if (!spec.stdout_path.empty()) {
    out_path = resolve_output(spec.stdout_path, spec.cwd);
    auto fd = open_output("stdout", out_path);
    if (!fd) return fd.error();
    out_fd = std::move(*fd);
  }
  bool shared_output = false;
  if (spec.capture_stderr) {
    auto pipe = open_capture_pipe("stderr");
    if (!pipe) return pipe.error();
    read_ends[1] = std::move(pipe->first);
    err_fd = std::move(pipe->second);
  } else if (!spec.stderr_path.empty()) {
    fs::path err_path = resolve_output(spec.stderr_path, spec.cwd);
    if (out_fd.valid() && !spec.capture_stdout && err_path == out_path) {
      shared_output = true;
    } else {
      auto fd = open_output("stderr", err_path);
      if (!fd) return fd.error();
      err_fd = std::move(*fd);
    }
  }
  // Standard input from memory: an anonymous file with the bytes, read from its start.
  UniqueFd in_fd;
  if (spec.stdin_data) {
    auto fd = stdin_file(*spec.stdin_data);
    if (!fd)
      return Error{
          fmt::format("cannot prepare the standard input of '{}': {}", program, fd.message())};
    in_fd = std::move(*fd);
  }
  ChildSetup setup;
  setup.stdio[0] = in_fd.get();
  setup.stdio[1] = out_fd.get();
  setup.stdio[2] = shared_output ? out_fd.get() : err_fd.get();
  // The task inherits no other descriptor of the worker's (Spawner closes them): an inherited
  // server socket would keep a dead worker's connection open, and the server would not notice
  // its death.
  if (!spec.cwd.empty()) setup.cwd = spec.cwd.c_str();
  CpuSet pinned;
  if (!spec.cpu_affinity.empty()) {
    uint32_t highest = *std::max_element(spec.cpu_affinity.begin(), spec.cpu_affinity.end());
    pinned = CpuSet(static_cast<size_t>(highest) + 1);
    for (uint32_t cpu : spec.cpu_affinity) CPU_SET_S(cpu, pinned.bytes(), pinned.get());
    setup.affinity = pinned.get();
    setup.affinity_bytes = pinned.bytes();
  }

  std::vector<char*> argv;
  argv.reserve(spec.argv.size() + 1);
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  std::vector<char*> envp = build_environment(spec.env, env_storage);
  setup.program = program.c_str();
  setup.argv = argv.data();
  setup.envp = envp.data();

  SpawnOutcome started = spawner.start(setup);
  if (!started.ok() && started.failed == ChildStep::kDirectory &&
      (started.error == ENOENT || started.error == ENOTDIR)) {
    // Made on first use (mostly it exists: the submit directory), then the start is retried.
    std::error_code ec;
    fs::create_directories(spec.cwd, ec);
    if (ec) {
      return Error{fmt::format("cannot create working directory '{}': {}", spec.cwd, ec.message())};
    }
    started = spawner.start(setup);
  }
  if (!started.ok() && started.failed == ChildStep::kExec && started.error == EACCES &&
      program.find('/') != std::string::npos) {
    // Not executable: a script with a shebang runs through its interpreter, as HyperQueue's
    // users expect of `hq submit ./job.sh`. Only this failure path reads the file.
    auto script = script_command(program, spec.cwd);
    if (!script) return Error{fmt::format("cannot start '{}': {}", program, script.message())};
    std::vector<char*> script_argv;
    for (std::string& arg : *script) script_argv.push_back(arg.data());
    for (size_t i = 1; i < spec.argv.size(); ++i) script_argv.push_back(argv[i]);
    script_argv.push_back(nullptr);
    setup.program = script_argv[0];
    setup.argv = script_argv.data();
    started = spawner.start(setup);
    if (!started.ok() && started.failed == ChildStep::kExec) {
      return Error{fmt::format("cannot start '{}' through its interpreter '{}': {}", program,
                               (*script)[0], errno_text(started.error))};
    }
  }
  if (!started.ok()) {
    switch (started.failed) {
      case ChildStep::kAffinity:
        return Error{
            fmt::format("cannot pin '{}' to CPUs {}: {} (are they CPUs this worker may use?)",
                        program, join_cpus(spec.cpu_affinity), errno_text(started.error))};
      case ChildStep::kDirectory:
        return Error{fmt::format("cannot start '{}' in its working directory '{}': {}", program,
                                 spec.cwd, errno_text(started.error))};
      case ChildStep::kExec:
        return Error{fmt::format("cannot start '{}': {}", program, errno_text(started.error))};
      default:
        return Error{fmt::format("cannot start '{}' (while {}): {}", program,
                                 step_name(started.failed), errno_text(started.error))};
    }
  }
  const pid_t pid = started.pid;
  UniqueFd pidfd(started.pidfd);

  // Registered at once: from here on the child's group dies with the worker. (The child could
  // outlive a worker killed between the exec and this call, a few microseconds: the spawn
  // gives no earlier moment at which its pid is known.)
  lingering.erase(pid);  // a group of that id is gone if the id names a new child
  if (reaper) {
    if (auto st = reaper->add(pid); !st) {
      signal_group(pid, SIGKILL);
      reap_blocking(pid);
      return Error{fmt::format("cannot start '{}': {}", program, st.message())};
    }
  }
  auto fail_watch = [&](const std::string& reason) -> Error {
    signal_group(pid, SIGKILL);
    reap_blocking(pid);
    leader_reaped(pid);
    return Error{fmt::format("cannot watch '{}' (pid {}): {}", program, pid, reason)};
  };
  // The child holds its own copies now; ours would keep the pipes from ever reaching EOF.
  out_fd.reset();
  err_fd.reset();
  in_fd.reset();
  std::unique_ptr<Child> child;
  uint64_t serial = next_serial++;
  try {
    child = std::make_unique<Child>(io, serial, pid, pidfd.get(), std::move(on_exit),
                                    std::move(on_output));
    pidfd.release();
  } catch (const std::system_error& e) {
    return fail_watch(e.code().message());
  }
  for (int i = 0; i < 2; ++i) {
    if (!read_ends[i].valid()) continue;
    try {
      child->pipes[i].emplace(io, read_ends[i].get());
      read_ends[i].release();
    } catch (const std::system_error& e) {
      child.reset();
      return fail_watch(e.code().message());
    }
  }
  Child& ref = *child;
  children.emplace(serial, std::move(child));
  live.emplace(pid, serial);
  // Registered before the loop next polls, so an already-readable pidfd is not missed.
  watch(ref);
  for (auto channel : {OutputChannel::kStdout, OutputChannel::kStderr}) {
    if (ref.pipes[static_cast<int>(channel)]) watch_pipe(ref, channel);
  }
  return pid;
}

void ProcessRunner::Impl::watch(Child& child) {
  child.pidfd.async_wait(
      asio::posix::descriptor_base::wait_read,
      [weak = std::weak_ptr<Impl*>(self), serial = child.serial](const asio::error_code& ec) {
        if (ec == asio::error::operation_aborted) return;
        if (auto impl = weak.lock()) (*impl)->on_ready(serial);
      });
}

void ProcessRunner::Impl::on_ready(uint64_t serial) {
  Child* child = find(serial);
  if (child == nullptr || child->status) return;
  pid_t pid = child->pid;
  // The leader is a zombie now and still holds the group id: the rest of a terminated task's group
  // goes with it.
  if (child->terminating) signal_group(pid, SIGKILL);
  std::optional<ExitStatus> status = try_reap(pid);
  if (!status) {
    watch(*child);  // not exited after all (a wait error): keep watching
    return;
  }
  live.erase(pid);
  leader_reaped(pid);
  child->status = status;
  child->kill_timer.reset();
  if (child->pipes[0] || child->pipes[1]) {
    child->drain_timer.emplace(io, drain_grace);
    child->drain_timer->async_wait(
        [weak = std::weak_ptr<Impl*>(self), serial](const asio::error_code& ec) {
          if (ec == asio::error::operation_aborted) return;
          if (auto impl = weak.lock()) (*impl)->on_drain_timeout(serial);
        });
  }
  finish_if_done(serial);
}

void ProcessRunner::Impl::watch_pipe(Child& child, OutputChannel channel) {
  child.pipes[static_cast<int>(channel)]->async_wait(
      asio::posix::descriptor_base::wait_read,
      [weak = std::weak_ptr<Impl*>(self), serial = child.serial,
       channel](const asio::error_code& ec) {
        if (ec == asio::error::operation_aborted) return;
        if (auto impl = weak.lock()) (*impl)->on_readable(serial, channel);
      });
}

bool ProcessRunner::Impl::read_pipe(Child& child, OutputChannel channel) {
  auto& pipe = child.pipes[static_cast<int>(channel)];
  ssize_t n;
  do {
    n = ::read(pipe->native_handle(), buffer.data(), buffer.size());
  } while (n < 0 && errno == EINTR);
  if (n > 0) {
    if (child.on_output) {
      child.on_output(channel, std::span<const uint8_t>(buffer.data(), static_cast<size_t>(n)));
    }
    return true;
  }
  if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
  if (n < 0) {
    spdlog::warn("cannot read the {} of child {}: {}",
                 channel == OutputChannel::kStdout ? "stdout" : "stderr", child.pid,
                 errno_text(errno));
  }
  pipe.reset();  // end-of-file
  return false;
}

void ProcessRunner::Impl::on_readable(uint64_t serial, OutputChannel channel) {
  Child* child = find(serial);
  if (child == nullptr || !child->pipes[static_cast<int>(channel)]) return;
  if (read_pipe(*child, channel)) {
    // The output handler may have done anything with the runner: look the child up again.
    child = find(serial);
    if (child != nullptr && child->pipes[static_cast<int>(channel)]) watch_pipe(*child, channel);
    return;
  }
  finish_if_done(serial);
}

void ProcessRunner::Impl::on_drain_timeout(uint64_t serial) {
  // A descendant holds a pipe open: hand over what it wrote so far, then give up on it. The
  // reads are bounded, so a descendant that writes without pause cannot keep the loop here.
  constexpr int kMaxReads = 64;
  for (auto channel : {OutputChannel::kStdout, OutputChannel::kStderr}) {
    for (int i = 0; i < kMaxReads; ++i) {
      Child* child = find(serial);
      if (child == nullptr) return;
      auto& pipe = child->pipes[static_cast<int>(channel)];
      if (!pipe) break;
      pollfd p{pipe->native_handle(), POLLIN, 0};
      if (::poll(&p, 1, 0) != 1) break;  // nothing readable now
      if (!read_pipe(*child, channel)) break;
    }
  }
  Child* child = find(serial);
  if (child == nullptr) return;
  for (auto& pipe : child->pipes) {
    if (pipe) {
      spdlog::debug("child {} exited {} ago; closing its output pipe that a descendant holds",
                    child->pid, drain_grace.count());
      pipe.reset();  // cancels the pending wait
    }
  }
  finish_if_done(serial);
}

void ProcessRunner::Impl::finish_if_done(uint64_t serial) {
  auto it = children.find(serial);
  if (it == children.end()) return;
  Child& child = *it->second;
  if (!child.status || child.pipes[0] || child.pipes[1]) return;
  ExitHandler handler = std::move(child.on_exit);
  ExitStatus status = *child.status;
  children.erase(it);
  // Last: the handler may spawn, terminate or even destroy the runner.
  if (handler) handler(status);
}

void ProcessRunner::Impl::terminate(pid_t pid, Millis grace) {
  Child* found = find_live(pid);
  if (found == nullptr) return;
  Child& child = *found;
  child.terminating = true;
  signal_group(pid, SIGINT);
  auto deadline = asio::steady_timer::clock_type::now() + grace;
  if (child.kill_timer && child.kill_timer->expiry() <= deadline) return;  // earlier one stands
  if (!child.kill_timer) child.kill_timer.emplace(io);
  child.kill_timer->expires_at(deadline);
  child.kill_timer->async_wait(
      [weak = std::weak_ptr<Impl*>(self), pid, serial = child.serial](const asio::error_code& ec) {
        if (ec == asio::error::operation_aborted) return;
        if (auto impl = weak.lock()) (*impl)->escalate(pid, serial);
      });
}

void ProcessRunner::Impl::escalate(pid_t pid, uint64_t serial) {
  auto it = live.find(pid);
  if (it == live.end() || it->second != serial) return;
  signal_group(pid, SIGKILL);
}

void ProcessRunner::Impl::kill_all() {
  for (auto& [pid, serial] : live) {
    children.at(serial)->terminating = true;
    signal_group(pid, SIGKILL);
  }
  for (pid_t pgid : lingering) ::kill(-pgid, SIGKILL);
}

ProcessRunner::ProcessRunner(asio::io_context& io, Millis drain_grace, TaskReaper* reaper)
    : impl_(std::make_unique<Impl>(io, drain_grace, reaper)) {}

ProcessRunner::~ProcessRunner() = default;

Result<pid_t> ProcessRunner::spawn(const SpawnSpec& spec, ExitHandler on_exit,
                                   OutputHandler on_output) {
  return impl_->spawn(spec, std::move(on_exit), std::move(on_output));
}

void ProcessRunner::terminate(pid_t pid, Millis grace) { impl_->terminate(pid, grace); }

void ProcessRunner::kill_all() { impl_->kill_all(); }

size_t ProcessRunner::running() const { return impl_->children.size(); }

}  // namespace hq::worker
