#pragma once
// `hq journal replay|export|report`: commands that read a journal directly, without a server.
// They open it read-only (a RocksDB secondary instance), so they work on a stopped server's
// journal and never disturb a running one. `hq journal prune|flush` ask the running server.

#include "cli/client.h"

namespace CLI {
class App;
}

namespace hq::cli {

// Adds the `journal` command and its subcommands to `app`; the one that runs sets `code` to the
// process exit code. Failures throw CommandError.
void add_journal_commands(CLI::App& app, const GlobalOptions& g, int& code);

}  // namespace hq::cli
