#include "cli/alloc_commands.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "alloc/batch_system.h"
#include "cli/json_output.h"
#include "cli/print.h"
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

void print_json(const nlohmann::json& j) { std::cout << j.dump(2) << "\n"; }

int cmd_alloc_add(const GlobalOptions& g, alloc::ManagerKind kind, const QueueOptions& options,
                  bool no_dry_run) {
  const std::string server_dir = fs::absolute(g.resolved_server_dir()).string();
  alloc::AllocationSpec spec =
      allocation_spec(options, options.max_workers_per_alloc, own_binary(), server_dir);
  Client client = must(Client::connect(g));
  if (!no_dry_run) {
    alloc::ProcessRunner runner;
    alloc::BatchSystem batch(alloc::make_backend(kind), runner);
    if (Status st = batch.dry_run(spec); !st) {
      throw CommandError{fmt::format(
          "the allocation queue was not added: a test allocation failed (--no-dry-run skips "
          "the test): {}",
          st.message())};
    }
  }
  capnp::MallocMessageBuilder request;
  auto p = request.initRoot<wire::ClientRequest>().initAllocAdd();
  p.setManager(std::string(alloc::manager_name(kind)));
  p.setName(options.name);
  p.setTimeLimitMs(static_cast<uint64_t>(spec.time_limit.count()));
  if (spec.worker_time_limit) {
    p.setWorkerTimeLimitMs(static_cast<uint64_t>(spec.worker_time_limit->count()));
  }
  p.setBacklog(options.backlog);
  p.setMaxWorkersPerAlloc(options.max_workers_per_alloc);
  p.setMaxWorkerCount(options.max_worker_count.value_or(0));
  p.setMinUtilization(options.min_utilization);
  p.setHqBinary(spec.hq_binary);
  p.setServerDir(server_dir);
  auto set_list = [](auto list, const std::vector<std::string>& v) {
    for (uint32_t i = 0; i < v.size(); ++i) list.set(i, v[i]);
  };
  set_list(p.initWorkerArgs(static_cast<unsigned>(spec.worker_args.size())), spec.worker_args);
  set_list(p.initBatchArgs(static_cast<unsigned>(spec.batch_args.size())), spec.batch_args);
  p.setWorkerStartCmd(spec.worker_start_cmd);
  p.setWorkerStopCmd(spec.worker_stop_cmd);
  p.setWorkerWrapCmd(spec.worker_wrap_cmd);
  p.setWorkerCpus(options.cpus);
  set_list(p.initWorkerResources(static_cast<unsigned>(options.resources.size())),
           options.resources);
  p.setIdleTimeoutMs(static_cast<uint64_t>(
      options.idle_timeout.empty() ? 5 * 60 * 1000
                                   : must(parse_duration(options.idle_timeout)).count()));
  auto response = must(client.call(request));
  auto queue = response.root<wire::ClientResponse>().getAllocQueues()[0];
  switch (g.mode()) {
    case OutputMode::kJson:
      print_json({{"id", queue.getId()}});
      break;
    case OutputMode::kCli:
      std::cout << fmt::format("Allocation queue {} successfully created\n", queue.getId());
      break;
    case OutputMode::kQuiet:
      std::cout << queue.getId() << "\n";
      break;
  }
  return 0;
}

nlohmann::json strings_json(capnp::List<capnp::Text>::Reader list) {
  nlohmann::json out = nlohmann::json::array();
  for (auto t : list) out.push_back(t.cStr());
  return out;
}

nlohmann::json queue_json(wire::AllocQueueSummary::Reader q, bool with_allocations) {
  auto p = q.getParams();
  nlohmann::json out{
      {"id", q.getId()},
      {"name", p.getName().size() ? nlohmann::json(p.getName().cStr()) : nlohmann::json()},
      {"manager", p.getManager().cStr()},
      {"state", q.getState().cStr()},
      {"backlog", p.getBacklog()},
      {"max_workers_per_alloc", p.getMaxWorkersPerAlloc()},
      {"max_worker_count",
       p.getMaxWorkerCount() ? nlohmann::json(p.getMaxWorkerCount()) : nlohmann::json()},
      {"timelimit", duration_json(p.getTimeLimitMs())},
      {"worker_time_limit", duration_json(p.getWorkerTimeLimitMs())},
      {"worker_args", strings_json(p.getWorkerArgs())},
      {"additional_args", strings_json(p.getBatchArgs())},
      {"pause_reason",
       q.getPauseReason().size() ? nlohmann::json(q.getPauseReason().cStr()) : nlohmann::json()},
      {"last_error",
       q.getLastError().size() ? nlohmann::json(q.getLastError().cStr()) : nlohmann::json()},
      {"demand", q.getDemand()},
      {"unfit", strings_json(q.getUnfit())},
  };
  if (with_allocations) {
    nlohmann::json list = nlohmann::json::array();
    for (auto a : q.getAllocations()) {
      nlohmann::json ids = nlohmann::json::array();
      for (uint32_t w : a.getWorkerIds()) ids.push_back(w);
      list.push_back({{"id", a.getId().cStr()},
                      {"state", a.getState().cStr()},
                      {"worker_count", a.getWorkers()},
                      {"worker_ids", ids},
                      {"detail", a.getDetail().cStr()},
                      {"queued_at", time_json(a.getSubmitTime())},
                      {"started_at", time_json(a.getStartTime())},
                      {"ended_at", time_json(a.getEndTime())},
                      {"working_dir", a.getLogDir().cStr()}});
    }
    out["allocations"] = list;
  }
  return out;
}

