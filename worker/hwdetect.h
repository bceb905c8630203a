#pragma once
// Hardware detection of a worker: the CPUs this process may run on (grouped by NUMA node), the
// machine's memory, and the GPUs it is given. `hq worker hwdetect` prints what it finds.

#include <string>
#include <string_view>

#include "common/resources.h"
#include "common/result.h"

namespace hq::worker {

// What detect_resources() looks for.
struct DetectOptions {
  bool cpus = true, mem = true, nvidia = true, amd = true;  // what to detect
  bool no_hyper_threading = false;                          // keep one PU per core
  // Tests only: an hwloc synthetic topology ("NUMANode:2 Core:2 PU:2"); empty = this machine.
  // A synthetic topology is not restricted to the CPU binding of this process, and its memory
  // is what hwloc gives it (1 GiB per NUMA node), never this machine's.
  std::string synthetic;
};

// Parses `--detect-resources`: "all", "none", or a comma list of cpus, mem, gpus/nvidia,
// gpus/amd. An unknown item is an error naming it. `no_hyper_threading` and `synthetic` keep
// their defaults.
Result<DetectOptions> parse_detect_list(std::string_view text);

// What this machine offers this process, resources in name order:
// - "cpus" (indexed): the PUs of the CPU binding of the calling thread (taskset, SLURM), labelled
//   by OS index, grouped by NUMA node, else by package, else one group; groups ordered by their
//   first PU. Left out when `cpus` is off: the caller must then add "cpus" itself.
// - "gpus/amd" (indexed, one group): the items of $ROCR_VISIBLE_DEVICES.
// - "gpus/nvidia" (indexed, one group): the items of $CUDA_VISIBLE_DEVICES, else the indices
//   printed by `nvidia-smi` (when in PATH), else 0..n-1 for the n entries of
//   /proc/driver/nvidia/gpus.
// - "mem" (sum): the machine's memory in MiB.
// GPU resources are left out when none are found. Errors: hwloc cannot load the topology (or the
// synthetic description), or no CPU is left.
// Blocking (it may run nvidia-smi): call it before the event loop starts.
Result<ResourceDescriptor> detect_resources(const DetectOptions& options);

}  // namespace hq::worker
