#pragma once
// The server daemon: owns all jobs, tasks and workers, hands ready tasks to workers.

#include <cstdint>
#include <functional>
#include <string>

#include <capnp/message.h>

#include "common/paths.h"
#include "common/time.h"

namespace hq::server {

struct ServerOptions {
  fs::path server_dir;
  std::string host;  // the name workers and clients connect to; empty: this machine's hostname
  uint16_t client_port = 0;  // 0: any free port
  uint16_t worker_port = 0;
  Millis heartbeat{8000};  // workers send a message at least this often
  // A worker silent for this many heartbeats is considered lost.
  uint32_t missed_heartbeats = 3;
  // The journal's directory; empty: <server_dir>/journal.
  fs::path journal;
  // No journal: nothing survives the server (throwaway runs, benchmarks).
  bool no_journal = false;
  // Called once the server listens and its access file is written, with what `hq server info`
  // would answer (a wire::ServerInfo message); `hq server start` prints it.
  std::function<void(capnp::MessageReader&)> on_started;
};

// Runs until `hq server stop`, SIGINT or SIGTERM. Returns the process exit code; errors (directory
// in use by a live server, ports taken) are logged with their cause.
int run_server(const ServerOptions& options);

}  // namespace hq::server
