#include "worker/hwdetect.h"

#include <hwloc.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <vector>

#include <fmt/format.h>

namespace hq::worker {
namespace {

struct TopologyDeleter {
  void operator()(hwloc_topology* t) const { hwloc_topology_destroy(t); }
};
using Topology = std::unique_ptr<hwloc_topology, TopologyDeleter>;

struct BitmapDeleter {
  void operator()(hwloc_bitmap_s* b) const { hwloc_bitmap_free(b); }
};
using Bitmap = std::unique_ptr<hwloc_bitmap_s, BitmapDeleter>;

Bitmap new_bitmap() { return Bitmap(hwloc_bitmap_alloc()); }

Bitmap copy_bitmap(hwloc_const_bitmap_t b) { return Bitmap(hwloc_bitmap_dup(b)); }

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

// The non-empty items of a comma list, trimmed, first occurrence of each.
std::vector<std::string> split_list(std::string_view text) {
  std::vector<std::string> items;
  while (true) {
    size_t comma = text.find(',');
    std::string item(trim(text.substr(0, comma)));
    if (!item.empty() && std::find(items.begin(), items.end(), item) == items.end())
      items.push_back(std::move(item));
    if (comma == std::string_view::npos) break;
    text.remove_prefix(comma + 1);
  }
  return items;
}

Result<Topology> load_topology(const DetectOptions& options) {
  hwloc_topology_t raw = nullptr;
  if (hwloc_topology_init(&raw) != 0)
    return Error{fmt::format("hwloc cannot start: {}", std::strerror(errno))};
  Topology topo(raw);
  // Caches and I/O devices are not needed; skipping them makes the load faster.
  hwloc_topology_set_cache_types_filter(raw, HWLOC_TYPE_FILTER_KEEP_NONE);
  hwloc_topology_set_io_types_filter(raw, HWLOC_TYPE_FILTER_KEEP_NONE);
  if (!options.synthetic.empty() && hwloc_topology_set_synthetic(raw, options.synthetic.c_str()))
    return Error{fmt::format("invalid synthetic topology '{}'", options.synthetic)};
  if (hwloc_topology_load(raw) != 0)
    return Error{fmt::format("hwloc cannot read the hardware topology: {}", std::strerror(errno))};
  return topo;
}

// The PUs this process may use: those of the topology (hwloc already leaves out what the
// cgroup forbids) that the calling thread is bound to (taskset, SLURM). A synthetic topology is
// taken whole.
Result<Bitmap> allowed_pus(hwloc_topology_t topo, bool synthetic) {
  Bitmap allowed = copy_bitmap(hwloc_topology_get_topology_cpuset(topo));
  if (synthetic) return allowed;
  Bitmap bound = new_bitmap();
  if (hwloc_get_cpubind(topo, bound.get(), HWLOC_CPUBIND_THREAD) != 0)
    return Error{
        fmt::format("cannot read the CPU binding of this process: {}", std::strerror(errno))};
  hwloc_bitmap_and(allowed.get(), allowed.get(), bound.get());
  return allowed;
}

// The first PU of each core in `pus`; PUs outside every core stay.
Bitmap one_pu_per_core(hwloc_topology_t topo, hwloc_const_bitmap_t pus) {
  Bitmap kept = new_bitmap();
  Bitmap covered = new_bitmap();
  Bitmap in_core = new_bitmap();
  int cores = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
  for (int i = 0; i < cores; ++i) {
    hwloc_obj_t core = hwloc_get_obj_by_type(topo, HWLOC_OBJ_CORE, i);
    hwloc_bitmap_and(in_core.get(), core->cpuset, pus);
    int first = hwloc_bitmap_first(in_core.get());
    if (first >= 0) hwloc_bitmap_set(kept.get(), first);
    hwloc_bitmap_or(covered.get(), covered.get(), core->cpuset);
  }
  Bitmap outside = new_bitmap();
  hwloc_bitmap_andnot(outside.get(), pus, covered.get());
  hwloc_bitmap_or(kept.get(), kept.get(), outside.get());
  return kept;
}

// `pus` split by the objects of `type`: each PU goes to the first object holding it (NUMA nodes
// may share PUs, as the DDR and HBM nodes of one socket do), PUs outside every object make one
// more group. Empty groups are dropped.
std::vector<Bitmap> split_by(hwloc_topology_t topo, hwloc_obj_type_t type,
                             hwloc_const_bitmap_t pus) {
  std::vector<Bitmap> groups;
  Bitmap left = copy_bitmap(pus);
  int n = hwloc_get_nbobjs_by_type(topo, type);
  for (int i = 0; i < n; ++i) {
    hwloc_obj_t obj = hwloc_get_obj_by_type(topo, type, i);
    if (obj->cpuset == nullptr) continue;
    Bitmap group = new_bitmap();
    hwloc_bitmap_and(group.get(), obj->cpuset, left.get());
    if (hwloc_bitmap_iszero(group.get())) continue;
    hwloc_bitmap_andnot(left.get(), left.get(), group.get());
    groups.push_back(std::move(group));
  }
  if (!hwloc_bitmap_iszero(left.get())) groups.push_back(std::move(left));
  return groups;
}

Result<ResourceDefinition> detect_cpus(hwloc_topology_t topo, const DetectOptions& options) {
  auto allowed = allowed_pus(topo, !options.synthetic.empty());
  if (!allowed) return allowed.error();
  Bitmap pus = std::move(*allowed);
  if (options.no_hyper_threading) pus = one_pu_per_core(topo, pus.get());
  if (hwloc_bitmap_iszero(pus.get()))
    return Error{"no CPU found that this process may run on (check taskset or the job's CPUs)"};

  std::vector<Bitmap> groups = split_by(topo, HWLOC_OBJ_NUMANODE, pus.get());
  if (groups.size() <= 1) groups = split_by(topo, HWLOC_OBJ_PACKAGE, pus.get());
  if (groups.size() <= 1) {
    groups.clear();
    groups.push_back(std::move(pus));
  }
  std::sort(groups.begin(), groups.end(), [](const Bitmap& a, const Bitmap& b) {
    return hwloc_bitmap_first(a.get()) < hwloc_bitmap_first(b.get());
  });

  ResourceDefinition def;
  def.name = std::string(kCpus);
  def.kind = ResourceKind::kIndexed;
  for (const Bitmap& group : groups) {
    std::vector<std::string> labels;
    // Bits are OS indices, visited in increasing order.
    for (int pu = hwloc_bitmap_first(group.get()); pu >= 0; pu = hwloc_bitmap_next(group.get(), pu))
      labels.push_back(std::to_string(pu));
    def.groups.push_back(std::move(labels));
  }
  return def;
}

// MiB of memory: what hwloc counts, else (on this machine only) what sysconf says; 0 if unknown.
uint64_t detect_mem_mib(hwloc_topology_t topo, bool synthetic) {
  uint64_t bytes = hwloc_get_root_obj(topo)->total_memory;
  if (bytes == 0 && !synthetic) {
    long pages = sysconf(_SC_PHYS_PAGES);
    long page_size = sysconf(_SC_PAGESIZE);
    if (pages > 0 && page_size > 0) bytes = uint64_t(pages) * uint64_t(page_size);
  }
  return bytes >> 20;
}

ResourceDefinition single_group(std::string_view name, std::vector<std::string> labels) {
  ResourceDefinition def;
  def.name = std::string(name);
  def.kind = ResourceKind::kIndexed;
  def.groups.push_back(std::move(labels));
  return def;
}

std::vector<std::string> env_list(const char* variable) {
  const char* value = std::getenv(variable);
  return value ? split_list(value) : std::vector<std::string>{};
}

// The file `program` in a directory of $PATH, or empty.
std::string find_in_path(std::string_view program) {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return {};
  std::string_view dirs = path;
  while (true) {
    size_t colon = dirs.find(':');
    std::string_view dir = dirs.substr(0, colon);
    if (!dir.empty()) {
      std::string candidate = fmt::format("{}/{}", dir, program);
      std::error_code ec;
      if (std::filesystem::is_regular_file(candidate, ec) && access(candidate.c_str(), X_OK) == 0)
        return candidate;
    }
    if (colon == std::string_view::npos) return {};
    dirs.remove_prefix(colon + 1);
  }
}

std::string shell_quote(std::string_view s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'')
      out += "'\\''";
    else
      out += c;
  }
  return out + "'";
}

