#include "common/resources.h"

#include <algorithm>
#include <cctype>
#include <limits>
#include <optional>
#include <set>

#include <fmt/format.h>

#include "common/numbers.h"

namespace hq {
namespace {

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::optional<uint64_t> parse_u64(std::string_view s) { return parse_unsigned(trim(s)); }

// "[a,b,c]" (one group) or "[[a,b],[c,d]]" (groups).
Result<std::vector<std::vector<std::string>>> parse_groups(std::string_view text,
                                                           std::string_view name) {
  auto bad = [&](std::string_view why) {
    return Error{fmt::format("invalid list '{}' for resource '{}': {}", text, name, why)};
  };
  std::string_view s = trim(text);
  if (s.size() < 2 || s.front() != '[' || s.back() != ']')
    return bad("expected [a,b] or [[a,b],[c,d]]");
  s = trim(s.substr(1, s.size() - 2));
  std::vector<std::vector<std::string>> groups;
  auto parse_flat = [&](std::string_view items) -> Status {
    std::vector<std::string> group;
    size_t pos = 0;
    while (pos <= items.size()) {
      size_t comma = items.find(',', pos);
      if (comma == std::string_view::npos) comma = items.size();
      std::string_view item = trim(items.substr(pos, comma - pos));
      if (item.empty()) return bad("empty item");
      if (item.find_first_of("[]") != std::string_view::npos) return bad("unbalanced brackets");
      group.emplace_back(item);
      pos = comma + 1;
    }
    groups.push_back(std::move(group));
    return Status::ok();
  };
  if (s.empty()) return bad("no units");
  if (s.front() != '[') {
    if (auto st = parse_flat(s); !st) return Error{st.message()};
  } else {
    while (!s.empty()) {
      if (s.front() != '[') return bad("expected '[' to start a group");
      size_t close = s.find(']');
      if (close == std::string_view::npos) return bad("unbalanced brackets");
      std::string_view inner = trim(s.substr(1, close - 1));
      if (inner.empty()) return bad("empty group");
      if (auto st = parse_flat(inner); !st) return Error{st.message()};
      s = trim(s.substr(close + 1));
      if (s.empty()) break;
      if (s.front() != ',') return bad("expected ',' between groups");
      s = trim(s.substr(1));
      if (s.empty()) return bad("trailing ','");
    }
  }
  std::set<std::string_view> seen;
  for (const auto& g : groups) {
    for (const auto& label : g) {
      if (!seen.insert(label).second) return bad(fmt::format("unit '{}' listed twice", label));
    }
  }
  return groups;
}

std::vector<std::string> numbered(uint64_t first, uint64_t count) {
  std::vector<std::string> labels;
  labels.reserve(count);
  for (uint64_t i = 0; i < count; ++i) labels.push_back(std::to_string(first + i));
  return labels;
}

constexpr uint64_t kMaxUnits = kMaxResourceUnits;

Result<ResourceDefinition> indexed(std::string name, std::vector<std::vector<std::string>> groups) {
  ResourceDefinition def;
  def.name = std::move(name);
  def.kind = ResourceKind::kIndexed;
  def.groups = std::move(groups);
  if (def.size() > kMaxUnits) {
    return Error{fmt::format("resource '{}' has {} units; at most {} are supported", def.name,
                             def.size(), kMaxUnits)};
  }
  return def;
}

}  // namespace

uint32_t ResourceDefinition::size() const {
  size_t n = 0;
  for (const auto& g : groups) n += g.size();
  return static_cast<uint32_t>(n);
}

const ResourceDefinition* ResourceDescriptor::find(std::string_view name) const {
  for (const auto& r : resources) {
    if (r.name == name) return &r;
  }
  return nullptr;
}

uint32_t ResourceDescriptor::cpus() const {
  const ResourceDefinition* r = find(kCpus);
  return r ? r->size() : 0;
}

void ResourceDescriptor::set(ResourceDefinition def) {
  for (auto& r : resources) {
    if (r.name == def.name) {
      r = std::move(def);
      return;
    }
  }
  resources.push_back(std::move(def));
}

Status check_resource_name(std::string_view name) {
  if (name.empty()) return Status::error("a resource needs a name (NAME=VALUE)");
  if (name.size() > 64) return Status::error(fmt::format("resource name '{}' is too long", name));
  for (char c : name) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_' && c != '-' && c != '.' &&
        c != '/') {
      return Status::error(fmt::format(
          "invalid resource name '{}': use letters, digits, '_', '-', '.' and '/'", name));
    }
  }
  return Status::ok();
}

