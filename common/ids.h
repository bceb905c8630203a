#pragma once
// Identities shared by every part. Job and worker ids are never reused, across restarts too.

#include <compare>
#include <cstdint>
#include <functional>

namespace hq {

using JobId = uint32_t;
using TaskId = uint32_t;      // within a job: the array index or the job-file id
using InstanceId = uint32_t;  // 0, then +1 at each restart of the task
using WorkerId = uint32_t;    // 0 is never a valid worker

// One task of one job.
struct TaskRef {
  JobId job = 0;
  TaskId task = 0;
  auto operator<=>(const TaskRef&) const = default;
};

// One run of one task.
struct TaskKey {
  JobId job = 0;
  TaskId task = 0;
  InstanceId instance = 0;
  TaskRef ref() const { return {job, task}; }
  auto operator<=>(const TaskKey&) const = default;
};

}  // namespace hq

template <>
struct std::hash<hq::TaskRef> {
  size_t operator()(const hq::TaskRef& r) const noexcept {
    return std::hash<uint64_t>()((uint64_t{r.job} << 32) | r.task);
  }
};
