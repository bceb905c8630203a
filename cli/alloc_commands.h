#pragma once
// `hq alloc ...`: automatic allocation through SLURM or PBS. For now `hq alloc dry-run`, which
// needs no server; the queue's options (QueueOptions) are the ones `hq alloc add` will take.

#include <optional>
#include <string>
#include <vector>

#include "alloc/backend.h"
#include "cli/client.h"

namespace CLI {
class App;
}

namespace hq::cli {

// The options of an allocation queue, as `hq alloc add|dry-run slurm|pbs` take them.
struct QueueOptions {
  std::string time_limit;  // required
  uint32_t backlog = 1;
  uint32_t max_workers_per_alloc = 1;
  std::optional<uint32_t> max_worker_count;
  double min_utilization = 0.0;
  std::string idle_timeout;
  std::string name;
  std::string worker_start_cmd, worker_stop_cmd, worker_wrap_cmd;
  std::string worker_time_limit;
  std::string on_server_lost;
  // Worker options passed to `hq worker start`.
  std::string cpus;
  std::vector<std::string> resources;
  std::string group;
  std::string detect_resources;
  bool no_hyper_threading = false;
  std::vector<std::string> batch_args;  // after `--`, for sbatch/qsub
};

// Adds the options above to `command` (a `slurm` or `pbs` leaf).
void add_queue_options(CLI::App& command, QueueOptions& options);

// What one allocation of such a queue asks for, with `workers` nodes; invalid options throw
// CommandError naming the flag. `hq_binary` and `server_dir` are what the workers run with.
alloc::AllocationSpec allocation_spec(const QueueOptions& options, uint32_t workers,
                                      const std::string& hq_binary, const std::string& server_dir);

// Adds the `alloc` command and its subcommands to `app`; the one that runs sets `code`.
void add_alloc_commands(CLI::App& app, const GlobalOptions& g, int& code);

}  // namespace hq::cli
