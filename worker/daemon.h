#pragma once
// The worker daemon: connects to the server, runs the tasks it is given, reports how they ended.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/paths.h"
#include "common/time.h"
#include "worker/hwdetect.h"

namespace hq::worker {

// `--on-server-lost`: what a worker does when its connection to the server breaks (not when the
// server stops it, or drops it on purpose).
enum class OnServerLost {
  kStop,           // kill everything and stop
  kFinishRunning,  // drop queued tasks, let running ones end, then stop
  kReconnect,      // keep running, reconnect with backoff and reattach; stop after a timeout
};

// The policy's name as the command line and the wire write it.
const char* on_server_lost_name(OnServerLost policy);

struct WorkerOptions {
  fs::path server_dir;
  // `--cpus`: "N", "NxM", "[0,1,..]" or "[[0,1],[2,3]]" (parse_cpu_definition); empty: detected.
  std::string cpus;
  // `--resource NAME=VALUE` (parse_resource_definition), each replacing a detected resource of
  // the same name. A name given twice, or "cpus" here and in `cpus`, is an error.
  std::vector<std::string> resources;
  std::string hostname;  // empty: this machine's hostname
  // Stop after this long without tasks; none: the server's --idle-timeout, if it has one.
  std::optional<Millis> idle_timeout;
  // `--heartbeat`: how often to report to the server (which declares the worker lost after
  // missed heartbeats); none: the server's --heartbeat.
  std::optional<Millis> heartbeat;
  // Missing directories are made 0700; empty: a private one made by mkdtemp under $TMPDIR,
  // removed when the worker stops.
  fs::path work_dir;
  Millis cancel_grace{1000};  // between SIGINT and SIGKILL of a canceled task
  DetectOptions detect;       // what to detect (`--detect-resources`)
  // `--time-limit`: the worker stops cleanly this long after it starts, and the server gives it
  // no task whose `--time-request` it would outlive.
  std::optional<Millis> time_limit;
  std::string group;       // `--group`; empty: "default"
  std::string allocation;  // the batch job it runs in (--manager); empty: none
  OnServerLost on_server_lost = OnServerLost::kReconnect;
  // `--reconnect-timeout`: with kReconnect, how long to keep trying before stopping as kStop.
  Millis reconnect_timeout{15 * 60 * 1000};
  // `--zero-work` (a benchmark mode): a task ends, finished, as soon as its resources are free,
  // without a process; the reports, the server's journal and scheduling are those of real tasks.
  bool zero_work = false;
};

// Runs until the server stops the worker, the server goes away, or the idle timeout passes.
// Returns the process exit code.
int run_worker(const WorkerOptions& options);

}  // namespace hq::worker
