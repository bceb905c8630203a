#pragma once
// The server daemon: owns all jobs, tasks and workers, hands ready tasks to workers.

#include <cstdint>
#include <functional>
#include <optional>
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
  // `--access-file`: the server's keys, UID, hosts and ports come from this file (made by `hq
  // server generate-access`) instead of `host` and the ports above; it listens on exactly those
  // ports. Empty: none.
  fs::path access_file;
  // How often a worker without its own `--heartbeat` sends a message.
  Millis heartbeat{8000};
  // `--idle-timeout`: for every worker without its own, how long it may be without tasks before
  // it stops.
  std::optional<Millis> idle_timeout;
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
