#include "worker/process.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string_view>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/core.h>
#include <spdlog/spdlog.h>

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

class SpawnFileActions {
 public:
  SpawnFileActions() { posix_spawn_file_actions_init(&actions_); }
  ~SpawnFileActions() { posix_spawn_file_actions_destroy(&actions_); }
  SpawnFileActions(const SpawnFileActions&) = delete;
  SpawnFileActions& operator=(const SpawnFileActions&) = delete;
  posix_spawn_file_actions_t* get() { return &actions_; }

 private:
  posix_spawn_file_actions_t actions_;
};

class SpawnAttr {
 public:
  SpawnAttr() { posix_spawnattr_init(&attr_); }
  ~SpawnAttr() { posix_spawnattr_destroy(&attr_); }
  SpawnAttr(const SpawnAttr&) = delete;
  SpawnAttr& operator=(const SpawnAttr&) = delete;
  posix_spawnattr_t* get() { return &attr_; }

 private:
  posix_spawnattr_t attr_;
};

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

int pidfd_open(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

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
    return fmt::format("Program terminated by signal {} (SIG{})", sig, abbrev);
  }
  if (sig >= SIGRTMIN && sig <= SIGRTMAX) {
    return fmt::format("Program terminated by signal {} (SIGRTMIN+{})", sig, sig - SIGRTMIN);
  }
  return fmt::format("Program terminated by signal {}", sig);
}

// Each child is watched through a pidfd (Linux >= 5.3): the descriptor becomes readable once the
// child has exited, so no SIGCHLD handler is installed and other children of the process are never
// touched. The child stays a zombie until it is reaped here, so its pid (and its process group id)
// cannot be reused while it is in `children`.
struct ProcessRunner::Impl {
  struct Child {
    Child(asio::io_context& io, uint64_t serial, int pidfd, ExitHandler on_exit)
        : serial(serial), pidfd(io, pidfd), on_exit(std::move(on_exit)) {}
    uint64_t serial;  // tells this child from a later one that reuses its pid
    asio::posix::stream_descriptor pidfd;
    ExitHandler on_exit;
    bool terminating = false;  // terminate() or kill_all() was called: kill the group at exit
    std::optional<asio::steady_timer> kill_timer;
  };

  explicit Impl(asio::io_context& io) : io(io), self(std::make_shared<Impl*>(this)) {}
  ~Impl();

  Result<pid_t> spawn(const SpawnSpec& spec, ExitHandler on_exit);
  void watch(pid_t pid, Child& child);
  void on_ready(pid_t pid, uint64_t serial);
  void terminate(pid_t pid, Millis grace);
  void escalate(pid_t pid, uint64_t serial);
  void kill_all();

  asio::io_context& io;
  // Handlers hold a weak reference, so a handler that runs after the runner is gone does nothing.
  std::shared_ptr<Impl*> self;
  uint64_t next_serial = 1;
  std::unordered_map<pid_t, std::unique_ptr<Child>> children;
};

ProcessRunner::Impl::~Impl() {
  self.reset();
  for (const auto& [pid, child] : children) signal_group(pid, SIGKILL);
  for (const auto& [pid, child] : children) reap_blocking(pid);
  children.clear();
}

