#include "common/job_spec.h"

#include <algorithm>
#include <filesystem>

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

void normalize_request(JobDescriptionSpec& job) {
  job.body.resources = task_request(job.body, job.nodes);
  job.body.cpus = whole_cpus(job.body.resources);
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
