#pragma once
// Resources: what a worker has (a descriptor) and what a task asks for (a request), with the
// text forms of the command line. docs/resources.md describes them for users.
//
// A resource is either indexed (a list of named units, such as CPUs or GPUs, split into groups,
// such as NUMA nodes) or a sum (a pool of interchangeable units, such as MiB of memory). Amounts
// are counted in 1/10,000 of a unit, so that tasks can share an indexed unit (`gpus=0.5`).

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace hq {

using ResourceAmount = uint64_t;
inline constexpr ResourceAmount kAmountUnit = 10000;  // one whole unit

// Limits on what a worker or a task may declare (bytes from a socket are checked against them).
inline constexpr uint64_t kMaxResourceUnits = 1 << 20;       // units of one indexed resource
inline constexpr uint64_t kMaxSumUnits = 1'000'000'000'000;  // of one sum resource
inline constexpr uint64_t kMaxRequestUnits = 1'000'000'000;  // of one request entry
inline constexpr size_t kMaxRequestEntries = 64;
inline constexpr size_t kMaxWorkerResources = 64;

inline constexpr std::string_view kCpus = "cpus";
inline constexpr std::string_view kMem = "mem";
inline constexpr std::string_view kNvidiaGpus = "gpus/nvidia";
inline constexpr std::string_view kAmdGpus = "gpus/amd";

enum class ResourceKind : uint8_t { kIndexed, kSum };

// One resource of a worker.
struct ResourceDefinition {
  std::string name;
  ResourceKind kind = ResourceKind::kIndexed;
  // kIndexed: the labels of the units, by group; every group non-empty, every label unique.
  std::vector<std::vector<std::string>> groups;
  uint64_t sum = 0;  // kSum: how many units

  uint32_t size() const;  // kIndexed: units over all groups
  bool operator==(const ResourceDefinition&) const = default;
};

// Everything a worker offers. Names are unique; "cpus" is always there (indexed).
struct ResourceDescriptor {
  std::vector<ResourceDefinition> resources;

  const ResourceDefinition* find(std::string_view name) const;
  uint32_t cpus() const;  // units of "cpus"
  // Adds `def`, replacing a resource of the same name.
  void set(ResourceDefinition def);
  bool operator==(const ResourceDescriptor&) const = default;
};

// Parses a resource name: letters, digits, '_', '-', '.' and '/' (as in "gpus/nvidia").
Status check_resource_name(std::string_view name);

// `--cpus` of a worker: "N" (N units 0..N-1 in one group), "NxM" (N groups of M), "[0,1,2]",
// or "[[0,1],[2,3]]".
Result<ResourceDefinition> parse_cpu_definition(std::string_view text);
// `--resource NAME=VALUE`: VALUE is "[a,b,c]", "[[a,b],[c,d]]", "range(A-B)" or "sum(N)".
// "sum" for cpus, a zero amount and an empty list are errors.
Result<ResourceDefinition> parse_resource_definition(std::string_view text);
// Adds definitions to a descriptor; a name given twice, or more than kMaxWorkerResources, is an
// error.
Status add_definition(ResourceDescriptor& descriptor, ResourceDefinition def,
                      std::vector<std::string>& defined);

// "cpus 2x4; gpus/nvidia 2; mem 64000": groups of equal size as NxM, else the unit count.
std::string describe(const ResourceDescriptor& descriptor);
std::string describe(const ResourceDefinition& def);

// How a request is spread over the groups of an indexed resource.
enum class AllocationPolicy : uint8_t {
  kCompact,       // as few groups as possible now (the default)
  kForceCompact,  // compact!: only as few groups as the amount needs on an empty worker
  kTight,         // fill the most used groups first, keeping free groups whole
  kForceTight,    // tight!: as compact! but filling the most used groups first
  kScatter,       // one unit from each group in turn
  kAll,           // every unit of the resource
};
const char* to_string(AllocationPolicy p);
// compact! and tight!: the whole amount must fit the fewest groups it could, so it is whole.
bool is_forced(AllocationPolicy p);

struct ResourceRequestEntry {
  std::string name;
  ResourceAmount amount = 0;  // in 1/kAmountUnit; unused for kAll
  AllocationPolicy policy = AllocationPolicy::kCompact;
  bool operator==(const ResourceRequestEntry&) const = default;
};

// What one task needs: entries sorted by name, one per resource, "cpus" always among them.
struct ResourceRequest {
  std::vector<ResourceRequestEntry> entries;

  const ResourceRequestEntry* find(std::string_view name) const;
  ResourceAmount cpus() const;  // amount of "cpus"; kAll counts as 0
  bool operator==(const ResourceRequest&) const = default;
};

// The CPUs a request occupies, a share of one counted whole ("1.5" -> 2); 0 for "all".
uint32_t whole_cpus(const ResourceRequest& request);

// "AMOUNT [POLICY]" or "all": "4", "4 compact!", "0.5", "2.5 scatter". At most four decimal
// places; a fraction above one is that many whole units plus a share of one more. compact! and
// tight! take whole amounts only (as in HyperQueue).
Result<ResourceRequestEntry> parse_request_entry(std::string_view name, std::string_view text);
// "NAME=AMOUNT [POLICY]" (`hq submit --resource`).
Result<ResourceRequestEntry> parse_named_request(std::string_view text);
// Checks the entries (names, amounts within kMaxRequestUnits, no fraction under compact! or
// tight!, at most kMaxRequestEntries), sorts them, checks names are unique and adds "cpus=1" when
// missing.
Result<ResourceRequest> make_request(std::vector<ResourceRequestEntry> entries);

// "1.5", "2", "0.25".
std::string format_amount(ResourceAmount amount);
// One entry as the user writes it, without the name: "2", "2 compact!", "0.5", "all".
std::string describe(const ResourceRequestEntry& entry);
// One entry as HyperQueue tells it to a task (HQ_RESOURCE_REQUEST_<name>): the policy always
// written, "2 compact", "0.5 scatter", "all".
std::string describe_with_policy(const ResourceRequestEntry& entry);
// "cpus=4 compact!; gpus/nvidia=0.5".
std::string describe(const ResourceRequest& request);

// Environment variable suffix of a resource, as HyperQueue forms it: the case kept, every
// character other than an ASCII letter or digit turned into '_' ("gpus/nvidia" -> "gpus_nvidia").
std::string env_name(std::string_view resource);

}  // namespace hq
