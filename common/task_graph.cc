#include "common/task_graph.h"

#include <algorithm>
#include <unordered_map>

#include <fmt/format.h>

namespace hq {

std::optional<std::vector<TaskId>> find_cycle(const std::vector<TaskDeps>& tasks) {
  std::unordered_map<TaskId, uint32_t> index;
  index.reserve(tasks.size());
  for (uint32_t i = 0; i < tasks.size(); ++i) index.emplace(tasks[i].id, i);
  enum : uint8_t { kNew, kOnPath, kDone };
  std::vector<uint8_t> mark(tasks.size(), kNew);
  // An explicit depth-first walk: (task, next dependency to look at).
  std::vector<std::pair<uint32_t, size_t>> path;
  for (uint32_t root = 0; root < tasks.size(); ++root) {
    if (mark[root] != kNew) continue;
    path.push_back({root, 0});
    mark[root] = kOnPath;
    while (!path.empty()) {
      auto& [task, next] = path.back();
      if (next == tasks[task].deps.size()) {
        mark[task] = kDone;
        path.pop_back();
        continue;
      }
      auto it = index.find(tasks[task].deps[next++]);
      if (it == index.end()) continue;
      const uint32_t dep = it->second;
      if (mark[dep] == kOnPath) {
        std::vector<TaskId> cycle;
        auto start = std::find_if(path.begin(), path.end(),
                                  [dep](const auto& step) { return step.first == dep; });
        for (auto s = start; s != path.end(); ++s) cycle.push_back(tasks[s->first].id);
        cycle.push_back(tasks[dep].id);
        return cycle;
      }
      if (mark[dep] == kNew) {
        mark[dep] = kOnPath;
        path.push_back({dep, 0});
      }
    }
  }
  return std::nullopt;
}

Status check_task_graph(const std::vector<TaskDeps>& tasks) {
  std::unordered_map<TaskId, uint32_t> seen;
  seen.reserve(tasks.size());
  for (const TaskDeps& t : tasks) {
    if (!seen.emplace(t.id, 0).second) {
      return Status::error(fmt::format("task {} is defined more than once", t.id));
    }
  }
  for (const TaskDeps& t : tasks) {
    for (TaskId dep : t.deps) {
      if (dep == t.id) return Status::error(fmt::format("task {} depends on itself", t.id));
      if (!seen.contains(dep)) {
        return Status::error(
            fmt::format("task {} depends on task {}, which the job does not have", t.id, dep));
      }
    }
  }
  if (auto cycle = find_cycle(tasks)) {
    return Status::error(
        fmt::format("the dependencies form a cycle: {}", fmt::join(*cycle, " -> ")));
  }
  return Status::ok();
}

}  // namespace hq