std::string when(int64_t unix_ms) { return unix_ms ? format_iso8601(unix_ms) : ""; }

Result<net::Message> list_queues(Client& client) {
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setAllocList();
  return client.call(request);
}

int cmd_alloc_list(const GlobalOptions& g) {
  Client client = must(Client::connect(g));
  auto response = must(list_queues(client));
  auto queues = response.root<wire::ClientResponse>().getAllocQueues();
  if (g.mode() == OutputMode::kJson) {
    nlohmann::json out = nlohmann::json::array();
    for (auto q : queues) out.push_back(queue_json(q, false));
    print_json(out);
    return 0;
  }
  if (g.mode() == OutputMode::kQuiet) {
    for (auto q : queues) std::cout << q.getId() << "\n";
    return 0;
  }
  Table t({"ID", "NAME", "MANAGER", "STATE", "BACKLOG", "WORKERS PER ALLOC", "TIMELIMIT",
           "ALLOCATIONS"});
  for (auto q : queues) {
    uint32_t active = 0;
    for (auto a : q.getAllocations()) {
      active += a.getState() == "queued" || a.getState() == "running";
    }
    auto p = q.getParams();
    t.add({std::to_string(q.getId()), p.getName().cStr(), p.getManager().cStr(),
           q.getState().cStr(), std::to_string(p.getBacklog()),
           std::to_string(p.getMaxWorkersPerAlloc()),
           format_duration(Millis(static_cast<int64_t>(p.getTimeLimitMs()))),
           fmt::format("{} active, {} in all", active, q.getAllocations().size())});
  }
  std::cout << t.render();
  return 0;
}

// The queue with that id, from a list answer; a CommandError when there is none.
wire::AllocQueueSummary::Reader find_queue(capnp::List<wire::AllocQueueSummary>::Reader queues,
                                           uint32_t id) {
  for (auto q : queues) {
    if (q.getId() == id) return q;
  }
  throw CommandError{fmt::format("allocation queue {} not found", id)};
}

int cmd_alloc_info(const GlobalOptions& g, uint32_t id) {
  Client client = must(Client::connect(g));
  auto response = must(list_queues(client));
  auto q = find_queue(response.root<wire::ClientResponse>().getAllocQueues(), id);
  if (g.mode() == OutputMode::kJson) {
    print_json(queue_json(q, true));
    return 0;
  }
  if (g.mode() == OutputMode::kQuiet) {
    for (auto a : q.getAllocations()) std::cout << a.getId().cStr() << "\n";
    return 0;
  }
  std::vector<std::pair<std::string, std::string>> pairs{
      {"Queue", std::to_string(q.getId())},
      {"Manager", q.getParams().getManager().cStr()},
      {"State", q.getState().cStr()},
  };
  if (q.getPauseReason().size()) pairs.push_back({"Paused because", q.getPauseReason().cStr()});
  if (q.getLastError().size()) pairs.push_back({"Last error", q.getLastError().cStr()});
  pairs.push_back({"Demand (workers)", std::to_string(q.getDemand())});
  for (auto u : q.getUnfit()) pairs.push_back({"Never on its workers", u.cStr()});
  std::cout << render_pairs(pairs);
  Table t(
      {"ID", "STATE", "WORKERS", "WORKER IDS", "QUEUED", "STARTED", "ENDED", "DETAIL", "WORKDIR"});
  for (auto a : q.getAllocations()) {
    std::string ids;
    for (uint32_t w : a.getWorkerIds()) ids += (ids.empty() ? "" : ",") + std::to_string(w);
    t.add({a.getId().cStr(), a.getState().cStr(), std::to_string(a.getWorkers()), ids,
           when(a.getSubmitTime()), when(a.getStartTime()), when(a.getEndTime()),
           a.getDetail().cStr(), a.getLogDir().cStr()});
  }
  std::cout << t.render();
  return 0;
}

