#include "common/resource_pool.h"

#include <algorithm>

#include <fmt/format.h>

namespace hq {

uint32_t ResourceNames::intern(std::string_view name) {
  auto it = ids_.find(std::string(name));
  if (it != ids_.end()) return it->second;
  uint32_t id = static_cast<uint32_t>(names_.size());
  names_.emplace_back(name);
  ids_.emplace(names_.back(), id);
  return id;
}

uint32_t ResourceNames::find(std::string_view name) const {
  auto it = ids_.find(std::string(name));
  return it == ids_.end() ? UINT32_MAX : it->second;
}

PoolRequest intern_request(const ResourceRequest& request, ResourceNames& names) {
  PoolRequest out;
  for (const auto& e : request.entries) out.push_back({names.intern(e.name), e.amount, e.policy});
  std::sort(out.begin(), out.end(),
            [](const auto& a, const auto& b) { return a.resource < b.resource; });
  return out;
}

ResourcePool::ResourcePool(const ResourceDescriptor& descriptor, ResourceNames& names) {
  for (const auto& def : descriptor.resources) {
    uint32_t id = names.intern(def.name);
    if (resources_.size() <= id) resources_.resize(id + 1);
    Resource& r = resources_[id];
    r.present = true;
    r.kind = def.kind;
    if (def.kind == ResourceKind::kSum) {
      r.total = r.sum_free = def.sum * kAmountUnit;
      continue;
    }
    for (const auto& g : def.groups) {
      std::vector<uint32_t> units;
      for (size_t i = 0; i < g.size(); ++i) {
        units.push_back(static_cast<uint32_t>(r.free.size()));
        r.group_of.push_back(static_cast<uint32_t>(r.groups.size()));
        r.free.push_back(kAmountUnit);
      }
      r.whole_free.push_back(static_cast<uint32_t>(units.size()));
      r.sizes_desc.push_back(static_cast<uint32_t>(units.size()));
      r.groups.push_back(std::move(units));
    }
    std::sort(r.sizes_desc.rbegin(), r.sizes_desc.rend());
    r.whole_free_total = static_cast<uint32_t>(r.free.size());
    r.total = r.sum_free = static_cast<ResourceAmount>(r.free.size()) * kAmountUnit;
  }
}

bool ResourcePool::choose_groups(const Resource& r, uint32_t n, AllocationPolicy policy,
                                 std::vector<std::pair<uint32_t, uint32_t>>& picks) const {
  picks.clear();
  if (n == 0) return true;
  if (r.whole_free_total < n) return false;
  const uint32_t g = static_cast<uint32_t>(r.groups.size());
  if (g == 1) {
    picks.emplace_back(0, n);
    return true;
  }
  order_.clear();
  for (uint32_t i = 0; i < g; ++i) {
    if (r.whole_free[i] > 0) order_.push_back(i);
  }
  // Most free first; lower group first among equals.
  std::sort(order_.begin(), order_.end(), [&r](uint32_t a, uint32_t b) {
    return r.whole_free[a] != r.whole_free[b] ? r.whole_free[a] > r.whole_free[b] : a < b;
  });
  if (policy == AllocationPolicy::kScatter) {
    std::vector<uint32_t> taken(order_.size(), 0);
    uint32_t left = n;
    while (left > 0) {
      for (size_t k = 0; k < order_.size() && left > 0; ++k) {
        if (taken[k] < r.whole_free[order_[k]]) ++taken[k], --left;
      }
    }
    for (size_t k = 0; k < order_.size(); ++k) {
      if (taken[k] > 0) picks.emplace_back(order_[k], taken[k]);
    }
    return true;
  }
  const bool tight = policy == AllocationPolicy::kTight || policy == AllocationPolicy::kForceTight;
  uint32_t left = n;
  for (size_t k = 0; k < order_.size() && left > 0; ++k) {
    size_t pick = k;
    if (tight && r.whole_free[order_[k]] >= left) {
      // The least free group that still covers the rest keeps bigger groups whole.
      while (pick + 1 < order_.size() && r.whole_free[order_[pick + 1]] >= left) ++pick;
      std::swap(order_[k], order_[pick]);
    }
    uint32_t take = std::min(left, r.whole_free[order_[k]]);
    picks.emplace_back(order_[k], take);
    left -= take;
  }
  if (policy == AllocationPolicy::kForceCompact || policy == AllocationPolicy::kForceTight) {
    uint32_t needed = 0, covered = 0;
    while (covered < n && needed < r.sizes_desc.size()) covered += r.sizes_desc[needed++];
    if (picks.size() > needed) return false;
  }
  return true;
}

bool ResourcePool::entry_fits(const Resource& r, const PoolEntry& e) const {
  if (r.kind == ResourceKind::kSum) {
    return e.policy == AllocationPolicy::kAll ? r.sum_free == r.total : e.amount <= r.sum_free;
  }
  if (e.policy == AllocationPolicy::kAll) return r.whole_free_total == r.free.size();
  if (e.amount > r.sum_free) return false;
  const uint32_t n = static_cast<uint32_t>(e.amount / kAmountUnit);
  const ResourceAmount share = e.amount % kAmountUnit;
  // The share comes from a unit already shared when one has room (it is not among the n whole
  // units), else from one more whole unit.
  const uint32_t whole_needed = share > 0 && !shared_unit_for(r, share) ? n + 1 : n;
  if (r.whole_free_total < whole_needed) return false;
  if (!is_forced(e.policy)) return true;  // the others spill over groups when they must
  return choose_groups(r, n, e.policy, picks_);
}

bool ResourcePool::shared_unit_for(const Resource& r, ResourceAmount share) const {
  for (ResourceAmount f : r.free) {
    if (f < kAmountUnit && f >= share) return true;
  }
  return false;
}

bool ResourcePool::fits(const PoolRequest& request) const {
  for (const PoolEntry& e : request) {
    const Resource* r = get(e.resource);
    if (!r || !entry_fits(*r, e)) return false;
  }
  return true;
}

bool ResourcePool::could_fit(const PoolRequest& request) const {
  for (const PoolEntry& e : request) {
    const Resource* r = get(e.resource);
    if (!r) return false;
    if (e.policy == AllocationPolicy::kAll) continue;
    // Whole units are counted in kAmountUnit: ceil(amount) units fit exactly when amount does.
    if (e.amount > r->total) {
      return false;
    }
  }
  return true;
}

void ResourcePool::take(Resource& r, uint32_t id, const PoolEntry& e, Allocation& out) {
  auto take_unit = [&](uint32_t u, ResourceAmount amount) {
    if (r.free[u] == kAmountUnit) {
      --r.whole_free[r.group_of[u]];
      --r.whole_free_total;
    }
    r.free[u] -= amount;
    r.sum_free -= amount;
    out.push_back({id, u, amount});
  };
  if (r.kind == ResourceKind::kSum) {
    ResourceAmount amount = e.policy == AllocationPolicy::kAll ? r.total : e.amount;
    r.sum_free -= amount;
    out.push_back({id, kSumUnit, amount});
    return;
  }
  if (e.policy == AllocationPolicy::kAll) {
    for (uint32_t u = 0; u < r.free.size(); ++u) take_unit(u, kAmountUnit);
    return;
  }
  // Whole units first, by the policy; then the share, from the fullest unit that still has room
  // (so that shared units fill up first), in a group the whole units came from when that ties.
  // entry_fits made sure such a unit is left.
  choose_groups(r, static_cast<uint32_t>(e.amount / kAmountUnit), e.policy, picks_);
  for (auto [group, count] : picks_) {
    for (uint32_t u : r.groups[group]) {
      if (count == 0) break;
      if (r.free[u] == kAmountUnit) {
        take_unit(u, kAmountUnit);
        --count;
      }
    }
  }
  const ResourceAmount share = e.amount % kAmountUnit;
  if (share == 0) return;
  auto picked = [&](uint32_t u) {
    for (auto [group, count] : picks_) {
      if (group == r.group_of[u]) return true;
    }
    return false;
  };
  uint32_t best = UINT32_MAX;
  for (uint32_t u = 0; u < r.free.size(); ++u) {
    if (r.free[u] < share) continue;
    if (best == UINT32_MAX || r.free[u] < r.free[best] ||
        (r.free[u] == r.free[best] && picked(u) && !picked(best))) {
      best = u;
    }
  }
  take_unit(best, share);
}

bool ResourcePool::allocate(const PoolRequest& request, Allocation& out) {
  out.clear();
  if (!fits(request)) return false;
  // One entry per unit taken (and one for a share or a sum): room for all of them at once.
  uint32_t entries = 0;
  for (const PoolEntry& e : request) {
    const Resource& r = resources_[e.resource];
    if (r.kind == ResourceKind::kSum) {
      entries += 1;
    } else if (e.policy == AllocationPolicy::kAll) {
      entries += static_cast<uint32_t>(r.free.size());
    } else {
      entries += static_cast<uint32_t>(e.amount / kAmountUnit) + (e.amount % kAmountUnit != 0);
    }
  }
  out.reserve(entries);
  for (const PoolEntry& e : request) take(resources_[e.resource], e.resource, e, out);
  return true;
}

void ResourcePool::release(const Allocation& allocation) {
  for (const AllocationEntry& a : allocation) {
    Resource& r = resources_[a.resource];
    r.sum_free += a.amount;
    if (a.unit == kSumUnit) continue;
    r.free[a.unit] += a.amount;
    if (r.free[a.unit] == kAmountUnit) {
      ++r.whole_free[r.group_of[a.unit]];
      ++r.whole_free_total;
    }
  }
}

std::string ResourcePool::why_not(const PoolRequest& request, const ResourceNames& names) const {
  for (const PoolEntry& e : request) {
    const std::string& name = names.name(e.resource);
    const Resource* r = get(e.resource);
    if (!r) return fmt::format("no resource '{}' on this worker", name);
    std::string need = e.policy == AllocationPolicy::kAll
                           ? fmt::format("needs all of {}", name)
                           : fmt::format("needs {} of {}", format_amount(e.amount), name);
    if (e.policy != AllocationPolicy::kAll && e.policy != AllocationPolicy::kCompact) {
      need += fmt::format(" ({})", to_string(e.policy));
    }
    if (!could_fit({e})) {
      return fmt::format("{}, has {}", need, format_amount(r->total));
    }
    if (!entry_fits(*r, e)) {
      if (e.policy == AllocationPolicy::kAll || e.amount <= r->sum_free) {
        return fmt::format("{}, {} free now but not in the required shape", need,
                           format_amount(r->sum_free));
      }
      return fmt::format("{}, {} free now", need, format_amount(r->sum_free));
    }
  }
  return {};
}

uint32_t ResourcePool::units(uint32_t resource) const {
  const Resource* r = get(resource);
  return r ? static_cast<uint32_t>(r->free.size()) : 0;
}
ResourceAmount ResourcePool::free_amount(uint32_t resource) const {
  const Resource* r = get(resource);
  return r ? r->sum_free : 0;
}
ResourceAmount ResourcePool::total_amount(uint32_t resource) const {
  const Resource* r = get(resource);
  return r ? r->total : 0;
}
ResourceAmount ResourcePool::unit_free(uint32_t resource, uint32_t unit) const {
  return resources_[resource].free[unit];
}
uint32_t ResourcePool::group_of(uint32_t resource, uint32_t unit) const {
  return resources_[resource].group_of[unit];
}
uint32_t ResourcePool::groups(uint32_t resource) const {
  const Resource* r = get(resource);
  return r ? static_cast<uint32_t>(r->groups.size()) : 0;
}

}  // namespace hq
