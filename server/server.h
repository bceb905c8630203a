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
  // `--reattach-grace`: after a restart, how long tasks that were running wait for their
  // workers to reattach before they run again (instance + 1). Ends early once every worker that
  // was connected is back.
  Millis reattach_grace{60000};
  // The journal's directory; empty: <server_dir>/journal.
  fs::path journal;
  // No journal: nothing survives the server (throwaway runs, benchmarks).
  bool no_journal = false;
  // Called once the server listens and its access file is written, with what `hq server info`
  // would answer (a wire::ServerInfo message); `hq server start` prints it.
  std::function<void(capnp::MessageReader&)> on_started;
};

// Runs until `hq server stop` (which stops the workers too), SIGINT or SIGTERM (which leave
// them running: they reattach to the next server on this directory). Returns the process exit code;
// errors (directory in use by a live server, ports taken) are logged with their cause.
int run_server(const ServerOptions& options);

}  // namespace hq::server