int cmd_alloc_log(const GlobalOptions& g, const std::string& allocation,
                  const std::string& channel) {
  Client client = must(Client::connect(g));
  auto response = must(list_queues(client));
  for (auto q : response.root<wire::ClientResponse>().getAllocQueues()) {
    for (auto a : q.getAllocations()) {
      if (a.getId().cStr() != allocation) continue;
      fs::path file = fs::path(a.getLogDir().cStr()) / channel;
      std::ifstream in(file, std::ios::binary);
      if (!in) {
        throw CommandError{fmt::format("cannot read {} of allocation {} ({}): not written yet?",
                                       channel, allocation, file.string())};
      }
      std::cout << in.rdbuf();
      return 0;
    }
  }
  throw CommandError{fmt::format("allocation {} not found in any allocation queue", allocation)};
}

int cmd_alloc_change(const GlobalOptions& g, const std::string& what, uint32_t id, bool force) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  auto root = request.initRoot<wire::ClientRequest>();
  if (what == "pause") {
    root.setAllocPause(id);
  } else if (what == "resume") {
    root.setAllocResume(id);
  } else {
    auto r = root.initAllocRemove();
    r.setQueue(id);
    r.setForce(force);
  }
  must(client.call(request));
  if (g.mode() == OutputMode::kJson) {
    print_json({{"id", id}});
  } else if (g.mode() == OutputMode::kCli) {
    const char* done = what == "pause" ? "paused" : what == "resume" ? "resumed" : "removed";
    std::cout << fmt::format("Allocation queue {} {}\n", id, done);
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
               "What workers do when the server goes away: reconnect (the workers' default), "
               "stop or finish-running")
      ->check(CLI::IsMember({"reconnect", "stop", "finish-running"}));
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

  auto* add = command->add_subcommand(
      "add", "Add an allocation queue: the server submits allocations while tasks wait");
  add->require_subcommand(1);
  auto add_options = std::make_shared<QueueOptions>();
  auto no_dry_run = std::make_shared<bool>(false);
  for (alloc::ManagerKind kind : {alloc::ManagerKind::kSlurm, alloc::ManagerKind::kPbs}) {
    std::string name(alloc::manager_name(kind));
    auto* leaf = add->add_subcommand(
        name, fmt::format("A queue of {} allocations: hq alloc add {} --time-limit DUR [OPTIONS] "
                          "-- [{} ARGS]",
                          kind == alloc::ManagerKind::kSlurm ? "SLURM" : "PBS", name,
                          kind == alloc::ManagerKind::kSlurm ? "SBATCH" : "QSUB"));
    add_queue_options(*leaf, *add_options);
    leaf->add_flag("--no-dry-run", *no_dry_run,
                   "Add the queue without submitting a test allocation first");
    leaf->callback([add_options, no_dry_run, kind, &g, &code] {
      code = cmd_alloc_add(g, kind, *add_options, *no_dry_run);
    });
  }

  command->add_subcommand("list", "List the allocation queues")->callback([&g, &code] {
    code = cmd_alloc_list(g);
  });
  auto queue_id = std::make_shared<uint32_t>(0);
  auto* info = command->add_subcommand(
      "info", "Show a queue's allocations (states, workers, errors) and why tasks wait");
  info->add_option("queue", *queue_id, "Queue id")->required();
  info->callback([queue_id, &g, &code] { code = cmd_alloc_info(g, *queue_id); });

  auto log_alloc = std::make_shared<std::string>();
  auto log_channel = std::make_shared<std::string>();
  auto* log = command->add_subcommand("log", "Print an allocation's stdout or stderr");
  log->add_option("allocation", *log_alloc, "Allocation id (the batch system's job id)")
      ->required();
  log->add_option("channel", *log_channel, "stdout or stderr")
      ->required()
      ->check(CLI::IsMember({"stdout", "stderr"}));
  log->callback(
      [log_alloc, log_channel, &g, &code] { code = cmd_alloc_log(g, *log_alloc, *log_channel); });

  auto force = std::make_shared<bool>(false);
  for (const char* what : {"pause", "resume", "remove"}) {
    std::string verb = what;
    auto* c = command->add_subcommand(
        verb, verb == "pause"    ? "Stop submitting allocations from a queue"
              : verb == "resume" ? "Submit allocations from a paused queue again"
                                 : "Remove a queue, canceling its queued and running allocations");
    c->add_option("queue", *queue_id, "Queue id")->required();
    if (verb == "remove") {
      c->add_flag("--force", *force, "Remove it even while its workers are connected");
    }
    c->callback([queue_id, force, verb, &g, &code] {
      code = cmd_alloc_change(g, verb, *queue_id, *force);
    });
  }
}

}  // namespace hq::cli