Result<ResourceDefinition> parse_cpu_definition(std::string_view text) {
  std::string_view s = trim(text);
  if (!s.empty() && s.front() == '[') {
    auto groups = parse_groups(s, kCpus);
    if (!groups) return groups.error();
    for (const auto& g : *groups) {
      for (const auto& label : g) {
        auto n = parse_u64(label);
        if (!n)
          return Error{fmt::format("invalid CPU '{}' in '{}': CPUs are numbered", label, text)};
        if (*n >= kMaxResourceUnits) {
          return Error{fmt::format("invalid CPU '{}' in '{}': numbers go up to {}", label, text,
                                   kMaxResourceUnits - 1)};
        }
      }
    }
    return indexed(std::string(kCpus), std::move(*groups));
  }
  if (s.starts_with("sum(")) {
    return Error{"resource 'cpus' cannot be a sum: give a count (8), groups (2x4) or a list"};
  }
  size_t x = s.find('x');
  std::optional<uint64_t> groups = x == std::string_view::npos ? 1 : parse_u64(s.substr(0, x));
  std::optional<uint64_t> per = parse_u64(x == std::string_view::npos ? s : s.substr(x + 1));
  if (!groups || !per) {
    return Error{fmt::format(
        "invalid CPU definition '{}': use a count (8), groups (2x4), a list ([0,1,2]) or "
        "groups of lists ([[0,1],[2,3]])",
        text)};
  }
  if (*groups == 0 || *per == 0) {
    return Error{fmt::format("invalid CPU definition '{}': a worker needs at least one CPU", text)};
  }
  if (*groups > kMaxUnits || *per > kMaxUnits || *groups * *per > kMaxUnits) {
    return Error{fmt::format("invalid CPU definition '{}': too many CPUs", text)};
  }
  std::vector<std::vector<std::string>> list;
  for (uint64_t g = 0; g < *groups; ++g) list.push_back(numbered(g * *per, *per));
  return indexed(std::string(kCpus), std::move(list));
}

Result<ResourceDefinition> parse_resource_definition(std::string_view text) {
  size_t eq = text.find('=');
  if (eq == std::string_view::npos) {
    return Error{fmt::format("invalid resource '{}': expected NAME=VALUE", text)};
  }
  std::string name(trim(text.substr(0, eq)));
  if (auto st = check_resource_name(name); !st) return Error{st.message()};
  std::string_view value = trim(text.substr(eq + 1));
  if (name == kCpus) return parse_cpu_definition(value);
  if (value.starts_with("sum(") && value.ends_with(")")) {
    auto n = parse_u64(value.substr(4, value.size() - 5));
    if (!n) return Error{fmt::format("invalid amount in '{}': expected sum(N)", text)};
    if (*n == 0) return Error{fmt::format("resource '{}' has a zero amount", name)};
    if (*n > kMaxSumUnits) {
      return Error{fmt::format("resource '{}' is too large", name)};
    }
    ResourceDefinition def;
    def.name = name;
    def.kind = ResourceKind::kSum;
    def.sum = *n;
    return def;
  }
  if (value.starts_with("range(") && value.ends_with(")")) {
    std::string_view inner = value.substr(6, value.size() - 7);
    size_t dash = inner.find('-');
    auto a = dash == std::string_view::npos ? std::nullopt : parse_u64(inner.substr(0, dash));
    auto b = dash == std::string_view::npos ? std::nullopt : parse_u64(inner.substr(dash + 1));
    if (!a || !b) return Error{fmt::format("invalid range in '{}': expected range(A-B)", text)};
    if (*b < *a) return Error{fmt::format("resource '{}' has an empty range", name)};
    if (*b - *a >= kMaxUnits) return Error{fmt::format("resource '{}' has too many units", name)};
    return indexed(name, {numbered(*a, *b - *a + 1)});
  }
  if (value.starts_with("[")) {
    auto groups = parse_groups(value, name);
    if (!groups) return groups.error();
    return indexed(name, std::move(*groups));
  }
  return Error{fmt::format(
      "invalid value '{}' for resource '{}': use [a,b,c], [[a,b],[c,d]], range(A-B) or sum(N)",
      value, name)};
}

