// SLURM: sbatch, squeue, scancel, as documented by SLURM (22.05 here).

#include <fmt/format.h>

#include "alloc/backend.h"

namespace hq::alloc {
namespace {

// "D-HH:MM:SS", as sbatch --time takes it; rounded up to whole seconds.
std::string slurm_time(Millis d) {
  int64_t s = (d.count() + 999) / 1000;
  return fmt::format("{}-{:02}:{:02}:{:02}", s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
}

// squeue's %T, job state codes in SLURM's squeue manual.
Result<AllocationState> slurm_state(std::string_view state) {
  static const std::pair<std::string_view, AllocationState> kStates[] = {
      {"PENDING", AllocationState::kQueued},      {"CONFIGURING", AllocationState::kQueued},
      {"REQUEUED", AllocationState::kQueued},     {"REQUEUE_HOLD", AllocationState::kQueued},
      {"REQUEUE_FED", AllocationState::kQueued},  {"RESV_DEL_HOLD", AllocationState::kQueued},
      {"RUNNING", AllocationState::kRunning},     {"COMPLETING", AllocationState::kRunning},
      {"SUSPENDED", AllocationState::kRunning},   {"STOPPED", AllocationState::kRunning},
      {"SIGNALING", AllocationState::kRunning},   {"STAGE_OUT", AllocationState::kRunning},
      {"RESIZING", AllocationState::kRunning},    {"COMPLETED", AllocationState::kFinished},
      {"CANCELLED", AllocationState::kFinished},  {"TIMEOUT", AllocationState::kFinished},
      {"FAILED", AllocationState::kFailed},       {"NODE_FAIL", AllocationState::kFailed},
      {"BOOT_FAIL", AllocationState::kFailed},    {"OUT_OF_MEMORY", AllocationState::kFailed},
      {"DEADLINE", AllocationState::kFailed},     {"PREEMPTED", AllocationState::kFailed},
      {"SPECIAL_EXIT", AllocationState::kFailed}, {"REVOKED", AllocationState::kFailed},
  };
  for (const auto& [name, s] : kStates) {
    if (name == state) return s;
  }
  return Error{fmt::format("squeue printed an unknown job state '{}'", state)};
}

bool all_digits(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

class SlurmBackend final : public Backend {
 public:
  ManagerKind kind() const override { return ManagerKind::kSlurm; }

  std::string batch_script(const AllocationSpec& spec) const override {
    return worker_script(
        spec, kind(),
        fmt::format("srun --overlap --nodes={0} --ntasks={0} --ntasks-per-node=1", spec.workers));
  }

  std::vector<std::string> submit_command(const AllocationSpec& spec,
                                          const std::string& script_path,
                                          bool hold) const override {
    std::vector<std::string> argv{
        "sbatch",
        "--parsable",
        "--job-name=hq-" + (spec.name.empty() ? std::string("alloc") : spec.name),
        "--output=" + spec.log_dir + "/stdout",
        "--error=" + spec.log_dir + "/stderr",
        "--time=" + slurm_time(spec.time_limit),
        fmt::format("--nodes={}", spec.workers),
    };
    if (hold) argv.push_back("--hold");
    argv.insert(argv.end(), spec.batch_args.begin(), spec.batch_args.end());
    argv.push_back(script_path);
    return argv;
  }

  Result<std::string> parse_submit(const CommandOutput& output) const override {
    if (output.exit_code != 0) return command_error("sbatch", output);
    // --parsable: "ID" or "ID;CLUSTER".
    std::string_view out = trim_space(output.out);
    std::string_view id = out.substr(0, out.find(';'));
    if (!all_digits(id)) {
      return Error{fmt::format("sbatch printed no job id: '{}'", out)};
    }
    return std::string(id);
  }

  std::vector<std::string> status_command(const std::vector<std::string>& ids) const override {
    return {"squeue", "--noheader", "--states=all",
            "--jobs=" + fmt::format("{}", fmt::join(ids, ",")), "--format=%i|%T|%r"};
  }

  Result<std::map<std::string, AllocationStatus>> parse_status(
      const CommandOutput& output) const override {
    std::map<std::string, AllocationStatus> out;
    if (output.exit_code != 0) {
      // Every id is one SLURM no longer knows (it keeps ended jobs for MinJobAge only).
      if (output.err.find("Invalid job id specified") != std::string::npos) return out;
      return command_error("squeue", output);
    }
    for (std::string_view line : text_lines(output.out)) {
      auto bar1 = line.find('|');
      auto bar2 = bar1 == std::string_view::npos ? bar1 : line.find('|', bar1 + 1);
      if (bar2 == std::string_view::npos) {
        return Error{fmt::format("unexpected squeue line '{}': expected ID|STATE|REASON", line)};
      }
      std::string_view id = line.substr(0, bar1);
      std::string_view state = line.substr(bar1 + 1, bar2 - bar1 - 1);
      std::string_view reason = line.substr(bar2 + 1);
      auto s = slurm_state(state);
      if (!s) return Error{fmt::format("{} (job {})", s.message(), id)};
      AllocationStatus status{*s, std::string(state)};
      if (!reason.empty() && reason != "None") status.detail += fmt::format(" ({})", reason);
      out[std::string(id)] = std::move(status);
    }
    return out;
  }

  std::vector<std::string> cancel_command(const std::vector<std::string>& ids) const override {
    std::vector<std::string> argv{"scancel"};
    argv.insert(argv.end(), ids.begin(), ids.end());
    return argv;
  }

  Status parse_cancel(const CommandOutput& output) const override {
    if (output.exit_code == 0) return Status::ok();
    // Allocations that ended meanwhile are not an error: every line must say so.
    std::vector<std::string_view> lines = text_lines(output.err);
    bool only_ended = !lines.empty();
    for (std::string_view line : lines) {
      if (line.find("already completing or completed") == std::string_view::npos &&
          line.find("Invalid job id specified") == std::string_view::npos) {
        only_ended = false;
      }
    }
    if (only_ended) return Status::ok();
    return command_error("scancel", output);
  }

  std::string_view job_id_variable() const override { return "SLURM_JOB_ID"; }

  std::vector<std::string> remaining_time_command(const std::string& id) const override {
    return {"squeue", "--noheader", "--jobs=" + id, "--format=%L"};
  }

  Result<std::optional<Millis>> parse_remaining_time(const CommandOutput& output) const override {
    if (output.exit_code != 0) return command_error("squeue", output);
    std::string_view left = trim_space(output.out);
    if (left.empty()) return Error{"squeue printed no remaining time: the job is not running"};
    if (left == "UNLIMITED" || left == "NOT_SET") return std::optional<Millis>();
    auto t = parse_walltime(left);
    if (!t)
      return Error{fmt::format("squeue printed a remaining time that is not one: {}", t.message())};
    return std::optional<Millis>(*t);
  }
};

}  // namespace

std::unique_ptr<Backend> make_slurm_backend() { return std::make_unique<SlurmBackend>(); }

}  // namespace hq::alloc
