#include "worker/spawn.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <system_error>

#ifndef CLONE_PIDFD
#define CLONE_PIDFD 0x00001000
#endif

namespace hq::worker {

namespace {

// The child's frames: its own, PATH candidates of up to PATH_MAX bytes, and execve. glibc's
// posix_spawn gives 32 KiB plus the argument vector's size; the argument vector stays on the
// worker's heap here.
constexpr size_t kStackBytes = 64 * 1024;
// The kernel's signal set: 64 signals on every Linux architecture hq builds for.
constexpr long kKernelSigsetBytes = 8;

// Shared by the worker and the child (the child runs in the worker's memory until its exec).
struct ChildArgs {
  const ChildSetup* setup;
  const char* path_list;  // the worker's PATH
  int dev_null;
  unsigned fd_limit;
  // Written by the child before it exits on a failed step; read by the worker once clone has
  // returned (CLONE_VFORK: after the child's exec or exit).
  volatile int error;
  volatile ChildStep failed;
};

// The child runs on a stack the sanitizers know nothing of, between a clone and an exec: it is
// kept free of their instrumentation and calls the kernel directly (no interceptor, no lock,
// no allocation). errno is the worker thread's own, which is suspended meanwhile.
#define HQ_CHILD_CODE __attribute__((no_sanitize("address", "undefined"), noinline))

[[noreturn]] HQ_CHILD_CODE void child_fail(ChildArgs* args, ChildStep step, int error) {
  args->failed = step;
  args->error = error != 0 ? error : EINVAL;
  syscall(SYS_exit_group, 127);
  __builtin_unreachable();
}

// posix_spawnp's search: the first candidate that execs wins; a candidate that is missing (or
// whose directory is) lets the next one try; EACCES is remembered; any other error ends it.
HQ_CHILD_CODE int exec_candidates(const ChildSetup& setup, const char* path_list) {
  const char* program = setup.program;
  if (std::strchr(program, '/') != nullptr) {
    syscall(SYS_execve, program, setup.argv, setup.envp);
    return errno;
  }
  if (*program == '\0') return ENOENT;
  const size_t name_bytes = std::strlen(program) + 1;
  if (name_bytes > NAME_MAX + 1) return ENAMETOOLONG;
  char candidate[PATH_MAX + NAME_MAX + 2];
  bool denied = false;
  for (const char* dir = path_list;;) {
    const char* end = std::strchr(dir, ':');
    if (end == nullptr) end = dir + std::strlen(dir);
    const size_t dir_bytes = static_cast<size_t>(end - dir);
    if (dir_bytes <= PATH_MAX) {
      size_t at = 0;
      if (dir_bytes > 0) {  // an empty entry is the current directory
        std::memcpy(candidate, dir, dir_bytes);
        at = dir_bytes;
        candidate[at++] = '/';
      }
      std::memcpy(candidate + at, program, name_bytes);
      syscall(SYS_execve, candidate, setup.argv, setup.envp);
      switch (errno) {
        case EACCES:
          denied = true;
          break;
        case ENOENT:
        case ENOTDIR:
        case ESTALE:
        case ENODEV:
        case ETIMEDOUT:
          break;
        default:
          return errno;
      }
    }
    if (*end == '\0') break;
    dir = end + 1;
  }
  return denied ? EACCES : ENOENT;
}

HQ_CHILD_CODE int child_main(void* raw) {
  auto* args = static_cast<ChildArgs*>(raw);
  const ChildSetup& setup = *args->setup;
  if (syscall(SYS_setpgid, 0, 0) != 0) child_fail(args, ChildStep::kGroup, errno);
  if (setup.affinity != nullptr &&
      syscall(SYS_sched_setaffinity, 0, setup.affinity_bytes, setup.affinity) != 0) {
    child_fail(args, ChildStep::kAffinity, errno);
  }
  for (int target = 0; target < 3; ++target) {
    const int source = setup.stdio[target] >= 0 ? setup.stdio[target] : args->dev_null;
    if (syscall(SYS_dup3, source, target, 0) < 0) child_fail(args, ChildStep::kDescriptors, errno);
  }
  if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0) {
    if (errno != ENOSYS) child_fail(args, ChildStep::kDescriptors, errno);
    for (unsigned fd = 3; fd < args->fd_limit; ++fd) syscall(SYS_close, fd);
  }
  if (setup.cwd != nullptr && syscall(SYS_chdir, setup.cwd) != 0) {
    child_fail(args, ChildStep::kDirectory, errno);
  }
  // Every signal but SIGCHLD is blocked since before the clone (see Spawner::start);
  // the dispositions go back to default (an ignored one would survive the exec), then the mask
  // is emptied. A zeroed kernel sigaction is SIG_DFL with no flags and an empty mask.
  struct {
    unsigned long words[4];
  } default_action = {};
  const unsigned long empty_mask = 0;
  for (int sig = 1; sig <= 64; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    syscall(SYS_rt_sigaction, sig, &default_action, nullptr, kKernelSigsetBytes);
  }
  if (syscall(SYS_rt_sigprocmask, SIG_SETMASK, &empty_mask, nullptr, kKernelSigsetBytes) != 0) {
    child_fail(args, ChildStep::kSignals, errno);
  }
  child_fail(args, ChildStep::kExec, exec_candidates(setup, args->path_list));
}

std::system_error os_error(const char* what) {
  return std::system_error(errno, std::generic_category(), what);
}

}  // namespace