Result<pid_t> ProcessRunner::Impl::spawn(const SpawnSpec& spec, ExitHandler on_exit) {
  if (spec.argv.empty()) return Error{"cannot start a task with an empty command"};
  const std::string& program = spec.argv[0];
  for (const auto& [name, value] : spec.env) {
    if (name.empty() || name.find('=') != std::string::npos) {
      return Error{fmt::format("invalid environment variable name '{}' for '{}'", name, program)};
    }
  }

  if (!spec.cwd.empty()) {
    std::error_code ec;
    fs::create_directories(spec.cwd, ec);
    if (ec) {
      return Error{fmt::format("cannot create working directory '{}': {}", spec.cwd, ec.message())};
    }
  }

  UniqueFd out_fd;
  UniqueFd err_fd;
  fs::path out_path;
  if (!spec.stdout_path.empty()) {
    out_path = resolve_output(spec.stdout_path, spec.cwd);
    auto fd = open_output("stdout", out_path);
    if (!fd) return fd.error();
    out_fd = std::move(*fd);
  }
  bool shared_output = false;
  if (!spec.stderr_path.empty()) {
    fs::path err_path = resolve_output(spec.stderr_path, spec.cwd);
    if (out_fd.valid() && err_path == out_path) {
      shared_output = true;
    } else {
      auto fd = open_output("stderr", err_path);
      if (!fd) return fd.error();
      err_fd = std::move(*fd);
    }
  }

  SpawnFileActions actions;
  posix_spawn_file_actions_addopen(actions.get(), STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  if (out_fd.valid()) {
    posix_spawn_file_actions_adddup2(actions.get(), out_fd.get(), STDOUT_FILENO);
  } else {
    posix_spawn_file_actions_addopen(actions.get(), STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  }
  if (shared_output) {
    posix_spawn_file_actions_adddup2(actions.get(), out_fd.get(), STDERR_FILENO);
  } else if (err_fd.valid()) {
    posix_spawn_file_actions_adddup2(actions.get(), err_fd.get(), STDERR_FILENO);
  } else {
    posix_spawn_file_actions_addopen(actions.get(), STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  }
  if (!spec.cwd.empty()) posix_spawn_file_actions_addchdir_np(actions.get(), spec.cwd.c_str());
  // The task inherits nothing else of the worker's: an inherited server socket would keep a dead
  // worker's connection open, and the server would not notice its death.
  posix_spawn_file_actions_addclosefrom_np(actions.get(), STDERR_FILENO + 1);

  // The worker blocks or handles SIGCHLD, SIGINT and SIGTERM; the task starts with an empty mask
  // and default dispositions, in a process group of its own.
  SpawnAttr attr;
  sigset_t empty_mask;
  sigset_t all_signals;
  sigemptyset(&empty_mask);
  sigfillset(&all_signals);
  posix_spawnattr_setflags(attr.get(),
                           POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  posix_spawnattr_setpgroup(attr.get(), 0);
  posix_spawnattr_setsigmask(attr.get(), &empty_mask);
  posix_spawnattr_setsigdefault(attr.get(), &all_signals);

  std::vector<char*> argv;
  argv.reserve(spec.argv.size() + 1);
  for (const std::string& arg : spec.argv) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  std::vector<std::string> env_storage;
  std::vector<char*> envp = build_environment(spec.env, env_storage);

  pid_t pid = 0;
  // glibc's posix_spawnp waits for the exec and returns its errno.
  int err =
      posix_spawnp(&pid, program.c_str(), actions.get(), attr.get(), argv.data(), envp.data());
  if (err != 0) return Error{fmt::format("cannot start '{}': {}", program, errno_text(err))};

  auto fail_watch = [&](const std::string& reason) -> Error {
    signal_group(pid, SIGKILL);
    reap_blocking(pid);
    return Error{fmt::format("cannot watch '{}' (pid {}): {}", program, pid, reason)};
  };
  int pidfd = pidfd_open(pid);
  if (pidfd < 0) return fail_watch(errno_text(errno));
  std::unique_ptr<Child> child;
  try {
    child = std::make_unique<Child>(io, next_serial++, pidfd, std::move(on_exit));
  } catch (const std::system_error& e) {
    ::close(pidfd);
    return fail_watch(e.code().message());
  }
  Child& ref = *child;
  children.emplace(pid, std::move(child));
  // Registered before the loop next polls, so an already-readable pidfd is not missed.
  watch(pid, ref);
  return pid;
}

void ProcessRunner::Impl::watch(pid_t pid, Child& child) {
  child.pidfd.async_wait(
      asio::posix::descriptor_base::wait_read,
      [weak = std::weak_ptr<Impl*>(self), pid, serial = child.serial](const asio::error_code& ec) {
        if (ec == asio::error::operation_aborted) return;
        if (auto impl = weak.lock()) (*impl)->on_ready(pid, serial);
      });
}

void ProcessRunner::Impl::on_ready(pid_t pid, uint64_t serial) {
  auto it = children.find(pid);
  if (it == children.end() || it->second->serial != serial) return;
  Child& child = *it->second;
  // The leader is a zombie now and still holds the group id: the rest of a terminated task's group
  // goes with it.
  if (child.terminating) signal_group(pid, SIGKILL);
  std::optional<ExitStatus> status = try_reap(pid);
  if (!status) {
    watch(pid, child);  // not exited after all (a wait error): keep watching
    return;
  }
  ExitHandler handler = std::move(child.on_exit);
  children.erase(it);
  // Last: the handler may spawn, terminate or even destroy the runner.
  if (handler) handler(*status);
}

void ProcessRunner::Impl::terminate(pid_t pid, Millis grace) {
  auto it = children.find(pid);
  if (it == children.end()) return;
  Child& child = *it->second;
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
  auto it = children.find(pid);
  if (it == children.end() || it->second->serial != serial) return;
  signal_group(pid, SIGKILL);
}

void ProcessRunner::Impl::kill_all() {
  for (auto& [pid, child] : children) {
    child->terminating = true;
    signal_group(pid, SIGKILL);
  }
}

ProcessRunner::ProcessRunner(asio::io_context& io) : impl_(std::make_unique<Impl>(io)) {}

ProcessRunner::~ProcessRunner() = default;

Result<pid_t> ProcessRunner::spawn(const SpawnSpec& spec, ExitHandler on_exit) {
  return impl_->spawn(spec, std::move(on_exit));
}

void ProcessRunner::terminate(pid_t pid, Millis grace) { impl_->terminate(pid, grace); }

void ProcessRunner::kill_all() { impl_->kill_all(); }

size_t ProcessRunner::running() const { return impl_->children.size(); }

}  // namespace hq::worker