// GPU indices printed by nvidia-smi; empty when it is missing or fails.
std::vector<std::string> nvidia_smi_indices() {
  std::string program = find_in_path("nvidia-smi");
  if (program.empty()) return {};
  std::string command =
      shell_quote(program) + " --query-gpu=index --format=csv,noheader 2>/dev/null";
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) return {};
  std::vector<std::string> indices;
  char line[256];
  while (std::fgets(line, sizeof line, pipe) != nullptr) {
    std::string_view item = trim(line);
    // Error messages of a broken driver come on stdout too: keep only numbers.
    if (!item.empty() &&
        std::all_of(item.begin(), item.end(), [](char c) { return c >= '0' && c <= '9'; }))
      indices.emplace_back(item);
  }
  if (pclose(pipe) != 0) return {};
  return indices;
}

std::vector<std::string> nvidia_gpus() {
  // Set, even empty or to "-1"/"NoDevFiles", it is what CUDA programs will see: no probing.
  if (const char* set = std::getenv("CUDA_VISIBLE_DEVICES")) {
    std::string_view value = trim(set);
    if (value.empty() || value.starts_with("-1") || value == "NoDevFiles") return {};
    return env_list("CUDA_VISIBLE_DEVICES");
  }
  if (auto indices = nvidia_smi_indices(); !indices.empty()) return indices;
  std::vector<std::string> labels;
  std::error_code ec;
  for (std::filesystem::directory_iterator it("/proc/driver/nvidia/gpus", ec), end;
       !ec && it != end; it.increment(ec))
    labels.push_back(std::to_string(labels.size()));
  return labels;
}

}  // namespace

