// The `hq` binary: the server, the worker and every client command.

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <string_view>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "alloc/batch_system.h"
#include "cli/alloc_commands.h"
#include "cli/commands.h"
#include "cli/completion.h"
#include "cli/directives.h"
#include "cli/job_commands.h"
#include "cli/journal_commands.h"
#include "cli/json_output.h"
#include "cli/output_commands.h"
#include "common/log.h"
#include "common/resources.h"
#include "server/server.h"
#include "worker/daemon.h"
#include "worker/hwdetect.h"

namespace hq::cli {
namespace {

// Parses a duration option's text or fails with a message naming the flag.
Millis duration_option(const std::string& flag, const std::string& text) {
  auto d = parse_duration(text);
  if (!d) throw CommandError{fmt::format("invalid {}: {}", flag, d.message())};
  return *d;
}

// `--detect-resources` and `--no-hyper-threading` of `hq worker start` and `hq worker hwdetect`.
worker::DetectOptions detect_option(const std::string& list, bool no_hyper_threading) {
  worker::DetectOptions o = must(worker::parse_detect_list(list));
  o.no_hyper_threading = no_hyper_threading;
  return o;
}

// `hq worker start --manager`: a worker inside a SLURM or PBS allocation takes its id as the
// default group and its remaining time as the longest time limit.
void apply_allocation(worker::WorkerOptions& o, const std::string& manager) {
  alloc::ProcessRunner runner(Millis{30'000});
  auto getenv = [](const char* name) -> std::optional<std::string> {
    const char* v = std::getenv(name);
    if (v == nullptr) return std::nullopt;
    return std::string(v);
  };
  std::optional<alloc::AllocationInfo> info = must(alloc::find_allocation(manager, getenv, runner));
  if (!info) return;
  o.allocation = info->id;
  if (o.group.empty()) o.group = info->id;
  if (info->remaining && (!o.time_limit || *info->remaining < *o.time_limit)) {
    if (info->remaining->count() <= 0) {
      throw CommandError{fmt::format("allocation {} has no time left for a worker", info->id)};
    }
    o.time_limit = info->remaining;
  }
}

// `hq worker hwdetect`: what a worker started here would detect.
int cmd_worker_hwdetect(const GlobalOptions& g, const worker::DetectOptions& options) {
  ResourceDescriptor d = must(worker::detect_resources(options), "hardware detection failed");
  if (g.mode() == OutputMode::kJson) {
    nlohmann::json out = resources_json(d);
    std::cout << out.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return 0;
  }
  std::cout << describe(d) << "\n";
  if (g.mode() == OutputMode::kQuiet) return 0;
  for (const ResourceDefinition& r : d.resources) {
    if (r.kind == ResourceKind::kSum) {
      std::cout << fmt::format("{}: {}\n", r.name, r.sum);
      continue;
    }
    std::vector<std::string> groups;
    for (const auto& group : r.groups) groups.push_back(fmt::format("[{}]", fmt::join(group, ",")));
    std::cout << fmt::format("{}: [{}]\n", r.name, fmt::join(groups, ","));
  }
  return 0;
}

// Options of `hq submit` and the global ones that take a value.
bool takes_value(std::string_view option) {
  static const std::string_view kValued[] = {
      "--name",        "--array",     "--cpus",         "--priority",    "--cwd",
      "--stdout",      "--stderr",    "--env",          "--stream",      "--time-limit",
      "--crash-limit", "--max-fails", "--server-dir",   "--output-mode", "--log-level",
      "--resource",    "--pin",       "--time-request", "--nodes",       "--colors",
      "--each-line",   "--from-json", "--directives",   "--job",         "--deps"};
  if (option.find('=') != std::string_view::npos) return false;
  return std::find(std::begin(kValued), std::end(kValued), option) != std::end(kValued);
}

// `hq [job] submit [OPTIONS] [--] PROGRAM ARGS...`: the program and its arguments are cut off
// before CLI11 parses, so that the program's own options are never taken for hq's. Returns the
// arguments left for CLI11.
// `submit_at` (when given) is set to the index of the `submit` word (0: not a submit).
std::vector<std::string> split_submit_program(const std::vector<std::string>& args,
                                              std::vector<std::string>& program,
                                              size_t* submit_at = nullptr) {
  std::vector<std::string> words;  // the subcommand path so far
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    bool in_submit = !words.empty() && words.back() == "submit";
    if (in_submit && a == "--") {
      program.assign(args.begin() + i + 1, args.end());
      return {args.begin(), args.begin() + i};
    }
    if (!a.empty() && a[0] == '-') {
      if (takes_value(a)) ++i;
      continue;
    }
    if (in_submit) {
      program.assign(args.begin() + i, args.end());
      return {args.begin(), args.begin() + i};
    }
    words.push_back(a);
    bool submit_path = (words.size() == 1 && (a == "submit" || a == "job")) ||
                       (words.size() == 2 && words[0] == "job" && a == "submit");
    if (submit_path && a == "submit" && submit_at) *submit_at = i;
    if (!submit_path) break;
  }
  return args;
}

// HyperQueue's spelling of `hq output`: `hq output-log DIR SUBCOMMAND ARGS...`, where `cat`
// takes its channel as a word (`cat JOB stdout`). Rewritten to `hq output SUBCOMMAND DIR ARGS...`
// (and `--channel CHANNEL`) before parsing; other arguments are returned as they are.
std::vector<std::string> rewrite_output_log(std::vector<std::string> args) {
  size_t at = 1;
  while (at < args.size() && args[at].starts_with("-")) at += takes_value(args[at]) ? 2 : 1;
  if (at >= args.size() || args[at] != "output-log") return args;
  std::vector<std::string> out(args.begin(), args.begin() + static_cast<std::ptrdiff_t>(at));
  std::vector<std::string> options;  // before the directory, e.g. --server-uid X
  size_t i = at + 1;
  while (i < args.size() && args[i].starts_with("-")) {
    options.push_back(args[i]);
    if (args[i] == "--server-uid" && i + 1 < args.size()) options.push_back(args[++i]);
    ++i;
  }
  out.push_back("output");
  if (i + 1 >= args.size()) {  // no subcommand: let `hq output` say what is missing
    out.insert(out.end(), args.begin() + static_cast<std::ptrdiff_t>(at + 1), args.end());
    return out;
  }
  const std::string dir = args[i];
  const std::string sub = args[i + 1];
  out.push_back(sub);
  out.push_back(dir);
  out.insert(out.end(), options.begin(), options.end());
  std::vector<std::string> rest(args.begin() + static_cast<std::ptrdiff_t>(i + 2), args.end());
  if (sub == "cat") {
    // The first positional after the job is the channel.
    int positional = 0;
    for (size_t k = 0; k < rest.size(); ++k) {
      if (rest[k].starts_with("-")) {
        if (rest[k] == "--task" || rest[k] == "--channel" || rest[k] == "--server-uid") ++k;
        continue;
      }
      if (++positional == 2 && (rest[k] == "stdout" || rest[k] == "stderr")) {
        rest[k] = "--channel=" + rest[k];
        break;
      }
    }
  }
  out.insert(out.end(), rest.begin(), rest.end());
  return out;
}

// The command group the arguments name (`hq [GLOBAL OPTIONS] GROUP ...`) when it is one of those
// whose parts of the command tree are built alone, or "--version"; empty otherwise.
std::string named_command(const std::vector<std::string>& args) {
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") return {};
    // Nothing but the version: no group is needed.
    if (arg == "--version") return arg;
    if (arg.starts_with("-")) {
      const bool takes_value = arg == "--server-dir" || arg == "--output-mode" ||
                               arg == "--log-level" || arg == "--colors";
      if (takes_value) ++i;
      continue;
    }
    for (const char* group :
         {"server", "worker", "submit", "job", "task", "journal", "output", "alloc"}) {
      if (arg == group) return arg;
    }
    return {};
  }
  return {};
}

int run(int argc, char** argv) {
  CLI::App app{"hq: a crash-resilient task runtime for HPC clusters"};
  app.require_subcommand(1);
  app.fallthrough();
  GlobalOptions g;
  app.add_option("--server-dir", g.server_dir,
                 "Server directory (default: $HQ_SERVER_DIR, else ~/.hq-server)")
      ->envname("HQ_SERVER_DIR");
  app.add_option("--output-mode", g.output_mode, "How to print results: cli, json or quiet")
      ->envname("HQ_OUTPUT_MODE")
      ->check(CLI::IsMember({"cli", "json", "quiet"}));
  app.add_option("--log-level", g.log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  // HyperQueue's global flags (read before parsing, by main(), to set up logging).
  std::string colors = "auto";
  bool debug = false;
  app.add_option("--colors", colors, "Colour the output: always, never or auto (on a terminal)")
      ->check(CLI::IsMember({"always", "never", "auto"}));
  app.add_flag("--debug", debug, "Log at debug level (as --log-level debug)");
  app.set_version_flag("--version", std::string("hq ") + HQ_VERSION);
  int code = 0;

  std::vector<std::string> args(argv, argv + argc);
  args = rewrite_output_log(std::move(args));
  // Only the part of the tree that the command line names is built: building all of it was
  // most of a short command's run time (docs/benchmarks.md). All of it without a known name:
  // for the top-level help, the completion script, and the error of a mistyped command.
  const std::string named = named_command(args);
  auto want = [&named](std::string_view group) { return named.empty() || named == group; };

  // --- server ---
  std::string host, heartbeat = "8s", server_idle_timeout, access_file, reattach_grace = "60s";
  uint16_t client_port = 0, worker_port = 0;
  std::string journal;
  bool no_journal = false;
  GenerateAccessOptions generate;
  std::string generate_file, generate_client_file, generate_worker_file;
  std::string server_wait_timeout;
  if (want("server")) {
    auto* server = app.add_subcommand("server", "Start, stop and inspect the server");
    server->require_subcommand(1);
    auto* server_start = server->add_subcommand("start", "Run the server in the foreground");
    auto* host_option =
        server_start->add_option("--host", host, "Hostname that clients and workers connect to");
    auto* client_port_option = server_start->add_option("--client-port", client_port,
                                                        "Port for clients (default: any free)");
    auto* worker_port_option = server_start->add_option("--worker-port", worker_port,
                                                        "Port for workers (default: any free)");
    server_start
        ->add_option("--access-file", access_file,
                     "Use the keys, server UID, hosts and ports of this file (made by `hq server "
                     "generate-access`)")
        ->excludes(host_option)
        ->excludes(client_port_option)
        ->excludes(worker_port_option);
    server_start->add_option("--heartbeat", heartbeat,
                             "How often workers without their own --heartbeat report; 3 missed "
                             "heartbeats lose a worker");
    server_start->add_option("--idle-timeout", server_idle_timeout,
                             "Stop workers without their own --idle-timeout after this long "
                             "without tasks (e.g. 5m)");
    server_start->add_option("--reattach-grace", reattach_grace,
                             "After a restart, how long tasks that were running wait for their "
                             "workers to reattach before they run again (default 60s)");
    auto* journal_option = server_start->add_option(
        "--journal", journal, "Journal directory (default: the server directory's 'journal')");
    server_start
        ->add_flag("--no-journal", no_journal,
                   "Keep no journal: nothing survives the server (throwaway runs)")
        ->excludes(journal_option);
    server_start->callback([&] {
      server::ServerOptions o;
      o.server_dir = g.resolved_server_dir();
      o.host = host;
      o.client_port = client_port;
      o.worker_port = worker_port;
      if (!access_file.empty()) o.access_file = fs::absolute(access_file);
      o.heartbeat = duration_option("--heartbeat", heartbeat);
      if (o.heartbeat.count() < 100) throw CommandError{"--heartbeat must be at least 100ms"};
      if (!server_idle_timeout.empty()) {
        o.idle_timeout = duration_option("--idle-timeout", server_idle_timeout);
        if (o.idle_timeout->count() <= 0) {
          throw CommandError{"invalid --idle-timeout: it must be positive"};
        }
      }
      o.reattach_grace = duration_option("--reattach-grace", reattach_grace);
      if (o.reattach_grace.count() < 0) throw CommandError{"--reattach-grace must not be negative"};
      if (!journal.empty()) o.journal = fs::absolute(journal);
      o.no_journal = no_journal;
      // As HyperQueue does: the server's address and identity, once it listens.
      o.on_started = [&g](capnp::MessageReader& info) {
        print_server_info(g, info.getRoot<wire::ServerInfo>());
      };
      code = server::run_server(o);
    });
    server->add_subcommand("stop", "Stop the server")->callback([&] { code = cmd_server_stop(g); });
    auto* generate_access =
        server->add_subcommand("generate-access",
                               "Write an access file (fresh keys, a new server UID) for a later "
                               "`hq server start --access-file`");
    generate_access->add_option("file", generate_file, "The access file to write")->required();
    generate_access->add_option("--host", generate.host,
                                "Host of both the client and the worker side (default: this "
                                "machine's hostname)");
    generate_access->add_option("--client-host", generate.client_host,
                                "Host clients connect to (default: --host)");
    generate_access->add_option("--client-port", generate.client_port, "Port for clients")
        ->required();
    generate_access->add_option("--worker-host", generate.worker_host,
                                "Host workers connect to (default: --host)");
    generate_access->add_option("--worker-port", generate.worker_port, "Port for workers")
        ->required();
    generate_access->add_option("--client-file", generate_client_file,
                                "Also write the client half alone to this file");
    generate_access->add_option("--worker-file", generate_worker_file,
                                "Also write the worker half alone to this file");
    generate_access->callback([&] {
      generate.file = generate_file;
      generate.client_file = generate_client_file;
      generate.worker_file = generate_worker_file;
      code = cmd_server_generate_access(g, generate);
    });
    server->add_subcommand("info", "Show the server's address, ports and identity")->callback([&] {
      code = cmd_server_info(g);
    });
    auto* server_wait = server->add_subcommand("wait", "Wait until the server answers");
    server_wait->add_option("--timeout", server_wait_timeout,
                            "Fail after this long (e.g. 30s; default: wait forever)");
    server_wait->callback([&] {
      std::optional<Millis> timeout;
      if (!server_wait_timeout.empty()) {
        timeout = duration_option("--timeout", server_wait_timeout);
      }
      code = cmd_server_wait(g, timeout);
    });
  }

  // --- worker ---
  std::string worker_cpus;
  std::vector<std::string> worker_resources;
  std::string hostname, idle_timeout, work_dir, cancel_grace = "1s", worker_heartbeat;
  std::string worker_time_limit, worker_group, on_server_lost = "reconnect",
                                               reconnect_timeout = "15m", manager = "detect";
  std::string detect_list = "all";
  bool no_hyper_threading = false, zero_work = false;
  bool worker_all = false;
  std::string worker_filter;
  std::string worker_selector;
  const char* kWorkerSelector = "Worker id, ids and ranges (1-3,7), last or all";
  uint32_t wait_count = 0;
  if (want("worker")) {
    auto* worker = app.add_subcommand("worker", "Start, stop and inspect workers");
    worker->require_subcommand(1);
    auto* worker_start = worker->add_subcommand("start", "Run a worker in the foreground");
    worker_start->add_option("--cpus", worker_cpus,
                             "CPUs: N, NxM (groups), [0,1,..] or [[0,1],[2,3]] (default: those "
                             "this process may use)");
    worker_start
        ->add_option("--resource", worker_resources,
                     "A resource NAME=VALUE, VALUE one of [a,b,c], [[a,b],[c,d]], "
                     "range(A-B) or sum(N) (repeatable)")
        ->allow_extra_args(false);
    worker_start->add_option("--hostname", hostname, "Name shown for this worker");
    worker_start->add_option("--idle-timeout", idle_timeout,
                             "Stop after this long without tasks (e.g. 5m; default: the "
                             "server's --idle-timeout)");
    worker_start->add_option("--heartbeat", worker_heartbeat,
                             "How often to report to the server, which declares the worker lost "
                             "after 3 missed heartbeats (default: the server's --heartbeat, 8s)");
    worker_start->add_option("--work-dir", work_dir, "Directory for the worker's own files");
    worker_start->add_option("--time-limit", worker_time_limit,
                             "Stop cleanly after this long (e.g. 1h); no task starts that its "
                             "--time-request says would not finish");
    worker_start->add_option("--group", worker_group, "Group of this worker (default: default)");
    worker_start
        ->add_option("--on-server-lost", on_server_lost,
                     "When the connection to the server breaks: reconnect (keep tasks running and "
                     "reattach; the default), stop (kill tasks) or finish-running")
        ->check(CLI::IsMember({"reconnect", "stop", "finish-running"}));
    worker_start->add_option("--reconnect-timeout", reconnect_timeout,
                             "With --on-server-lost reconnect: stop after this long without a "
                             "server (default 15m)");
    worker_start
        ->add_option("--manager", manager,
                     "Batch system this worker runs in: slurm, pbs, none, or detect (SLURM_JOB_ID, "
                     "else PBS_JOBID); inside one, the allocation's id is the default --group and "
                     "its remaining time caps --time-limit")
        ->check(CLI::IsMember({"detect", "slurm", "pbs", "none"}));
    worker_start->add_flag("--zero-work", zero_work,
                           "Benchmark mode: complete every assigned task at once, without running "
                           "its program (same messages, journal and scheduling as real tasks)");
    auto add_detect_options = [&](CLI::App* command) {
      command->add_option("--detect-resources", detect_list,
                          "What to detect: all, none, or a comma list of cpus, mem, gpus/nvidia, "
                          "gpus/amd (default all)");
      command->add_flag("--no-hyper-threading", no_hyper_threading,
                        "Use one CPU (the first) of each core");
    };
    add_detect_options(worker_start);
    worker_start->callback([&] {
      worker::WorkerOptions o;
      o.server_dir = g.resolved_server_dir();
      o.cpus = worker_cpus;
      o.resources = worker_resources;
      o.hostname = hostname;
      if (!idle_timeout.empty()) o.idle_timeout = duration_option("--idle-timeout", idle_timeout);
      if (!worker_heartbeat.empty()) {
        o.heartbeat = duration_option("--heartbeat", worker_heartbeat);
        if (o.heartbeat->count() < 100) throw CommandError{"--heartbeat must be at least 100ms"};
        if (o.heartbeat->count() > 3'600'000) throw CommandError{"--heartbeat must be at most 1h"};
      }
      o.work_dir = work_dir;
      o.cancel_grace = duration_option("--cancel-grace", cancel_grace);
      o.detect = detect_option(detect_list, no_hyper_threading);
      if (!worker_time_limit.empty()) {
        o.time_limit = duration_option("--time-limit", worker_time_limit);
        if (o.time_limit->count() <= 0)
          throw CommandError{"invalid --time-limit: it must be positive"};
      }
      o.group = worker_group;
      apply_allocation(o, manager);
      o.on_server_lost = on_server_lost == "finish-running" ? worker::OnServerLost::kFinishRunning
                         : on_server_lost == "stop"         ? worker::OnServerLost::kStop
                                                            : worker::OnServerLost::kReconnect;
      o.reconnect_timeout = duration_option("--reconnect-timeout", reconnect_timeout);
      if (o.reconnect_timeout.count() <= 0) {
        throw CommandError{"invalid --reconnect-timeout: it must be positive"};
      }
      o.zero_work = zero_work;
      code = worker::run_worker(o);
    });
    auto* worker_hwdetect =
        worker->add_subcommand("hwdetect", "Show the resources a worker started here would detect");
    add_detect_options(worker_hwdetect);
    worker_hwdetect->callback(
        [&] { code = cmd_worker_hwdetect(g, detect_option(detect_list, no_hyper_threading)); });
    auto* worker_list = worker->add_subcommand("list", "List connected workers");
    worker_list->add_flag("--all", worker_all, "Include disconnected workers");
    worker_list
        ->add_option("--filter", worker_filter,
                     "Only running (connected) or offline (disconnected) workers")
        ->check(CLI::IsMember({"running", "offline"}));
    worker_list->callback([&] { code = cmd_worker_list(g, worker_all, worker_filter); });
    auto* worker_info = worker->add_subcommand("info", "Show workers in detail");
    worker_info->add_option("selector", worker_selector, kWorkerSelector)->required();
    worker_info->callback([&] { code = cmd_worker_info(g, worker_selector); });
    auto* worker_address = worker->add_subcommand("address", "Print the hostname of workers");
    worker_address->add_option("selector", worker_selector, kWorkerSelector)->required();
    worker_address->callback([&] { code = cmd_worker_address(g, worker_selector); });
    auto* worker_wait =
        worker->add_subcommand("wait", "Wait until at least N workers are connected");
    worker_wait->add_option("count", wait_count, "How many workers")->required();
    worker_wait->callback([&] { code = cmd_worker_wait(g, wait_count); });
    auto* worker_stop = worker->add_subcommand("stop", "Stop workers; their tasks run elsewhere");
    worker_stop->add_option("selector", worker_selector, kWorkerSelector)->required();
    worker_stop->callback([&] { code = cmd_worker_stop(g, worker_selector); });
  }

  // --- submit / job submit ---
  SubmitOptions submit;
  auto add_submit = [&](CLI::App* parent, const std::string& name) {
    auto* s = parent->add_subcommand(name, "Submit a job: hq submit [OPTIONS] -- PROGRAM ARGS...");
    // #HQ directives come before the command line's options (apply_directives): the last wins.
    s->option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    s->add_option("--name", submit.name, "Job name (default: the program's name)");
    s->add_option("--array", submit.array, "Task ids, e.g. 1-10,20,30-40:2 (default: one task 0)");
    s->add_option("--cpus", submit.cpus,
                  "CPUs per task: N [compact|compact!|tight|tight!|scatter], or all (default 1)");
    s->add_option("--resource", submit.resources,
                  "Other resources per task, NAME=\"AMOUNT [POLICY]\" (repeatable; 0.5 shares "
                  "a unit)");
    s->add_option("--pin", submit.pin, "Bind tasks to their CPUs: taskset or omp");
    s->add_option("--nodes", submit.nodes,
                  "Whole workers per task, of one group (the task runs on the first; "
                  "HQ_NODE_FILE lists them)")
        ->check(CLI::PositiveNumber);
    s->add_option("--time-request", submit.time_request,
                  "Run only on a worker that lives this long after the start (e.g. 1h)");
    s->add_option("--priority", submit.priority, "Higher runs first");
    s->add_option("--cwd", submit.cwd, "Working directory of tasks (placeholders allowed)");
    s->add_option("--stdout", submit.stdout_path,
                  "Stdout path or 'none'; PATH:rm-if-finished removes it when the task finishes "
                  "(default %{CWD}/job-%{JOB_ID}/%{TASK_ID}.stdout)");
    s->add_option("--stderr", submit.stderr_path,
                  "Stderr path or 'none'; PATH:rm-if-finished as for --stdout "
                  "(default %{CWD}/job-%{JOB_ID}/%{TASK_ID}.stderr)");
    s->add_option(
        "--stream", submit.stream,
        "Send the stdout and stderr of every task into this stream directory (read it "
        "with `hq output`); an explicit --stdout or --stderr keeps that channel in files");
    s->add_option("--env", submit.env, "KEY=VALUE for the tasks; repeatable")->take_last();
    s->add_option(
        "--time-limit", submit.time_limit,
        "Kill a task that runs longer (e.g. 30s, 2h); it fails with 'Time limit reached'");
    s->add_option("--crash-limit", submit.crash_limit,
                  "Lost workers a task may outlive: N, never-restart or unlimited (default 5)");
    s->add_option("--max-fails", submit.max_fails,
                  "Abort the job's remaining tasks once more than N tasks failed");
    s->add_option("--each-line", submit.each_line,
                  "A task per line of FILE (ids 0..n-1), the line in HQ_ENTRY");
    s->add_option("--from-json", submit.from_json,
                  "A task per element of FILE's top-level JSON array, the element's JSON in "
                  "HQ_ENTRY");
    s->add_flag("--stdin", submit.stdin_flag,
                "Read this command's standard input and give it to every task on its stdin");
    s->add_flag("--task-dir", submit.task_dir,
                "A fresh directory per task in HQ_TASK_DIR, removed when it ends; an error "
                "message written to $HQ_ERROR_FILENAME becomes the failed task's error");
    s->add_option("--directives", submit.directives,
                  "Read #HQ option lines at the top of the script: auto (programs ending in "
                  ".sh), file, stdin or off (default auto)");
    s->add_flag("--wait", submit.wait, "Wait until the job ends (exit code as `hq job wait`)");
    s->add_option("--job", submit.job, "Add the tasks to this open job (`hq job open`)");
    s->add_option("--deps", submit.deps,
                  "With --job: every task waits for these tasks of the job, e.g. 3,7-9");
    s->add_flag("--progress", submit.progress,
                "Show the job's progress until it ends (implies --wait)");
    s->footer("The program and its arguments follow the options, best after `--`.");
    s->callback([&] { code = cmd_submit(g, submit); });
  };
  if (want("submit")) add_submit(&app, "submit");

  // --- job ---
  std::string job_file_path;
  bool job_file_wait = false;
  std::optional<uint32_t> job_file_into;
  std::string open_name;
  std::optional<int64_t> open_max_fails;
  std::string close_selector;
  bool job_all = false;
  std::string job_filter, job_selector;
  bool without_close = false;
  bool wait_progress = false;
  std::string task_job, task_ids, task_filter;
  uint32_t explain_job = 0, explain_task = 0;
  if (want("job") || want("task")) {
    auto* job = app.add_subcommand("job", "Submit, list, inspect, cancel and wait for jobs");
    job->require_subcommand(1);
    add_submit(job, "submit");
    auto* submit_file = job->add_subcommand(
        "submit-file", "Submit a job from a HyperQueue job definition file (TOML)");
    submit_file->add_option("file", job_file_path, "The job file")->required();
    submit_file->add_flag("--wait", job_file_wait, "Wait until the job ends");
    submit_file->add_option("--job", job_file_into, "Add the tasks to this open job");
    submit_file->callback(
        [&] { code = cmd_job_submit_file(g, job_file_path, job_file_wait, job_file_into); });
    auto* job_open = job->add_subcommand("open", "Open a job that takes tasks until it is closed");
    job_open->add_option("--name", open_name, "Job name");
    job_open->add_option("--max-fails", open_max_fails, "Abort the job after this many failures");
    job_open->callback([&] { code = cmd_job_open(g, open_name, open_max_fails); });
    auto* job_close = job->add_subcommand("close", "Close open jobs: they take no more tasks");
    job_close->add_option("selector", close_selector, "Job id, range (1-4), last or all")
        ->required();
    job_close->callback([&] { code = cmd_job_close(g, close_selector); });
    auto* job_list = job->add_subcommand("list", "List jobs (by default those not yet complete)");
    job_list->add_flag("--all", job_all, "Show all jobs");
    job_list->add_option("--filter", job_filter,
                         "Only jobs in these states: waiting,running,finished,failed,canceled");
    job_list->callback([&] { code = cmd_job_list(g, job_all, job_filter); });
    auto* job_info = job->add_subcommand("info", "Show jobs in detail");
    job_info->add_option("selector", job_selector, "Job id, range (1-4), last or all")->required();
    job_info->callback([&] { code = cmd_job_info(g, job_selector); });
    auto* job_cancel = job->add_subcommand("cancel", "Cancel jobs; running tasks are killed");
    job_cancel->add_option("selector", job_selector, "Job id, range (1-4), last or all")
        ->required();
    job_cancel->callback([&] { code = cmd_job_cancel(g, job_selector); });
    auto* job_wait = job->add_subcommand(
        "wait",
        "Wait until jobs end. Exit code 0 when every waited job finished, 1 when any failed or "
        "was canceled");
    job_wait->add_option("selector", job_selector, "Job id, range (1-4), last or all")->required();
    job_wait->add_flag("--without-close", without_close,
                       "An open job counts as done once its current tasks are");
    job_wait->add_flag("--progress", wait_progress, "Show the jobs' progress while waiting");
    job_wait->callback([&] { code = cmd_job_wait(g, job_selector, without_close, wait_progress); });

    // --- task ---
    auto* task = app.add_subcommand("task", "Inspect tasks");
    task->require_subcommand(1);
    auto* task_list = task->add_subcommand("list", "List the tasks of a job");
    task_list->add_option("job", task_job, "Job id or last")->required();
    task_list->add_option("--tasks", task_ids, "Only these task ids, e.g. 1-5,9");
    task_list->add_option("--filter", task_filter,
                          "Only tasks in these states: waiting,running,finished,failed,canceled");
    task_list->callback([&] { code = cmd_task_list(g, task_job, task_ids, task_filter); });
    auto* task_info = task->add_subcommand("info", "Show tasks of a job in detail");
    task_info->add_option("job", task_job, "Job id or last")->required();
    task_info->add_option("tasks", task_ids, "Task ids, e.g. 1-5,9")->required();
    task_info->callback([&] { code = cmd_task_info(g, task_job, task_ids); });
    auto* task_explain = task->add_subcommand(
        "explain", "Say, per worker, whether a task's request fits and why not");
    task_explain->add_option("job", explain_job, "Job id")->required();
    task_explain->add_option("task", explain_task, "Task id")->required();
    task_explain->callback([&] { code = cmd_task_explain(g, explain_job, explain_task); });

    add_job_management_commands(*job, *task, g, code);
  }
  if (want("journal")) add_journal_commands(app, g, code);
  if (want("output")) add_output_commands(app, g, code);
  if (want("alloc")) add_alloc_commands(app, g, code);

  // Last, so that the script it prints covers every command above.
  std::string shell;
  auto* completion = app.add_subcommand(
      "generate-completion", "Print a shell completion script for hq: bash, zsh or fish");
  completion->add_option("shell", shell, "bash, zsh or fish")
      ->required()
      ->check(CLI::IsMember({"bash", "zsh", "fish"}));
  completion->callback([&] {
    std::cout << must(completion_script(app, shell));
    code = 0;
  });

  for (CLI::App* sub : app.get_subcommands({})) {
    sub->fallthrough();
    for (CLI::App* leaf : sub->get_subcommands({})) leaf->fallthrough();
  }

  size_t submit_at = 0;
  args = split_submit_program(args, submit.program, &submit_at);
  if (submit_at > 0) {
    if (auto st = apply_directives(args, submit_at, submit.program, submit.stdin_data); !st) {
      throw CommandError{st.message()};
    }
  }
  std::reverse(args.begin(), args.end());
  args.pop_back();  // CLI11 takes the arguments without the program name, in reverse
  try {
    app.parse(args);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  return code;
}

}  // namespace
}  // namespace hq::cli

int main(int argc, char** argv) {
  // `hq --version` alone answers before logging and the command tree are set up: it is the
  // measure of the process's own start (docs/benchmarks.md), and CLI11 reports the version by an
  // exception. With other options too, CLI11 checks them first, as before.
  if (argc == 2 && std::string_view(argv[1]) == "--version") {
    std::cout << "hq " HQ_VERSION "\n";
    return 0;
  }
  // Logging is set up before parsing so that the daemons log from their first line.
  std::string level = "info";
  hq::Colors colors = hq::Colors::kAuto;
  // In JSON mode a failed command prints {"error": ...} too, for scripts (as HyperQueue does).
  const char* mode_env = std::getenv("HQ_OUTPUT_MODE");
  bool json_errors = mode_env && std::string_view(mode_env) == "json";
  for (int i = 1; i < argc; ++i) {
    std::string_view arg = argv[i];
    if (arg == "--") break;  // the task's own arguments follow
    std::string_view value;
    if ((arg == "--log-level" || arg == "--colors" || arg == "--output-mode") && i + 1 < argc) {
      value = argv[i + 1];
    }
    if (arg.starts_with("--log-level=") || arg.starts_with("--colors=") ||
        arg.starts_with("--output-mode=")) {
      value = arg.substr(arg.find('=') + 1);
      arg = arg.substr(0, arg.find('='));
    }
    if (arg == "--log-level") level = value;
    if (arg == "--debug") level = "debug";
    if (arg == "--colors" && value == "always") colors = hq::Colors::kAlways;
    if (arg == "--colors" && value == "never") colors = hq::Colors::kNever;
    if (arg == "--output-mode") json_errors = value == "json";
  }
  hq::init_logging(level, colors);
  try {
    return hq::cli::run(argc, argv);
  } catch (const hq::cli::CommandError& e) {
    std::cerr << "error: " << e.message << "\n";
    if (json_errors) {
      std::cout << nlohmann::json{{"error", e.message}}.dump(
                       2, ' ', false, nlohmann::json::error_handler_t::replace)
                << "\n";
    }
    return e.exit_code;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
