#include "worker/reaper.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <ctime>
#include <unordered_set>

#include <fmt/format.h>

namespace hq::worker {
namespace {

// One message: a record of a seqpacket socket, so it arrives whole or not at all.
struct Message {
  int32_t op;  // 'A': add, 'R': remove
  int32_t pgid;
};

constexpr int kReaperFd = 3;
constexpr long kDrainIntervalNs = 10'000'000;  // 10 ms

void on_parent_death(int) {}  // only interrupts poll() and the sleep

// The reaper's whole life. Runs in the forked child, which owns nothing else of the worker.
[[noreturn]] void reaper_main(int fd, pid_t parent) {
  // Its own group: a signal for the worker's group (a terminal's ^C, a killpg of the worker)
  // must not stop the reaper before it has done its work.
  ::setpgid(0, 0);
  ::signal(SIGINT, SIG_IGN);
  ::signal(SIGHUP, SIG_IGN);
  ::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = on_parent_death;  // no SA_RESTART: poll() and nanosleep() return EINTR
  ::sigaction(SIGUSR1, &sa, nullptr);
  sigset_t mask;
  sigemptyset(&mask);
  ::sigprocmask(SIG_SETMASK, &mask, nullptr);
  // Orphaned although the socket stays open (a descendant of the worker holding a copy of it):
  // act all the same.
  ::prctl(PR_SET_PDEATHSIG, SIGUSR1);
  if (::dup2(fd, kReaperFd) < 0) ::_exit(1);
  ::close_range(kReaperFd + 1, ~0U, 0);
  if (::chdir("/") != 0) {
    // Only keeps a directory busy.
  }

  std::unordered_set<pid_t> groups;
  // Applies everything the socket holds; false at end-of-file (the worker is gone) or on a
  // broken socket, which means the same.
  auto drain = [&groups] {
    for (;;) {
      Message m{};
      ssize_t n = ::recv(kReaperFd, &m, sizeof(m), MSG_DONTWAIT);
      if (n == static_cast<ssize_t>(sizeof(m))) {
        if (m.op == 'A') {
          groups.insert(m.pgid);
        } else if (m.op == 'R') {
          groups.erase(m.pgid);
        }
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
  };
  bool gone = false;
  while (!gone && ::getppid() == parent) {
    pollfd p{kReaperFd, POLLIN, 0};
    if (::poll(&p, 1, -1) < 0) {
      if (errno == EINTR) continue;
      break;
    }
    gone = !drain();
    // The messages of a busy worker gather in the socket meanwhile, so that its sends wake this
    // process once per interval, not twice per task (each wake-up is a context switch on a core
    // the tasks need). What is sent stays in the socket if the worker dies: SIGUSR1 (its death)
    // cuts the sleep short, and the loop reads the rest before killing.
    if (!gone) {
      timespec interval{0, kDrainIntervalNs};
      ::nanosleep(&interval, nullptr);
    }
  }
  if (!gone) drain();  // orphaned: what the worker sent before it died
  for (pid_t pgid : groups) ::kill(-pgid, SIGKILL);
  ::_exit(0);
}

}  // namespace

Result<std::unique_ptr<TaskReaper>> TaskReaper::start() {
  int fds[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, fds) != 0) {
    return Error{
        fmt::format("cannot create the socket of the task reaper: {}", std::strerror(errno))};
  }
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid < 0) {
    int err = errno;
    ::close(fds[0]);
    ::close(fds[1]);
    return Error{fmt::format("cannot start the task reaper: {}", std::strerror(err))};
  }
  if (pid == 0) {
    ::close(fds[0]);
    reaper_main(fds[1], parent);
  }
  ::close(fds[1]);
  return std::unique_ptr<TaskReaper>(new TaskReaper(pid, fds[0]));
}

TaskReaper::~TaskReaper() {
  ::close(fd_);
  int status;
  while (::waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
  }
}

Status TaskReaper::send(char op, pid_t pgid) {
  Message m{op, pgid};
  ssize_t n;
  do {
    n = ::send(fd_, &m, sizeof(m), MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof(m))) return Status::ok();
  return Status::error(fmt::format(
      "the task reaper (pid {}) is gone ({}): a task could outlive this worker; restart the "
      "worker",
      pid_, n < 0 ? std::strerror(errno) : "short write"));
}

Status TaskReaper::add(pid_t pgid) { return send('A', pgid); }
Status TaskReaper::remove(pid_t pgid) { return send('R', pgid); }

}  // namespace hq::worker