Status add_definition(ResourceDescriptor& descriptor, ResourceDefinition def,
                      std::vector<std::string>& defined) {
  if (std::find(defined.begin(), defined.end(), def.name) != defined.end()) {
    return Status::error(fmt::format("resource '{}' defined more than once", def.name));
  }
  if (defined.size() >= kMaxWorkerResources) {
    return Status::error(fmt::format("more than {} resources", kMaxWorkerResources));
  }
  if (def.kind == ResourceKind::kIndexed && def.size() > kMaxResourceUnits) {
    return Status::error(
        fmt::format("resource '{}' has more than {} units", def.name, kMaxResourceUnits));
  }
  if (def.kind == ResourceKind::kSum && (def.sum == 0 || def.sum > kMaxSumUnits)) {
    return Status::error(fmt::format("resource '{}' has a bad amount {}", def.name, def.sum));
  }
  defined.push_back(def.name);
  descriptor.set(std::move(def));
  return Status::ok();
}

namespace {

// Memory (counted in MiB) in binary units, as people read it: "512 MiB", "8.84 GiB".
std::string mib_text(uint64_t mib) {
  if (mib < 1024) return fmt::format("{} MiB", mib);
  if (mib < 1024 * 1024) return fmt::format("{:.2f} GiB", static_cast<double>(mib) / 1024);
  return fmt::format("{:.2f} TiB", static_cast<double>(mib) / (1024 * 1024));
}

}  // namespace

std::string describe(const ResourceDefinition& def) {
  if (def.kind == ResourceKind::kSum && def.name == kMem) {
    return fmt::format("{} {}", def.name, mib_text(def.sum));
  }
  if (def.kind == ResourceKind::kSum) return fmt::format("{} {}", def.name, def.sum);
  bool equal = def.groups.size() > 1;
  for (const auto& g : def.groups) equal = equal && g.size() == def.groups.front().size();
  if (equal) return fmt::format("{} {}x{}", def.name, def.groups.size(), def.groups[0].size());
  return fmt::format("{} {}", def.name, def.size());
}

std::string describe(const ResourceDescriptor& descriptor) {
  std::string out;
  for (const auto& r : descriptor.resources) {
    if (!out.empty()) out += "; ";
    out += describe(r);
  }
  return out;
}

bool is_forced(AllocationPolicy p) {
  return p == AllocationPolicy::kForceCompact || p == AllocationPolicy::kForceTight;
}

const char* to_string(AllocationPolicy p) {
  switch (p) {
    case AllocationPolicy::kCompact:
      return "compact";
    case AllocationPolicy::kForceCompact:
      return "compact!";
    case AllocationPolicy::kTight:
      return "tight";
    case AllocationPolicy::kForceTight:
      return "tight!";
    case AllocationPolicy::kScatter:
      return "scatter";
    case AllocationPolicy::kAll:
      return "all";
  }
  return "?";
}