Result<DetectOptions> parse_detect_list(std::string_view text) {
  DetectOptions o;
  std::string_view all = trim(text);
  if (all == "all") return o;
  o.cpus = o.mem = o.nvidia = o.amd = false;
  if (all == "none") return o;
  if (all.empty())
    return Error{
        "empty --detect-resources list: give all, none, or items of cpus, mem, "
        "gpus/nvidia, gpus/amd"};
  while (true) {
    size_t comma = all.find(',');
    std::string_view item = trim(all.substr(0, comma));
    if (item == kCpus) {
      o.cpus = true;
    } else if (item == kMem) {
      o.mem = true;
    } else if (item == kNvidiaGpus) {
      o.nvidia = true;
    } else if (item == kAmdGpus) {
      o.amd = true;
    } else if (item == "all" || item == "none") {
      return Error{
          fmt::format("'{}' cannot be combined with other items in --detect-resources", item)};
    } else {
      return Error{fmt::format(
          "unknown resource '{}' in --detect-resources: expected all, none, or a comma list of "
          "cpus, mem, gpus/nvidia, gpus/amd",
          item)};
    }
    if (comma == std::string_view::npos) break;
    all.remove_prefix(comma + 1);
  }
  return o;
}

Result<ResourceDescriptor> detect_resources(const DetectOptions& options) {
  ResourceDescriptor descriptor;
  Topology topo;
  if (options.cpus || options.mem) {
    auto loaded = load_topology(options);
    if (!loaded) return loaded.error();
    topo = std::move(*loaded);
  }
  // Added in name order.
  if (options.cpus) {
    auto cpus = detect_cpus(topo.get(), options);
    if (!cpus) return cpus.error();
    descriptor.set(std::move(*cpus));
  }
  if (options.amd) {
    if (auto labels = env_list("ROCR_VISIBLE_DEVICES"); !labels.empty())
      descriptor.set(single_group(kAmdGpus, std::move(labels)));
  }
  if (options.nvidia) {
    if (auto labels = nvidia_gpus(); !labels.empty())
      descriptor.set(single_group(kNvidiaGpus, std::move(labels)));
  }
  if (options.mem) {
    if (uint64_t mib = detect_mem_mib(topo.get(), !options.synthetic.empty()); mib > 0) {
      ResourceDefinition def;
      def.name = std::string(kMem);
      def.kind = ResourceKind::kSum;
      def.sum = mib;
      descriptor.set(std::move(def));
    }
  }
  return descriptor;
}

}  // namespace hq::worker
