#pragma once
// The free resources of one worker, and the choice of concrete units for a request under its
// policy. Pure logic, shared by the scheduler (which models every worker) and the worker (which
// decides what each task gets). Both run the same choice; when their views drift apart (the
// worker starts its queued tasks before the server hears of it) a task only waits a little.

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/resources.h"
#include "common/small_vector.h"

namespace hq {

// Small dense ids for resource names, so that pools and requests index vectors, not maps.
class ResourceNames {
 public:
  uint32_t intern(std::string_view name);
  // UINT32_MAX when unknown.
  uint32_t find(std::string_view name) const;
  const std::string& name(uint32_t id) const { return names_[id]; }
  uint32_t size() const { return static_cast<uint32_t>(names_.size()); }

 private:
  std::vector<std::string> names_;
  std::unordered_map<std::string, uint32_t> ids_;
};

// A request with interned names: entries sorted by resource id, one per resource.
struct PoolEntry {
  uint32_t resource = 0;
  ResourceAmount amount = 0;
  AllocationPolicy policy = AllocationPolicy::kCompact;
};
using PoolRequest = std::vector<PoolEntry>;
PoolRequest intern_request(const ResourceRequest& request, ResourceNames& names);

// What a task got: `amount` of `unit` (an index into the resource's units, in descriptor order)
// for indexed resources; unit kSumUnit for sums.
struct AllocationEntry {
  uint32_t resource = 0;
  uint32_t unit = 0;
  ResourceAmount amount = 0;
};
inline constexpr uint32_t kSumUnit = UINT32_MAX;
// Inline for up to four entries (one per unit, or per sum resource): most tasks' allocations.
using Allocation = SmallVector<AllocationEntry, 4>;

class ResourcePool {
 public:
  ResourcePool() = default;
  ResourcePool(const ResourceDescriptor& descriptor, ResourceNames& names);

  // Whether the request could be allocated now, or on this worker with nothing running.
  bool fits(const PoolRequest& request) const;
  bool could_fit(const PoolRequest& request) const;
  // Allocates and appends to `out` (cleared first); false, changing nothing, when it does not fit.
  bool allocate(const PoolRequest& request, Allocation& out);
  void release(const Allocation& allocation);
  // Empty when the request fits now; else why not, naming the first resource that lacks
  // ("needs 4 of cpus, has 2", "needs 2 of gpus/nvidia, 1 free now").
  std::string why_not(const PoolRequest& request, const ResourceNames& names) const;

  // Units of an indexed resource, free amounts included; for tests, the checker and display.
  uint32_t units(uint32_t resource) const;
  ResourceAmount free_amount(uint32_t resource) const;   // over all units (or the sum)
  ResourceAmount total_amount(uint32_t resource) const;  // the same, with nothing allocated
  ResourceAmount unit_free(uint32_t resource, uint32_t unit) const;  // indexed resources
  uint32_t group_of(uint32_t resource, uint32_t unit) const;
  uint32_t groups(uint32_t resource) const;

 private:
  struct Resource {
    bool present = false;
    ResourceKind kind = ResourceKind::kIndexed;
    std::vector<ResourceAmount> free;           // per unit; kAmountUnit: wholly free
    std::vector<uint32_t> group_of;             // per unit
    std::vector<std::vector<uint32_t>> groups;  // units per group, increasing
    std::vector<uint32_t> whole_free;           // per group: wholly free units
    std::vector<uint32_t> sizes_desc;           // group sizes, largest first
    uint32_t whole_free_total = 0;
    ResourceAmount total = 0;  // kSum: the whole pool, in 1/kAmountUnit
    ResourceAmount sum_free = 0;
  };
  const Resource* get(uint32_t id) const {
    return id < resources_.size() && resources_[id].present ? &resources_[id] : nullptr;
  }
  // The groups to take `n` whole units from (with how many from each), or empty when they cannot
  // be found now under the policy.
  bool choose_groups(const Resource& r, uint32_t n, AllocationPolicy policy,
                     std::vector<std::pair<uint32_t, uint32_t>>& picks) const;
  bool entry_fits(const Resource& r, const PoolEntry& e) const;
  // Whether a unit already shared (partly free) has `share` free.
  bool shared_unit_for(const Resource& r, ResourceAmount share) const;
  void take(Resource& r, uint32_t id, const PoolEntry& e, Allocation& out);

  std::vector<Resource> resources_;                           // by resource id
  mutable std::vector<std::pair<uint32_t, uint32_t>> picks_;  // scratch
  mutable std::vector<uint32_t> order_;                       // scratch
};

}  // namespace hq
