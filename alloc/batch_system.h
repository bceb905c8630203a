#pragma once
// A batch system driven through its commands: a Backend (what to run, how to read it) with a
// CommandRunner (running it). One command per call, whatever the number of allocations.

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "alloc/backend.h"
#include "alloc/command.h"

namespace hq::alloc {

class BatchSystem {
 public:
  // `runner` must outlive this BatchSystem.
  BatchSystem(std::unique_ptr<Backend> backend, CommandRunner& runner);

  const Backend& backend() const { return *backend_; }

  // Writes the batch script as `spec.log_dir`/hq-alloc.sh (making the directory) and submits it;
  // the allocation id, or the batch system's error.
  Result<std::string> submit(const AllocationSpec& spec, bool hold = false);
  // The state of each allocation the batch system still knows (see Backend::parse_status);
  // nothing runs for no ids.
  Result<std::map<std::string, AllocationStatus>> query(const std::vector<std::string>& ids);
  // Cancels queued and running allocations; ones that ended already are no error.
  Status cancel(const std::vector<std::string>& ids);
  // Submits `spec` held, in a temporary log directory, and cancels it at once: the batch
  // system's own error when it would refuse the allocation.
  Status dry_run(AllocationSpec spec);

 private:
  std::unique_ptr<Backend> backend_;
  CommandRunner* runner_;
};

// The allocation a worker runs in, as `hq worker start --manager` finds it.
struct AllocationInfo {
  ManagerKind kind = ManagerKind::kSlurm;
  std::string id;                   // SLURM_JOB_ID / PBS_JOBID
  std::optional<Millis> remaining;  // none: no walltime
};

// `--manager`: slurm, pbs, none, or detect (slurm when SLURM_JOB_ID is set, else pbs when
// PBS_JOBID is set, else none). None: no allocation. A named manager whose variable is unset, or
// whose remaining time cannot be read, is an error. `getenv` reads the environment.
Result<std::optional<AllocationInfo>> find_allocation(
    std::string_view manager, const std::function<std::optional<std::string>(const char*)>& getenv,
    CommandRunner& runner);

}  // namespace hq::alloc