Spawner::Spawner() {
  const size_t page = static_cast<size_t>(::sysconf(_SC_PAGESIZE));
  stack_bytes_ = kStackBytes + page;
  stack_ = ::mmap(nullptr, stack_bytes_, PROT_READ | PROT_WRITE,
                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
  if (stack_ == MAP_FAILED) {
    stack_ = nullptr;
    throw os_error("cannot map a stack for starting tasks");
  }
  if (::mprotect(stack_, page, PROT_NONE) != 0) {
    auto error = os_error("cannot guard the stack for starting tasks");
    ::munmap(stack_, stack_bytes_);
    throw error;
  }
  int fd = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (fd >= 0 && fd <= STDERR_FILENO) {
    int moved = ::fcntl(fd, F_DUPFD_CLOEXEC, STDERR_FILENO + 1);
    ::close(fd);
    fd = moved;
  }
  if (fd < 0) {
    auto error = os_error("cannot open /dev/null");
    ::munmap(stack_, stack_bytes_);
    throw error;
  }
  dev_null_ = fd;
  rlimit files{};
  ::getrlimit(RLIMIT_NOFILE, &files);
  fd_limit_ = static_cast<unsigned>(std::min<rlim_t>(files.rlim_cur, 1u << 20));
}

Spawner::~Spawner() {
  if (dev_null_ >= 0) ::close(dev_null_);
  if (stack_ != nullptr) ::munmap(stack_, stack_bytes_);
}

SpawnOutcome Spawner::start(const ChildSetup& setup) {
  SpawnOutcome outcome;
  for (int fd : setup.stdio) {
    if (fd >= 0 && fd <= STDERR_FILENO) {
      outcome.error = EINVAL;
      outcome.failed = ChildStep::kDescriptors;
      return outcome;
    }
  }
  const char* path_list = std::getenv("PATH");
  ChildArgs args{&setup,    path_list != nullptr ? path_list : "/bin:/usr/bin",
                 dev_null_, fd_limit_,
                 0,         ChildStep::kExec};
  // No handler of the worker may run in the child: every signal is blocked across the clone,
  // and the child inherits that mask. Except SIGCHLD, which the child (it has no children) is
  // never sent: blocked here, the SIGCHLD of an earlier child that exits meanwhile would not be
  // discarded but handed to another thread of the worker, woken for nothing.
  sigset_t all;
  sigset_t before;
  sigfillset(&all);
  sigdelset(&all, SIGCHLD);
  pthread_sigmask(SIG_SETMASK, &all, &before);
  int pidfd = -1;
  const pid_t pid = ::clone(child_main, static_cast<char*>(stack_) + stack_bytes_,
                            CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &args, &pidfd);
  const int clone_error = errno;
  pthread_sigmask(SIG_SETMASK, &before, nullptr);
  if (pid < 0) {
    outcome.error = clone_error;
    return outcome;
  }
  if (args.error != 0) {
    int status;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    ::close(pidfd);
    outcome.error = args.error;
    outcome.failed = args.failed;
    return outcome;
  }
  outcome.pid = pid;
  outcome.pidfd = pidfd;
  return outcome;
}

}  // namespace hq::worker
