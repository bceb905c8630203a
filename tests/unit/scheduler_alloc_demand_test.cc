// Scheduler::allocation_demand: which ready tasks a worker of an allocation queue could run.

#include <gtest/gtest.h>

#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

JobSpec job(JobId id, const std::string& ids, uint32_t cpus = 1) {
  auto set = IdSet::parse(ids);
  EXPECT_TRUE(set.is_ok()) << ids;
  return JobSpec{id, *set, cpus, 0};
}

WorkerShape shape(const std::string& cpus, const std::vector<std::string>& resources = {}) {
  ResourceDescriptor d;
  d.set(*parse_cpu_definition(cpus));
  for (const std::string& r : resources) d.set(*parse_resource_definition(r));
  return WorkerShape{d, 0};
}

TEST(SchedulerAllocDemandTest, CountsReadyTasksThatFit) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(job(1, "1-10", 2)).is_ok());
  s.check_invariants();
  AllocationDemand d = s.allocation_demand(shape("4"));
  EXPECT_EQ(d.tasks, 10u);
  EXPECT_EQ(d.cpu_amount, 20 * kAmountUnit);
  EXPECT_EQ(d.whole_workers, 0u);
  EXPECT_TRUE(d.unfit.empty());
}

TEST(SchedulerAllocDemandTest, TasksWaitingOnDependenciesAreNoDemand) {
  Scheduler s;
  JobSpec spec = job(1, "1-3");
  spec.deps = {{2, {1}}, {3, {2}}};
  ASSERT_TRUE(s.add_job(spec).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.allocation_demand(shape("4")).tasks, 1u);  // only the head of the chain
}

TEST(SchedulerAllocDemandTest, HeldTasksAreNoDemand) {
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job(job(1, "1-10")).is_ok());
  EXPECT_FALSE(s.schedule().assign.empty());
  s.check_invariants();
  EXPECT_EQ(s.allocation_demand(shape("4")).tasks, s.waiting_tasks());
  EXPECT_LT(s.waiting_tasks(), 10u);
}

TEST(SchedulerAllocDemandTest, RequestsTheWorkerCouldNeverSatisfyAreExplained) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(job(1, "1-3", 8)).is_ok());
  JobSpec gpus = job(2, "1-2");
  gpus.resources.entries = {{"cpus", kAmountUnit}, {"gpus", 2 * kAmountUnit}};
  ASSERT_TRUE(s.add_job(gpus).is_ok());
  JobSpec long_one = job(3, "1");
  long_one.time_request_ms = 3'600'000;
  ASSERT_TRUE(s.add_job(long_one).is_ok());
  s.check_invariants();

  WorkerShape w = shape("4");
  w.lifetime_ms = 600'000;
  AllocationDemand d = s.allocation_demand(w);
  EXPECT_EQ(d.tasks, 0u);
  ASSERT_EQ(d.unfit.size(), 3u);
  EXPECT_NE(d.unfit[0].find("job 1: needs 8"), std::string::npos) << d.unfit[0];
  EXPECT_NE(d.unfit[1].find("job 2: no resource 'gpus'"), std::string::npos) << d.unfit[1];
  EXPECT_NE(d.unfit[2].find("time request (3600 s)"), std::string::npos) << d.unfit[2];

  // Workers that declare GPUs and live long enough take jobs 2 and 3; unknown workers take any
  // CPU count but no GPUs.
  EXPECT_EQ(s.allocation_demand(shape("4", {"gpus=[0,1]"})).tasks, 3u);
  AllocationDemand unknown = s.allocation_demand(WorkerShape{});
  EXPECT_EQ(unknown.tasks, 4u);  // jobs 1 and 3
  ASSERT_EQ(unknown.unfit.size(), 1u);
  EXPECT_NE(unknown.unfit[0].find("gpus"), std::string::npos) << unknown.unfit[0];
}

TEST(SchedulerAllocDemandTest, WholeWorkerTasks) {
  Scheduler s;
  JobSpec multi = job(1, "1-2");
  multi.nodes = 3;
  ASSERT_TRUE(s.add_job(multi).is_ok());
  s.check_invariants();
  AllocationDemand d = s.allocation_demand(shape("4"));
  EXPECT_EQ(d.tasks, 2u);
  EXPECT_EQ(d.whole_workers, 6u);
}

}  // namespace
}  // namespace hq::sched
