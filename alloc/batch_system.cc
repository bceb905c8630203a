#include "alloc/batch_system.h"

#include <stdlib.h>

#include <fstream>
#include <system_error>

#include <fmt/format.h>

namespace hq::alloc {

namespace fs = std::filesystem;

BatchSystem::BatchSystem(std::unique_ptr<Backend> backend, CommandRunner& runner)
    : backend_(std::move(backend)), runner_(&runner) {}

Result<std::string> BatchSystem::submit(const AllocationSpec& spec, bool hold) {
  if (spec.time_limit.count() <= 0) return Error{"an allocation needs a positive --time-limit"};
  if (spec.workers == 0) return Error{"an allocation needs at least one worker"};
  if (spec.log_dir.empty()) return Error{"an allocation needs a log directory"};
  std::error_code ec;
  fs::create_directories(spec.log_dir, ec);
  if (ec) return Error{fmt::format("cannot make {}: {}", spec.log_dir, ec.message())};
  std::string script = spec.log_dir + "/hq-alloc.sh";
  {
    std::ofstream file(script, std::ios::trunc);
    file << backend_->batch_script(spec);
    file.close();
    if (!file) return Error{fmt::format("cannot write the batch script {}", script)};
  }
  fs::permissions(script, fs::perms::owner_all, fs::perm_options::replace, ec);
  auto output = runner_->run(backend_->submit_command(spec, script, hold));
  if (!output) return output.error();
  return backend_->parse_submit(*output);
}

Result<std::map<std::string, AllocationStatus>> BatchSystem::query(
    const std::vector<std::string>& ids) {
  if (ids.empty()) return std::map<std::string, AllocationStatus>{};
  auto output = runner_->run(backend_->status_command(ids));
  if (!output) return output.error();
  return backend_->parse_status(*output);
}

Status BatchSystem::cancel(const std::vector<std::string>& ids) {
  if (ids.empty()) return Status::ok();
  auto output = runner_->run(backend_->cancel_command(ids));
  if (!output) return output.error();
  return backend_->parse_cancel(*output);
}

Status BatchSystem::dry_run(AllocationSpec spec) {
  std::string pattern = (fs::temp_directory_path() / "hq-dry-run-XXXXXX").string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    return Error{fmt::format("cannot make a temporary directory {}", pattern)};
  }
  spec.log_dir = pattern;
  auto id = submit(spec, /*hold=*/true);
  Status canceled = id ? cancel({*id}) : Status::ok();
  std::error_code ec;
  fs::remove_all(pattern, ec);
  if (!id) return id.error();
  if (!canceled) {
    return Error{fmt::format("the test allocation {} was submitted but could not be removed: {}",
                             *id, canceled.message())};
  }
  return Status::ok();
}

Result<std::optional<AllocationInfo>> find_allocation(
    std::string_view manager, const std::function<std::optional<std::string>(const char*)>& getenv,
    CommandRunner& runner) {
  std::optional<ManagerKind> kind;
  if (manager == "none") return std::optional<AllocationInfo>();
  if (manager == "detect") {
    if (getenv("SLURM_JOB_ID")) {
      kind = ManagerKind::kSlurm;
    } else if (getenv("PBS_JOBID")) {
      kind = ManagerKind::kPbs;
    } else {
      return std::optional<AllocationInfo>();
    }
  } else {
    auto k = parse_manager(manager);
    if (!k)
      return Error{
          fmt::format("invalid --manager '{}': expected slurm, pbs, none or detect", manager)};
    kind = *k;
  }
  std::unique_ptr<Backend> backend = make_backend(*kind);
  std::string variable(backend->job_id_variable());
  std::optional<std::string> id = getenv(variable.c_str());
  if (!id || id->empty()) {
    return Error{fmt::format("--manager {}: {} is not set (is this worker inside a {} job?)",
                             manager_name(*kind), variable, manager_name(*kind))};
  }
  AllocationInfo info{*kind, *id, std::nullopt};
  auto output = runner.run(backend->remaining_time_command(*id));
  if (!output) {
    return Error{
        fmt::format("cannot read the remaining time of allocation {}: {}", *id, output.message())};
  }
  auto remaining = backend->parse_remaining_time(*output);
  if (!remaining) {
    return Error{fmt::format("cannot read the remaining time of allocation {}: {}", *id,
                             remaining.message())};
  }
  info.remaining = *remaining;
  return std::optional<AllocationInfo>(std::move(info));
}

}  // namespace hq::alloc
