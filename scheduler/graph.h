#pragma once
// Private to scheduler/: the dependencies between the tasks of one job, by dense task index.
// Only jobs with dependencies have one (Job::graph); an array job pays nothing for it.
//
// Memory: 12 bytes per task (two offsets and a counter) plus 8 bytes per dependency (the edge
// stored once each way), and a map entry per task aborted by a dependency.

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/ids.h"
#include "common/result.h"

namespace hq::sched {

struct DepGraph {
  // Builds the graph of `n` tasks from (task, dependency) index pairs, in any order; repeated
  // pairs count once. Fails on an index >= n, a task depending on itself, or a cycle (the
  // message names the task ids along it, mapped through `id_of`).
  template <typename IdOf>
  static Result<std::unique_ptr<DepGraph>> build(uint32_t n,
                                                 std::vector<std::pair<uint32_t, uint32_t>> edges,
                                                 const IdOf& id_of);

  uint32_t size() const { return static_cast<uint32_t>(pending.size()); }
  // The dependencies of task i: deps[dep_begin[i] .. dep_begin[i + 1]), increasing.
  std::vector<uint32_t> dep_begin;
  std::vector<uint32_t> deps;
  // The tasks depending on task i, the same way.
  std::vector<uint32_t> dependant_begin;
  std::vector<uint32_t> dependants;
  // Per task: how many of its dependencies have not finished. A waiting task is ready (may be
  // queued and handed to a worker) only at 0.
  std::vector<uint32_t> pending;
  // Tasks aborted because a dependency failed, was canceled or aborted: the id of the task whose
  // end caused it (the first that did not finish, not the nearest dependency).
  std::unordered_map<uint32_t, TaskId> aborted_by;
  uint64_t edges() const { return deps.size(); }

 private:
  // The cycle through the graph's dependencies as indices (first repeated at the end); empty
  // when it has none. O(tasks + dependencies), no recursion.
  std::vector<uint32_t> find_cycle() const;
  void fill(uint32_t n, std::vector<std::pair<uint32_t, uint32_t>>& edges);
};

template <typename IdOf>
Result<std::unique_ptr<DepGraph>> DepGraph::build(uint32_t n,
                                                  std::vector<std::pair<uint32_t, uint32_t>> edges,
                                                  const IdOf& id_of) {
  for (const auto& [task, dep] : edges) {
    if (task >= n || dep >= n) {
      return Error{"a dependency names a task index outside the job"};
    }
    if (task == dep) return Error{fmt::format("task {} depends on itself", id_of(task))};
  }
  auto graph = std::make_unique<DepGraph>();
  graph->fill(n, edges);
  std::vector<uint32_t> cycle = graph->find_cycle();
  if (!cycle.empty()) {
    std::string text;
    for (uint32_t i : cycle) {
      if (!text.empty()) text += " -> ";
      text += std::to_string(id_of(i));
    }
    return Error{"the dependencies form a cycle: " + text};
  }
  return graph;
}

}  // namespace hq::sched
