#include "common/job_spec.h"

#include <algorithm>

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

}  // namespace hq
