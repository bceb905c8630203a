#pragma once
// The client commands. Each connects, asks, prints and returns the process exit code; failures
// throw CommandError.

#include <optional>
#include <string>
#include <vector>

#include "cli/client.h"
#include "common/job_spec.h"
#include "common/time.h"

namespace hq::cli {

struct SubmitOptions {
  std::string name;
  std::optional<std::string> array;    // unset: one task 0
  std::string cpus = "1";              // "N [POLICY]" or "all"
  std::vector<std::string> resources;  // NAME="AMOUNT [POLICY]"
  std::string pin;                     // taskset, omp; empty: none
  int32_t priority = 0;
  std::optional<std::string> cwd;
  std::optional<std::string> stdout_path;
  std::optional<std::string> stderr_path;
  std::vector<std::string> env;
  std::optional<std::string> stream;  // --stream DIR
  std::string time_limit;             // a duration; empty: none
  std::string time_request;           // a duration; empty: none
  std::string crash_limit;            // N, never-restart, unlimited; empty: the default
  std::optional<int64_t> max_fails;
  uint32_t nodes = 0;                    // --nodes
  std::optional<std::string> each_line;  // --each-line FILE: a task per line, in HQ_ENTRY
  std::optional<std::string> from_json;  // --from-json FILE: a task per array element
  bool stdin_flag = false;               // --stdin
  // What --stdin read (main reads it before parsing, for `--directives stdin`).
  std::optional<std::string> stdin_data;
  bool task_dir = false;            // --task-dir
  std::string directives = "auto";  // --directives (applied by main before parsing)
  bool wait = false;
  std::optional<uint32_t> job;  // `--job`: add the tasks to this open job
  std::string deps;             // `--deps`: every task depends on these tasks of the open job
  bool progress = false;        // --progress: draw the job's progress until it ends (implies wait)
  std::vector<std::string> program;
};

int cmd_submit(const GlobalOptions& g, const SubmitOptions& o);
// `hq job submit-file FILE`: a HyperQueue job definition file, checked whole before anything is
// submitted.
// `into`: the open job the file's tasks are added to (`--job`).
int cmd_job_submit_file(const GlobalOptions& g, const std::string& file, bool wait,
                        std::optional<uint32_t> into = std::nullopt);
int cmd_job_list(const GlobalOptions& g, bool all, const std::string& filter);
int cmd_job_info(const GlobalOptions& g, const std::string& selector);
int cmd_job_cancel(const GlobalOptions& g, const std::string& selector);
// `without_close`: an open job counts as done once its current tasks are. With `progress`, draws
// the jobs' progress while they run (`hq job wait --progress`).
int cmd_job_wait(const GlobalOptions& g, const std::string& selector, bool without_close = false,
                 bool progress = false);
// cli/open_commands.cc
int cmd_job_open(const GlobalOptions& g, const std::string& name, std::optional<int64_t> max_fails);
int cmd_job_close(const GlobalOptions& g, const std::string& selector);
int cmd_task_list(const GlobalOptions& g, const std::string& job, const std::string& tasks,
                  const std::string& filter);
int cmd_task_info(const GlobalOptions& g, const std::string& job, const std::string& tasks);
int cmd_task_explain(const GlobalOptions& g, uint32_t job, uint32_t task);
// `filter`: empty (connected workers; all of them with `all`), "running" or "offline".
int cmd_worker_list(const GlobalOptions& g, bool all, const std::string& filter = {});
// Worker selectors: an id, a range or list ("1-3,7"), `last` or `all`.
int cmd_worker_info(const GlobalOptions& g, const std::string& selector);
int cmd_worker_stop(const GlobalOptions& g, const std::string& selector);
int cmd_worker_address(const GlobalOptions& g, const std::string& selector);
// Until at least `count` workers are connected.
int cmd_worker_wait(const GlobalOptions& g, uint32_t count);
// Until the server of the server directory answers, or `timeout` passed (nullopt: forever).
int cmd_server_wait(const GlobalOptions& g, std::optional<Millis> timeout);
int cmd_server_info(const GlobalOptions& g);
// Prints what `hq server info` shows (also `hq server start`, once it listens).
void print_server_info(const GlobalOptions& g, wire::ServerInfo::Reader info);
int cmd_server_stop(const GlobalOptions& g);

// `hq server generate-access FILE`: an access file with fresh keys and a new server UID, for a
// server started later with `--access-file FILE`; optionally the client-only and worker-only
// halves too.
struct GenerateAccessOptions {
  fs::path file;
  std::string host;                      // both hosts; empty: this machine's hostname
  std::string client_host, worker_host;  // empty: `host`
  uint16_t client_port = 0, worker_port = 0;
  fs::path client_file, worker_file;  // empty: not written
};
int cmd_server_generate_access(const GlobalOptions& g, const GenerateAccessOptions& o);

// Builds the job description of `hq submit` (exposed for tests). Warnings (unknown
// placeholders) are appended to `warnings`.
JobDescriptionSpec make_job_description(const SubmitOptions& o, const std::string& submit_dir,
                                        std::vector<std::string>& warnings);

}  // namespace hq::cli
