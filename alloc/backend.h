#pragma once
// Batch systems (SLURM, PBS) as pure logic: the batch script of an allocation, the command lines
// that submit, query and cancel allocations, and the parsing of those commands' outputs. Nothing
// here runs a process or reads a clock; alloc/batch_system.h runs the commands.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "common/time.h"

namespace hq::alloc {

enum class ManagerKind { kSlurm, kPbs };

std::string_view manager_name(ManagerKind kind);  // "slurm" / "pbs"
Result<ManagerKind> parse_manager(std::string_view text);

// What one allocation asks for and runs. Every path is absolute.
struct AllocationSpec {
  std::string name;      // the queue's name; the batch job is called "hq-<name>" ("hq" when empty)
  Millis time_limit{0};  // the allocation's walltime; must be positive
  std::optional<Millis> worker_time_limit;  // `hq worker start --time-limit`; none: the walltime's
  uint32_t workers = 1;                     // nodes, one worker on each
  std::string hq_binary;                    // the `hq` that runs the workers
  std::string server_dir;                   // the workers' --server-dir
  std::vector<std::string> worker_args;     // more `hq worker start` options (--cpus 4, ...)
  std::vector<std::string> batch_args;      // passed to sbatch/qsub as they are
  std::string worker_start_cmd;             // shell commands run before / after each worker
  std::string worker_stop_cmd;
  std::string worker_wrap_cmd;  // shell words put in front of the worker's command
  std::string log_dir;          // the allocation's stdout and stderr files go here
};

enum class AllocationState { kQueued, kRunning, kFinished, kFailed };
std::string_view state_name(AllocationState state);  // "queued", "running", ...

// One allocation as the batch system reports it.
struct AllocationStatus {
  AllocationState state = AllocationState::kQueued;
  std::string detail;  // the batch system's own words: "PENDING (Priority)", "exit status 1"
};

// The output of a finished command.
struct CommandOutput {
  int exit_code = 0;  // 128 + N when it was killed by signal N
  std::string out;
  std::string err;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual ManagerKind kind() const = 0;

  // The batch script: the worker's start command and the queue's start/stop commands. Options
  // for the batch system itself are all on the submit command line (submit_command).
  virtual std::string batch_script(const AllocationSpec& spec) const = 0;
  // Submits `script_path`; `hold` submits it held, never to start (a dry run).
  virtual std::vector<std::string> submit_command(const AllocationSpec& spec,
                                                  const std::string& script_path,
                                                  bool hold) const = 0;
  // The allocation id, or the batch system's error.
  virtual Result<std::string> parse_submit(const CommandOutput& output) const = 0;

  // One command for many allocations. `ids` must not be empty.
  virtual std::vector<std::string> status_command(const std::vector<std::string>& ids) const = 0;
  // The allocations the batch system still knows; ids it forgot (finished long ago) are absent.
  virtual Result<std::map<std::string, AllocationStatus>> parse_status(
      const CommandOutput& output) const = 0;

  virtual std::vector<std::string> cancel_command(const std::vector<std::string>& ids) const = 0;
  virtual Status parse_cancel(const CommandOutput& output) const = 0;

  // From inside an allocation: the environment variable that holds its id, the command that
  // reports its remaining time, and that command's output parsed (none: unlimited).
  virtual std::string_view job_id_variable() const = 0;
  virtual std::vector<std::string> remaining_time_command(const std::string& id) const = 0;
  virtual Result<std::optional<Millis>> parse_remaining_time(const CommandOutput& output) const = 0;
};

std::unique_ptr<Backend> make_backend(ManagerKind kind);

// --- helpers shared by the backends, public for their tests ---

// `s` without leading and trailing whitespace.
std::string_view trim_space(std::string_view s);
// The non-empty lines of `text`, trimmed.
std::vector<std::string_view> text_lines(std::string_view text);
// "sbatch failed (exit 1): sbatch: error: ...": the command's own words (stderr, else stdout).
Error command_error(std::string_view command, const CommandOutput& output);
// Quotes a word for a POSIX shell (unchanged when it needs no quoting).
std::string shell_quote(std::string_view word);
// "HH:MM:SS" with hours unbounded ("36:00:00"); rounded up to whole seconds.
std::string format_hms(Millis d);
// "[D-]HH:MM:SS", "MM:SS", "MM" or "D-HH[:MM]", as SLURM and PBS print walltimes.
Result<Millis> parse_walltime(std::string_view text);
// The `hq worker start ...` command line of an allocation's workers, shell-quoted.
std::string worker_command(const AllocationSpec& spec, ManagerKind kind);
// A bash batch script that runs, on each node, the start command, the worker and the stop
// command, and exits with the worker's exit status. With more than one worker, `launcher` (such
// as "srun --nodes=2 --ntasks-per-node=1") runs that per-node part on every node.
std::string worker_script(const AllocationSpec& spec, ManagerKind kind, std::string_view launcher);

}  // namespace hq::alloc
