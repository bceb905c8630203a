// The baseline for tools/bench-throughput: runs PROGRAM N times with posix_spawn, keeping at most
// PARALLEL children alive, and prints the elapsed seconds. No scheduling, no network, no journal.
// On stderr: the CPU time this process spent itself (not its children) per spawn, in us.
//
//   spawn-baseline N PARALLEL PROGRAM [ARGS...]

#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

extern char** environ;

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: spawn-baseline N PARALLEL PROGRAM [ARGS...]\n");
    return 2;
  }
  long total = std::atol(argv[1]);
  long parallel = std::atol(argv[2]);
  if (total <= 0 || parallel <= 0) {
    std::fprintf(stderr, "spawn-baseline: N and PARALLEL must be positive\n");
    return 2;
  }
  auto start = std::chrono::steady_clock::now();
  long started = 0, running = 0, failed = 0;
  while (started < total || running > 0) {
    while (started < total && running < parallel) {
      pid_t pid;
      int rc = posix_spawnp(&pid, argv[3], nullptr, nullptr, argv + 3, environ);
      if (rc != 0) {
        std::fprintf(stderr, "spawn-baseline: cannot start %s: %s\n", argv[3], std::strerror(rc));
        return 1;
      }
      ++started;
      ++running;
    }
    int status;
    if (waitpid(-1, &status, 0) > 0) {
      --running;
      if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) ++failed;
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%.6f\n", secs);
  struct rusage self {};
  getrusage(RUSAGE_SELF, &self);
  auto us = [](const timeval& t) { return t.tv_sec * 1e6 + t.tv_usec; };
  std::fprintf(stderr, "self CPU per spawn: %.1f us\n",
               (us(self.ru_utime) + us(self.ru_stime)) / static_cast<double>(total));
  return failed == 0 ? 0 : 1;
}
