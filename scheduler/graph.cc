#include "scheduler/graph.h"

#include <algorithm>

namespace hq::sched {

void DepGraph::fill(uint32_t n, std::vector<std::pair<uint32_t, uint32_t>>& edges) {
  std::sort(edges.begin(), edges.end());
  edges.erase(std::unique(edges.begin(), edges.end()), edges.end());
  dep_begin.assign(n + 1, 0);
  dependant_begin.assign(n + 1, 0);
  for (const auto& [task, dep] : edges) {
    ++dep_begin[task + 1];
    ++dependant_begin[dep + 1];
  }
  for (uint32_t i = 0; i < n; ++i) {
    dep_begin[i + 1] += dep_begin[i];
    dependant_begin[i + 1] += dependant_begin[i];
  }
  deps.resize(edges.size());
  dependants.resize(edges.size());
  std::vector<uint32_t> next(dependant_begin.begin(), dependant_begin.end() - 1);
  for (size_t k = 0; k < edges.size(); ++k) {
    const auto& [task, dep] = edges[k];
    deps[k] = dep;                   // sorted by task, then dependency: already in place
    dependants[next[dep]++] = task;  // tasks in increasing order for each dependency
  }
  pending.resize(n);
  for (uint32_t i = 0; i < n; ++i) pending[i] = dep_begin[i + 1] - dep_begin[i];
}

std::vector<uint32_t> DepGraph::find_cycle() const {
  const uint32_t n = size();
  enum : uint8_t { kNew, kOnPath, kDone };
  std::vector<uint8_t> mark(n, kNew);
  std::vector<std::pair<uint32_t, uint32_t>> path;  // (task, next dependency offset)
  for (uint32_t root = 0; root < n; ++root) {
    if (mark[root] != kNew) continue;
    path.push_back({root, dep_begin[root]});
    mark[root] = kOnPath;
    while (!path.empty()) {
      auto& [task, next] = path.back();
      if (next == dep_begin[task + 1]) {
        mark[task] = kDone;
        path.pop_back();
        continue;
      }
      const uint32_t dep = deps[next++];
      if (mark[dep] == kOnPath) {
        std::vector<uint32_t> cycle;
        auto start = std::find_if(path.begin(), path.end(),
                                  [dep](const auto& step) { return step.first == dep; });
        for (auto s = start; s != path.end(); ++s) cycle.push_back(s->first);
        cycle.push_back(dep);
        return cycle;
      }
      if (mark[dep] == kNew) {
        mark[dep] = kOnPath;
        path.push_back({dep, dep_begin[dep]});
      }
    }
  }
  return {};
}

}  // namespace hq::sched
