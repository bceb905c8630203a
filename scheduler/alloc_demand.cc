// Scheduler::allocation_demand: what the ready tasks ask of a worker an allocation would start.

#include <fmt/format.h>

#include "common/resource_pool.h"
#include "scheduler/impl.h"

namespace hq::sched {

AllocationDemand Scheduler::allocation_demand(const WorkerShape& shape) const {
  AllocationDemand out;
  // The pool interns names it has not seen into a copy, so the scheduler's table stays as is.
  ResourceNames names = impl_->names;
  std::optional<ResourcePool> pool;
  if (shape.resources) pool.emplace(*shape.resources, names);
  for (const Job* job : impl_->ready) {
    const uint64_t ready = job->ready();
    if (ready == 0) continue;
    const ResourceRequest& spec = impl_->request_specs[job->request];
    std::string why;
    if (shape.lifetime_ms != 0 && job->time_request_ms > shape.lifetime_ms) {
      why = fmt::format("its time request ({} s) is longer than the workers' time limit ({} s)",
                        job->time_request_ms / 1000, shape.lifetime_ms / 1000);
    } else if (job->nodes <= 1 && pool && !pool->could_fit(impl_->request_of(*job))) {
      why = pool->why_not(impl_->request_of(*job), names);
    } else if (!pool && !impl_->cpu_only[job->request]) {
      for (const ResourceRequestEntry& e : spec.entries) {
        if (e.name != kCpus) {
          why = fmt::format("needs {}, which the queue's workers do not declare (--resource)",
                            e.name);
          break;
        }
      }
    }
    if (!why.empty()) {
      out.unfit.push_back(fmt::format("job {}: {} ({} ready tasks)", job->id, why, ready));
      continue;
    }
    out.tasks += ready;
    const ResourceRequestEntry* cpus = spec.find(kCpus);
    if (job->nodes > 1) {
      out.whole_workers += ready * job->nodes;
    } else if (!cpus || cpus->policy == AllocationPolicy::kAll) {
      out.whole_workers += ready;
    } else {
      out.cpu_amount += ready * cpus->amount;
    }
  }
  return out;
}

}  // namespace hq::sched
