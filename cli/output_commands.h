#pragma once
// `hq output ...`: offline readers of a stream directory (`hq submit --stream DIR`). They need no
// server: they read the directory's files through output-stream/stream.h.

#include "cli/client.h"

namespace CLI {
class App;
}

namespace hq::cli {

// Adds `hq output summary|jobs|show|cat|export` to `app`. Each command stores its exit code in
// `code`; failures throw CommandError. `g` and `code` must outlive the parse.
void add_output_commands(CLI::App& app, const GlobalOptions& g, int& code);

}  // namespace hq::cli