const ResourceRequestEntry* ResourceRequest::find(std::string_view name) const {
  for (const auto& e : entries) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

ResourceAmount ResourceRequest::cpus() const {
  const ResourceRequestEntry* e = find(kCpus);
  return e && e->policy != AllocationPolicy::kAll ? e->amount : 0;
}

uint32_t whole_cpus(const ResourceRequest& request) {
  return static_cast<uint32_t>((request.cpus() + kAmountUnit - 1) / kAmountUnit);
}

Result<ResourceRequestEntry> parse_request_entry(std::string_view name, std::string_view text) {
  ResourceRequestEntry e;
  e.name = std::string(name);
  if (auto st = check_resource_name(name); !st) return Error{st.message()};
  std::string_view s = trim(text);
  if (s == "all") {
    e.policy = AllocationPolicy::kAll;
    return e;
  }
  size_t space = s.find_first_of(" \t");
  std::string_view amount = s.substr(0, space);
  std::string_view policy = space == std::string_view::npos ? "" : trim(s.substr(space));
  auto bad = [&](std::string_view why) {
    return Error{fmt::format("invalid request '{}' for resource '{}': {}", text, name, why)};
  };
  // Fixed point with up to four decimals.
  size_t dot = amount.find('.');
  auto whole = parse_u64(amount.substr(0, dot));
  uint64_t frac = 0;
  if (dot != std::string_view::npos) {
    std::string digits(amount.substr(dot + 1));
    if (digits.empty() || digits.size() > 4) return bad("at most four decimal places");
    if (digits.find_first_not_of("0123456789") != std::string::npos) {
      return bad("expected a number, optionally followed by a policy");
    }
    auto f = parse_u64(digits);
    if (!f) return bad("expected a number, optionally followed by a policy");
    frac = *f;
    for (size_t i = digits.size(); i < 4; ++i) frac *= 10;
  }
  if (!whole) return bad("expected a number, optionally followed by a policy");
  if (*whole > 1'000'000'000) return bad("amount too large");
  e.amount = *whole * kAmountUnit + frac;
  if (e.amount == 0) return bad("the amount must be positive");
  if (policy.empty() || policy == "compact") {
    e.policy = AllocationPolicy::kCompact;
  } else if (policy == "compact!") {
    e.policy = AllocationPolicy::kForceCompact;
  } else if (policy == "tight") {
    e.policy = AllocationPolicy::kTight;
  } else if (policy == "tight!") {
    e.policy = AllocationPolicy::kForceTight;
  } else if (policy == "scatter") {
    e.policy = AllocationPolicy::kScatter;
  } else {
    return bad(fmt::format(
        "unknown policy '{}' (use compact, compact!, tight, tight!, scatter, or the amount all)",
        policy));
  }
  if (frac > 0 && is_forced(e.policy)) {
    return bad(fmt::format("{} takes whole amounts (use {} or compact)", to_string(e.policy),
                           format_amount(e.amount)));
  }
  return e;
}

Result<ResourceRequestEntry> parse_named_request(std::string_view text) {
  size_t eq = text.find('=');
  if (eq == std::string_view::npos) {
    return Error{fmt::format("invalid resource request '{}': expected NAME=AMOUNT", text)};
  }
  return parse_request_entry(trim(text.substr(0, eq)), text.substr(eq + 1));
}

Result<ResourceRequest> make_request(std::vector<ResourceRequestEntry> entries) {
  if (entries.size() > kMaxRequestEntries) {
    return Error{fmt::format("a task requests {} resources; at most {} are supported",
                             entries.size(), kMaxRequestEntries)};
  }
  for (const auto& e : entries) {
    if (auto st = check_resource_name(e.name); !st) return Error{st.message()};
    if (e.policy == AllocationPolicy::kAll) continue;
    if (e.amount == 0)
      return Error{fmt::format("resource '{}' is requested with a zero amount", e.name)};
    if (e.amount > kMaxRequestUnits * kAmountUnit) {
      return Error{fmt::format("resource '{}' is requested in too large an amount", e.name)};
    }
    if (e.amount % kAmountUnit != 0 && is_forced(e.policy)) {
      return Error{fmt::format("resource '{}': {} takes whole amounts, not {}", e.name,
                               to_string(e.policy), format_amount(e.amount))};
    }
  }
  ResourceRequest r;
  r.entries = std::move(entries);
  std::sort(r.entries.begin(), r.entries.end(),
            [](const auto& a, const auto& b) { return a.name < b.name; });
  for (size_t i = 1; i < r.entries.size(); ++i) {
    if (r.entries[i].name == r.entries[i - 1].name) {
      return Error{fmt::format("resource '{}' requested more than once", r.entries[i].name)};
    }
  }
  if (!r.find(kCpus)) {
    ResourceRequestEntry cpus{std::string(kCpus), kAmountUnit, AllocationPolicy::kCompact};
    r.entries.insert(std::lower_bound(r.entries.begin(), r.entries.end(), cpus,
                                      [](const auto& a, const auto& b) { return a.name < b.name; }),
                     cpus);
  }
  return r;
}

std::string format_amount(ResourceAmount amount) {
  uint64_t whole = amount / kAmountUnit, frac = amount % kAmountUnit;
  if (frac == 0) return std::to_string(whole);
  std::string digits = fmt::format("{:04}", frac);
  while (digits.back() == '0') digits.pop_back();
  return fmt::format("{}.{}", whole, digits);
}

std::string describe(const ResourceRequestEntry& e) {
  if (e.policy == AllocationPolicy::kAll) return "all";
  if (e.policy == AllocationPolicy::kCompact) return format_amount(e.amount);
  return format_amount(e.amount) + " " + to_string(e.policy);
}

std::string describe_with_policy(const ResourceRequestEntry& e) {
  if (e.policy == AllocationPolicy::kAll) return "all";
  return format_amount(e.amount) + " " + to_string(e.policy);
}

std::string describe(const ResourceRequest& request) {
  std::string out;
  for (const auto& e : request.entries) {
    if (!out.empty()) out += "; ";
    out += e.name + "=" + describe(e);
  }
  return out;
}

std::string env_name(std::string_view resource) {
  std::string out;
  for (char c : resource) {
    out += std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
  }
  return out;
}

}  // namespace hq
