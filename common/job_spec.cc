#include "common/job_spec.h"

#include <algorithm>
#include <filesystem>

#include <fmt/format.h>

#include "common/placeholders.h"

namespace hq {

ResourceRequest task_request(const TaskBodySpec& body, uint32_t nodes) {
  ResourceRequest r;
  if (nodes > 1) {
    r.entries.push_back({std::string(kCpus), 0, AllocationPolicy::kAll});
  } else if (!body.resources.entries.empty()) {
    r = body.resources;
  } else {
    r.entries.push_back({std::string(kCpus), std::max<uint32_t>(body.cpus, 1) * kAmountUnit,
                         AllocationPolicy::kCompact});
  }
  return r;
}

namespace {

// Each variant as task_request() makes it, the first one the body's request; none when they
// all ask the same (a multi-node task: every CPU of each worker).
void normalize_variants(TaskBodySpec& body, uint32_t nodes) {
  if (body.variants.empty()) return;
  bool differ = false;
  for (ResourceRequest& v : body.variants) {
    TaskBodySpec one;
    one.resources = std::move(v);
    v = task_request(one, nodes);
    differ = differ || !(v == body.variants.front());
  }
  if (!differ || body.variants.size() < 2) {
    body.resources = body.variants.front();
    body.variants.clear();
  } else {
    body.resources = body.variants.front();
  }
  body.cpus = whole_cpus(body.resources);
}

}  // namespace

Status normalize_request(JobDescriptionSpec& job) {
  if (!job.tasks.empty()) {
    std::stable_sort(job.tasks.begin(), job.tasks.end(),
                     [](const GraphTaskSpec& a, const GraphTaskSpec& b) { return a.id < b.id; });
    IdSetBuilder ids;
    for (size_t i = 0; i < job.tasks.size(); ++i) {
      GraphTaskSpec& t = job.tasks[i];
      if (i > 0 && job.tasks[i - 1].id == t.id) {
        return Status::error(fmt::format("task {} is defined more than once", t.id));
      }
      ids.add(t.id);
      t.body.resources = task_request(t.body, t.own_params && t.nodes ? t.nodes : job.nodes);
      t.body.cpus = whole_cpus(t.body.resources);
      normalize_variants(t.body, t.own_params && t.nodes ? t.nodes : job.nodes);
    }
    job.task_ids = std::move(ids).build();
    job.body.resources = job.tasks[0].body.resources;
    job.body.time_request_ms = job.tasks[0].body.time_request_ms;
    job.body.variants = job.tasks[0].body.variants;
  }
  job.body.resources = task_request(job.body, job.nodes);
  job.body.cpus = whole_cpus(job.body.resources);
  normalize_variants(job.body, job.nodes);
  if (!job.entries.empty()) {
    if (job.entries.size() != job.task_ids.size()) {
      return Status::error(
          fmt::format("{} entries for {} tasks: a job with entries has one per task",
                      job.entries.size(), job.task_ids.size()));
    }
    // task_entry() counts a task's place in id order over the ranges as they are.
    const auto& ranges = job.task_ids.ranges();
    for (size_t i = 1; i < ranges.size(); ++i) {
      if (ranges[i].start <= ranges[i - 1].last()) {
        return Status::error("the task ids of a job with entries must be in increasing order");
      }
    }
  }
  return Status::ok();
}

const std::string* task_entry(const JobDescriptionSpec& job, uint32_t task) {
  if (job.entries.empty()) return nullptr;
  // TODO(perf): linear in the number of ranges; --each-line and --from-json make one range, an
  // --array selection as many as it lists.
  uint64_t before = 0;
  for (const IdRange& r : job.task_ids.ranges()) {
    if (task >= r.start && task <= r.last() && (task - r.start) % r.step == 0) {
      uint64_t index = before + (task - r.start) / r.step;
      return index < job.entries.size() ? &job.entries[index] : nullptr;
    }
    before += r.size();
  }
  return nullptr;
}

const TaskBodySpec& task_body(const JobDescriptionSpec& job, uint32_t task) {
  if (job.tasks.empty()) return job.body;
  auto it = std::lower_bound(job.tasks.begin(), job.tasks.end(), task,
                             [](const GraphTaskSpec& t, uint32_t id) { return t.id < id; });
  return it != job.tasks.end() && it->id == task ? it->body : job.body;
}

namespace {

// `path` against `base` unless it is absolute (or empty).
std::string resolve(const std::string& base, const std::string& path) {
  if (path.empty() || path[0] == '/') return path;
  return (std::filesystem::path(base) / path).string();
}

}  // namespace

TaskPaths task_paths(const TaskBodySpec& body, uint32_t job, uint32_t task, uint32_t instance,
                     const std::string& server_uid) {
  PlaceholderValues values;
  values.job_id = std::to_string(job);
  values.task_id = std::to_string(task);
  values.instance_id = std::to_string(instance);
  values.submit_dir = body.submit_dir;
  values.server_uid = server_uid;
  values.cwd = body.submit_dir;
  TaskPaths paths;
  paths.cwd = expand_placeholders(body.cwd, values);
  if (paths.cwd.empty()) paths.cwd = body.submit_dir;
  paths.cwd = resolve(body.submit_dir, paths.cwd);
  values.cwd = paths.cwd;
  paths.stdout_path = resolve(paths.cwd, expand_placeholders(body.stdout_path, values));
  paths.stderr_path = resolve(paths.cwd, expand_placeholders(body.stderr_path, values));
  return paths;
}

}  // namespace hq
