// libFuzzer target for the resource parsers (worker --cpus/--resource, submit --cpus/--resource)
// and the allocator behind them: arbitrary text must parse or fail with a message, never crash;
// whatever parses must allocate and release without breaking the pool's accounts.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "common/resource_pool.h"
#include "common/resources.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  // Lines: the first defines the worker's CPUs, the next ones other resources or requests.
  std::vector<std::string_view> lines;
  while (!text.empty()) {
    size_t nl = text.find('\n');
    lines.push_back(text.substr(0, nl));
    text = nl == std::string_view::npos ? std::string_view() : text.substr(nl + 1);
  }
  if (lines.empty()) return 0;
  hq::ResourceDescriptor descriptor;
  std::vector<std::string> defined;
  auto cpus = hq::parse_cpu_definition(lines[0]);
  if (!cpus) return 0;
  if (cpus->size() > 4096) return 0;  // keeps each run fast
  (void)hq::add_definition(descriptor, std::move(*cpus), defined);
  std::vector<hq::ResourceRequestEntry> entries;
  for (size_t i = 1; i < lines.size(); ++i) {
    if (auto def = hq::parse_resource_definition(lines[i]); def && def->size() <= 4096) {
      (void)hq::describe(*def);
      (void)hq::add_definition(descriptor, std::move(*def), defined);
    } else if (auto entry = hq::parse_named_request(lines[i])) {
      entries.push_back(std::move(*entry));
    }
  }
  (void)hq::describe(descriptor);
  auto request = hq::make_request(std::move(entries));
  if (!request) return 0;
  (void)hq::describe(*request);
  hq::ResourceNames names;
  hq::ResourcePool pool(descriptor, names);
  hq::PoolRequest r = hq::intern_request(*request, names);
  std::vector<hq::Allocation> held;
  for (int i = 0; i < 64; ++i) {
    hq::Allocation a;
    if (!pool.allocate(r, a)) break;
    held.push_back(std::move(a));
  }
  (void)pool.why_not(r, names);
  for (const auto& a : held) pool.release(a);
  for (uint32_t id = 0; id < names.size(); ++id) {
    if (pool.free_amount(id) != pool.total_amount(id)) std::abort();  // a unit was lost
  }
  return 0;
}
