#pragma once
// The worker daemon: connects to the server, runs the tasks it is given, reports how they ended.

#include <cstdint>
#include <optional>
#include <string>

#include "common/paths.h"
#include "common/time.h"

namespace hq::worker {

struct WorkerOptions {
  fs::path server_dir;
  uint32_t cpus = 0;                   // 0: the CPUs this process may run on
  std::string hostname;                // empty: this machine's hostname
  std::optional<Millis> idle_timeout;  // stop after this long without tasks
  fs::path work_dir;                   // empty: a fresh directory under $TMPDIR
  Millis cancel_grace{1000};           // between SIGINT and SIGKILL of a canceled task
};

// Runs until the server stops the worker, the server goes away, or the idle timeout passes.
// Returns the process exit code.
int run_worker(const WorkerOptions& options);

}  // namespace hq::worker
