#include "cli/alloc_commands.h"

#include <unistd.h>

#include <filesystem>
#include <iostream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "alloc/batch_system.h"
#include "common/resources.h"
#include "common/time.h"

namespace hq::cli {
namespace {

Millis positive_duration(const std::string& flag, const std::string& text) {
  auto d = parse_duration(text);
  if (!d) throw CommandError{fmt::format("invalid {}: {}", flag, d.message())};
  if (d->count() <= 0) throw CommandError{fmt::format("invalid {}: it must be positive", flag)};
  return *d;
}

std::string millis_arg(Millis d) { return fmt::format("{}ms", d.count()); }

// The path of this very `hq`, which the allocation's workers run.
std::string own_binary() {
  std::error_code ec;
  fs::path self = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw CommandError{"cannot find the hq binary (/proc/self/exe): " + ec.message()};
  return self.string();
}

int cmd_alloc_dry_run(const GlobalOptions& g, alloc::ManagerKind kind,
                      const QueueOptions& options) {
  alloc::AllocationSpec spec = allocation_spec(options, options.max_workers_per_alloc, own_binary(),
                                               fs::absolute(g.resolved_server_dir()).string());
  alloc::ProcessRunner runner;
  alloc::BatchSystem batch(alloc::make_backend(kind), runner);
  if (Status st = batch.dry_run(spec); !st) {
    throw CommandError{fmt::format("dry run of a {} allocation failed: {}",
                                   alloc::manager_name(kind), st.message())};
  }
  switch (g.mode()) {
    case OutputMode::kJson:
      std::cout << nlohmann::json{{"manager", alloc::manager_name(kind)}, {"accepted", true}}.dump(
                       2)
                << "\n";
      break;
    case OutputMode::kCli:
      std::cout << fmt::format(
          "Dry run succeeded: {} accepted a test allocation, which was removed at once\n",
          alloc::manager_name(kind));
      break;
    case OutputMode::kQuiet:
      break;
  }
  return 0;
}

}  // namespace

void add_queue_options(CLI::App& c, QueueOptions& o) {
  c.add_option("--time-limit", o.time_limit,
               "Walltime of each allocation (e.g. 1h); workers stop before it ends")
      ->required();
  c.add_option("--backlog", o.backlog, "Allocations queued in the batch system at most (default 1)")
      ->check(CLI::PositiveNumber);
  c.add_option("--max-workers-per-alloc", o.max_workers_per_alloc,
               "Nodes (one worker each) per allocation at most (default 1)")
      ->check(CLI::PositiveNumber);
  c.add_option("--max-worker-count", o.max_worker_count,
               "Workers queued or running across the queue's allocations at most")
      ->check(CLI::PositiveNumber);
  c.add_option("--min-utilization", o.min_utilization,
               "Submit only when waiting tasks would use this share of a worker (0.0-1.0)")
      ->check(CLI::Range(0.0, 1.0));
  c.add_option("--idle-timeout", o.idle_timeout,
               "Workers stop after this long without tasks (default 5m)");
  c.add_option("--name", o.name, "Name of the queue; allocations are called hq-NAME");
  c.add_option("--worker-start-cmd", o.worker_start_cmd,
               "Shell command run on each node before its worker starts");
  c.add_option("--worker-stop-cmd", o.worker_stop_cmd,
               "Shell command run on each node after its worker stops (best effort)");
  c.add_option("--worker-wrap-cmd", o.worker_wrap_cmd,
               "Words put in front of the worker's command (e.g. \"podman run img\")");
  c.add_option("--worker-time-limit", o.worker_time_limit,
               "Time limit of the workers (default: the allocation's remaining time)");
  c.add_option("--on-server-lost", o.on_server_lost,
               "What workers do when the server goes away: stop or finish-running")
      ->check(CLI::IsMember({"stop", "finish-running"}));
  c.add_option("--cpus", o.cpus, "CPUs of each worker, as for `hq worker start --cpus`");
  c.add_option("--resource", o.resources,
               "A resource of each worker, NAME=VALUE as for `hq worker start` (repeatable)")
      ->allow_extra_args(false);
  c.add_option("--group", o.group,
               "Group of the workers (default: the allocation's id, as the batch system gives it)");
  c.add_option("--detect-resources", o.detect_resources,
               "What workers detect, as for `hq worker start --detect-resources`");
  c.add_flag("--no-hyper-threading", o.no_hyper_threading,
             "Workers use one CPU (the first) of each core");
  c.add_option("batch_args", o.batch_args,
               "Arguments for sbatch / qsub, after `--` (e.g. -- --partition=p1 -A proj)");
}

alloc::AllocationSpec allocation_spec(const QueueOptions& o, uint32_t workers,
                                      const std::string& hq_binary, const std::string& server_dir) {
  alloc::AllocationSpec spec;
  spec.name = o.name;
  spec.time_limit = positive_duration("--time-limit", o.time_limit);
  if (!o.worker_time_limit.empty()) {
    spec.worker_time_limit = positive_duration("--worker-time-limit", o.worker_time_limit);
    if (*spec.worker_time_limit > spec.time_limit) {
      throw CommandError{fmt::format("--worker-time-limit ({}) is longer than --time-limit ({})",
                                     format_duration(*spec.worker_time_limit),
                                     format_duration(spec.time_limit))};
    }
  }
  spec.workers = workers;
  spec.hq_binary = hq_binary;
  spec.server_dir = server_dir;
  spec.worker_start_cmd = o.worker_start_cmd;
  spec.worker_stop_cmd = o.worker_stop_cmd;
  spec.worker_wrap_cmd = o.worker_wrap_cmd;
  spec.batch_args = o.batch_args;
  std::vector<std::string>& w = spec.worker_args;
  w.push_back("--idle-timeout");
  w.push_back(millis_arg(o.idle_timeout.empty()
                             ? Millis{5 * 60 * 1000}
                             : positive_duration("--idle-timeout", o.idle_timeout)));
  if (!o.cpus.empty()) {
    must(parse_cpu_definition(o.cpus), "invalid --cpus");
    w.push_back("--cpus");
    w.push_back(o.cpus);
  }
  for (const std::string& r : o.resources) {
    must(parse_resource_definition(r), "invalid --resource");
    w.push_back("--resource");
    w.push_back(r);
  }
  if (!o.group.empty()) {
    w.push_back("--group");
    w.push_back(o.group);
  }
  if (!o.on_server_lost.empty()) {
    w.push_back("--on-server-lost");
    w.push_back(o.on_server_lost);
  }
  if (!o.detect_resources.empty()) {
    w.push_back("--detect-resources");
    w.push_back(o.detect_resources);
  }
  if (o.no_hyper_threading) w.push_back("--no-hyper-threading");
  return spec;
}

void add_alloc_commands(CLI::App& app, const GlobalOptions& g, int& code) {
  auto* command = app.add_subcommand("alloc", "Automatic allocation through SLURM or PBS");
  command->require_subcommand(1);
  auto* dry_run = command->add_subcommand(
      "dry-run",
      "Submit a test allocation and remove it at once, to check that the batch system accepts "
      "the arguments (needs no server)");
  dry_run->require_subcommand(1);
  // Kept alive by the callbacks, which the command tree owns.
  auto options = std::make_shared<QueueOptions>();
  for (alloc::ManagerKind kind : {alloc::ManagerKind::kSlurm, alloc::ManagerKind::kPbs}) {
    std::string name(alloc::manager_name(kind));
    auto* leaf = dry_run->add_subcommand(
        name, fmt::format("Dry run against {}: hq alloc dry-run {} --time-limit DUR [OPTIONS] -- "
                          "[{} ARGS]",
                          kind == alloc::ManagerKind::kSlurm ? "SLURM (sbatch)" : "PBS (qsub)",
                          name, kind == alloc::ManagerKind::kSlurm ? "SBATCH" : "QSUB"));
    add_queue_options(*leaf, *options);
    leaf->callback([options, kind, &g, &code] { code = cmd_alloc_dry_run(g, kind, *options); });
  }
}

}  // namespace hq::cli
