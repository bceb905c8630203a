#pragma once
// Dependencies between the tasks of one job: checks that the client (job files) and the server
// (submissions) both run, so that a graph with a cycle or a dangling dependency never gets in.

#include <optional>
#include <string>
#include <vector>

#include "common/ids.h"
#include "common/result.h"

namespace hq {

struct TaskDeps {
  TaskId id = 0;
  std::vector<TaskId> deps;  // tasks that must finish before this one starts
};

// A cycle among `tasks`, as the ids along it with the first repeated at the end ("1 -> 4 -> 1");
// nullopt when the graph is acyclic. Dependencies on ids not in `tasks` are ignored here.
// O(tasks + dependencies), no recursion (graphs may be millions deep).
std::optional<std::vector<TaskId>> find_cycle(const std::vector<TaskDeps>& tasks);

// Fails naming the first problem: a task listed twice, a dependency on itself, on an id that is
// not a task of the job, or a cycle (its tasks named).
Status check_task_graph(const std::vector<TaskDeps>& tasks);

}  // namespace hq
