#include "common/graph_columns.h"

#include <algorithm>

#include <fmt/format.h>

namespace hq {
namespace {

// Ends must not decrease, stay within `limit`, and there must be one per task.
Status check_ends(const std::vector<uint32_t>& ends, size_t tasks, size_t limit,
                  const char* column) {
  if (ends.size() != tasks) {
    return Status::error(
        fmt::format("graph column '{}' has {} entries for {} tasks", column, ends.size(), tasks));
  }
  uint32_t last = 0;
  for (uint32_t e : ends) {
    if (e < last || e > limit) {
      return Status::error(fmt::format("graph column '{}' has an offset out of order", column));
    }
    last = e;
  }
  if (last != limit) {
    return Status::error(fmt::format("graph column '{}' does not cover its data", column));
  }
  return {};
}

}  // namespace

GraphColumns pack_graph(const std::vector<GraphTaskSpec>& tasks) {
  GraphColumns out;
  out.ids.reserve(tasks.size());
  out.argv_end.reserve(tasks.size());
  out.dep_end.reserve(tasks.size());
  std::vector<uint32_t> body_of;
  body_of.reserve(tasks.size());
  // Files list many tasks with one body, so the last match is tried first; then a short search.
  constexpr size_t kSearched = 64;
  uint32_t last = 0;
  for (const GraphTaskSpec& t : tasks) {
    out.ids.push_back(t.id);
    TaskBodySpec key = t.body;  // compared without its program
    key.program.clear();
    for (const std::string& arg : t.body.program) {
      out.argv += arg;
      out.argv.push_back('\0');
    }
    out.argv_end.push_back(static_cast<uint32_t>(out.argv.size()));
    out.deps.insert(out.deps.end(), t.deps.begin(), t.deps.end());
    out.dep_end.push_back(static_cast<uint32_t>(out.deps.size()));
    if (t.own_params) out.params.push_back({t.id, t.priority, t.crash_limit, t.nodes});
    if (!out.bodies.empty() && out.bodies[last] == key) {
      body_of.push_back(last);
      continue;
    }
    size_t found = out.bodies.size();
    for (size_t b = 0; b < std::min(out.bodies.size(), kSearched); ++b) {
      if (out.bodies[b] == key) {
        found = b;
        break;
      }
    }
    if (found == out.bodies.size()) out.bodies.push_back(std::move(key));
    last = static_cast<uint32_t>(found);
    body_of.push_back(last);
  }
  if (out.bodies.size() > 1) out.body_of = std::move(body_of);
  return out;
}

Result<std::vector<GraphTaskSpec>> unpack_graph(GraphColumns columns) {
  const size_t n = columns.ids.size();
  if (auto st = check_ends(columns.argv_end, n, columns.argv.size(), "argv_end"); !st) {
    return Error{st.message()};
  }
  if (auto st = check_ends(columns.dep_end, n, columns.deps.size(), "dep_end"); !st) {
    return Error{st.message()};
  }
  if (n > 0 && columns.bodies.empty()) return Error{"graph column 'bodies' is empty"};
  if (!columns.body_of.empty() && columns.body_of.size() != n) {
    return Error{fmt::format("graph column 'body_of' has {} entries for {} tasks",
                             columns.body_of.size(), n)};
  }
  std::vector<GraphTaskSpec> tasks(n);
  uint32_t argv_begin = 0;
  uint32_t dep_begin = 0;
  for (size_t i = 0; i < n; ++i) {
    GraphTaskSpec& t = tasks[i];
    t.id = columns.ids[i];
    uint32_t b = columns.body_of.empty() ? 0 : columns.body_of[i];
    if (b >= columns.bodies.size()) {
      return Error{fmt::format("task {} names body {} of {}", t.id, b, columns.bodies.size())};
    }
    t.body = columns.bodies[b];
    const uint32_t argv_end = columns.argv_end[i];
    if (argv_end > argv_begin && columns.argv[argv_end - 1] != '\0') {
      return Error{fmt::format("task {}: its program does not end in a NUL", t.id)};
    }
    for (uint32_t p = argv_begin; p < argv_end;) {
      size_t nul = columns.argv.find('\0', p);
      t.body.program.emplace_back(columns.argv, p, nul - p);
      p = static_cast<uint32_t>(nul + 1);
    }
    argv_begin = argv_end;
    t.deps.assign(columns.deps.begin() + dep_begin, columns.deps.begin() + columns.dep_end[i]);
    dep_begin = columns.dep_end[i];
  }
  size_t task = 0;  // both in the order of `ids`
  for (const TaskParamsSpec& p : columns.params) {
    while (task < n && tasks[task].id != p.id) ++task;
    if (task == n) {
      return Error{
          fmt::format("graph column 'params' names task {} out of order or unknown", p.id)};
    }
    GraphTaskSpec& t = tasks[task++];
    t.own_params = true;
    t.priority = p.priority;
    t.crash_limit = p.crash_limit;
    t.nodes = p.nodes;
  }
  return tasks;
}

}  // namespace hq
