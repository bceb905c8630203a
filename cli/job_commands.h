#pragma once
// Job management commands: `hq task cancel`, `hq job forget|task-ids|summary|cat|progress`.

#include "cli/client.h"

namespace CLI {
class App;
}

namespace hq::cli {

// Adds them under `job` and `task`. Each command stores its exit code in `code`; failures throw
// CommandError. `g` and `code` must outlive the parse.
void add_job_management_commands(CLI::App& job, CLI::App& task, const GlobalOptions& g, int& code);

}  // namespace hq::cli
