// Jobs of several parts: heterogeneous tasks (their own request, priority, crash limit), open
// jobs that take tasks in several submits, dependencies across those submits, and their restore.
// The invariant checker runs after every step.

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

using Ids = std::vector<TaskId>;

IdSet ids(const std::string& text) {
  auto set = IdSet::parse(text);
  EXPECT_TRUE(set.is_ok()) << text;
  return *set;
}

PartSpec part(const std::string& task_ids, uint32_t cpus, int32_t priority = 0,
              uint32_t crash_limit = 0) {
  return PartSpec{ids(task_ids), cpus, priority, crash_limit, {}, 0, 0};
}

JobSpec open_spec(JobId id) {
  JobSpec spec;
  spec.id = id;
  spec.task_ids = {};
  spec.open = true;
  return spec;
}

// Tasks to add to job `id`: `task_ids`, one CPU each, with `deps`.
JobSpec more(JobId id, const std::string& task_ids, std::vector<TaskDeps> deps = {},
             uint32_t cpus = 1) {
  JobSpec spec;
  spec.id = id;
  spec.task_ids = ids(task_ids);
  spec.cpus = cpus;
  spec.deps = std::move(deps);
  return spec;
}

std::vector<TaskId> assigned(Scheduler& s, std::vector<Assignment>* out = nullptr) {
  std::vector<TaskId> tasks;
  for (const Assignment& a : s.schedule().assign) {
    tasks.push_back(a.key.task);
    if (out) out->push_back(a);
  }
  std::sort(tasks.begin(), tasks.end());
  s.check_invariants();
  return tasks;
}

void run(Scheduler& s, const Assignment& a, bool ok = true, int64_t time = 10) {
  ASSERT_TRUE(s.task_started(a.worker, a.key, time));
  s.check_invariants();
  if (ok) {
    ASSERT_TRUE(s.task_finished(a.worker, a.key, time + 1));
  } else {
    ASSERT_TRUE(s.task_failed(a.worker, a.key, time + 1, "exit code 1"));
  }
  s.check_invariants();
}

void run_all(Scheduler& s, std::vector<Assignment>& held) {
  for (const Assignment& a : held) run(s, a);
  held.clear();
}

TEST(SchedulerPartsTest, HeterogeneousTasksRunByTheirOwnRequestAndPriority) {
  Scheduler s(SchedulerConfig{0.0});
  JobSpec spec;
  spec.id = 1;
  // Ids interleave: odd ones take one CPU, even ones all four, and go first.
  spec.parts = {part("1,3,5", 1), part("2,4", 4, 5)};
  ASSERT_TRUE(s.add_job(spec).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.counts(1)[TaskState::kWaiting], 5u);
  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  ASSERT_TRUE(s.add_worker(2, 1).is_ok());
  std::vector<Assignment> held;
  // Worker 1 takes task 2 (priority 5, four CPUs); worker 2, too small for it, a small one.
  EXPECT_EQ(assigned(s, &held), (Ids{1, 2}));
  for (const Assignment& a : held) {
    EXPECT_EQ(a.worker, a.key.task == 2 ? 1u : 2u);
  }
  // Task 4 fits only worker 1: explained as such.
  std::vector<WorkerFit> fits = s.explain(1, 0, 4);
  ASSERT_EQ(fits.size(), 2u);
  EXPECT_FALSE(fits[1].could_fit);
  EXPECT_TRUE(s.explain(1, 0, 3)[1].could_fit);
  run_all(s, held);
  EXPECT_EQ(assigned(s, &held), (Ids{3, 4}));
  run_all(s, held);
  EXPECT_EQ(assigned(s, &held), (Ids{5}));
  run_all(s, held);
  EXPECT_EQ(s.job_state(1), JobState::kFinished);
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{1});
  // Listed in id order across parts.
  Ids order;
  s.for_each_task(1, [&order](const TaskView& v) { order.push_back(v.id); });
  EXPECT_EQ(order, (Ids{1, 2, 3, 4, 5}));
  order.clear();
  s.for_each_task_from(1, 3, [&order](const TaskView& v) {
    order.push_back(v.id);
    return order.size() < 2;
  });
  EXPECT_EQ(order, (Ids{3, 4}));
}

ResourceRequest cpus_request(uint32_t cpus) {
  return ResourceRequest{{{std::string(kCpus), cpus * kAmountUnit, AllocationPolicy::kCompact}}};
}

// A part whose tasks take `cpus[0]` CPUs, or else `cpus[1]`, ... (resource variants).
PartSpec variants_part(const std::string& task_ids, const std::vector<uint32_t>& cpus) {
  PartSpec p = part(task_ids, cpus[0]);
  for (uint32_t c : cpus) p.variants.push_back(cpus_request(c));
  p.resources = p.variants[0];
  return p;
}

TEST(SchedulerPartsTest, VariantsTakeTheFirstThatFitsTheWorker) {
  Scheduler s(SchedulerConfig{0.0});
  JobSpec spec;
  spec.id = 1;
  spec.parts = {variants_part("1-3", {4, 1})};
  ASSERT_TRUE(s.add_job(spec).is_ok());
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  s.check_invariants();
  // Four CPUs never fit this worker: the second variant does, twice.
  std::vector<Assignment> held;
  EXPECT_EQ(assigned(s, &held), (Ids{1, 2}));
  for (const Assignment& a : held) EXPECT_EQ(a.variant, 1u);
  // Task 3 waits for a CPU, and would fit with its second variant.
  std::vector<WorkerFit> fits = s.explain(1, 0, 3);
  ASSERT_EQ(fits.size(), 1u);
  EXPECT_TRUE(fits[0].could_fit);
  EXPECT_FALSE(fits[0].fits_now);
  EXPECT_NE(fits[0].reason.find("variant 0: "), std::string::npos) << fits[0].reason;
  EXPECT_NE(fits[0].reason.find("variant 1: "), std::string::npos) << fits[0].reason;
  // Ending one releases its one CPU: task 3 takes it.
  run(s, held[0]);
  std::vector<Assignment> next;
  EXPECT_EQ(assigned(s, &next), (Ids{3}));
  EXPECT_EQ(next[0].variant, 1u);
  run(s, held[1]);
  run(s, next[0]);
  EXPECT_EQ(s.job_state(1), JobState::kFinished);
  // Everything was given back: a two-CPU task fits the worker again.
  JobSpec two = more(2, "1", {}, 2);
  ASSERT_TRUE(s.add_job(two).is_ok());
  EXPECT_EQ(assigned(s, &next), (Ids{1}));
}

TEST(SchedulerPartsTest, VariantsPreferTheFirstAndFallBackWhenItIsShort) {
  Scheduler s(SchedulerConfig{0.0});
  JobSpec spec;
  spec.id = 1;
  spec.parts = {variants_part("1-2", {4, 1})};
  ASSERT_TRUE(s.add_job(spec).is_ok());
  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  std::vector<Assignment> held;
  // The first takes the whole worker with variant 0; the second does not wait for four CPUs
  // when one would do, but none is left.
  EXPECT_EQ(assigned(s, &held), (Ids{1}));
  EXPECT_EQ(held[0].variant, 0u);
  EXPECT_EQ(s.explain(1, 0, 2)[0].fits_now, false);
  run(s, held[0]);
  held.clear();
  EXPECT_EQ(assigned(s, &held), (Ids{2}));
  EXPECT_EQ(held[0].variant, 0u);
  run(s, held[0]);
  held.clear();
  // Three of the four CPUs busy: a task with variants takes the one left with its second.
  ASSERT_TRUE(s.add_job(more(2, "1", {}, 3)).is_ok());
  EXPECT_EQ(assigned(s, &held), (Ids{1}));
  JobSpec third;
  third.id = 3;
  third.parts = {variants_part("7", {4, 1})};
  ASSERT_TRUE(s.add_job(third).is_ok());
  std::vector<Assignment> small;
  EXPECT_EQ(assigned(s, &small), (Ids{7}));
  EXPECT_EQ(small[0].variant, 1u);
  // Both end: all four CPUs are free again (the one variant 1 took among them).
  ASSERT_TRUE(s.task_started(small[0].worker, small[0].key, 10));
  s.check_invariants();
  run(s, held[0]);
  ASSERT_TRUE(s.task_finished(small[0].worker, small[0].key, 20));
  s.check_invariants();
  JobSpec four = more(4, "1", {}, 4);
  ASSERT_TRUE(s.add_job(four).is_ok());
  EXPECT_EQ(assigned(s, &held), (Ids{1}));
}

TEST(SchedulerPartsTest, CrashLimitIsPerPartAndMaxFailsPerJob) {
  Scheduler s(SchedulerConfig{0.0});
  JobSpec spec;
  spec.id = 1;
  spec.max_fails = 1;
  spec.parts = {part("1", 1, 0, /*crash_limit=*/1), part("2", 1, 0, /*crash_limit=*/0),
                part("3-5", 2)};
  ASSERT_TRUE(s.add_job(spec).is_ok());
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  std::vector<Assignment> held;
  EXPECT_EQ(assigned(s, &held), (Ids{1, 2}));
  for (const Assignment& a : held) ASSERT_TRUE(s.task_started(1, a.key, 5));
  s.remove_worker(1, 6, /*lost=*/true);
  s.check_invariants();
  EXPECT_EQ(s.task(1, 1)->state, TaskState::kFailed);   // its limit of one crash
  EXPECT_EQ(s.task(1, 2)->state, TaskState::kWaiting);  // unlimited
  EXPECT_EQ(s.take_aborted_jobs(), std::vector<JobId>{});
  ASSERT_TRUE(s.add_worker(2, 2).is_ok());
  held.clear();
  EXPECT_EQ(assigned(s, &held), (Ids{2}));  // then the two-CPU tasks
  run(s, held[0], /*ok=*/false);
  // Two failures in two parts: more than max_fails 1 of the job.
  EXPECT_EQ(s.take_aborted_jobs(), std::vector<JobId>{1});
  EXPECT_EQ(s.counts(1)[TaskState::kAborted], 3u);
  EXPECT_EQ(s.job_state(1), JobState::kFailed);
}

TEST(SchedulerPartsTest, RefusesCollidingIdsAcrossParts) {
  Scheduler s;
  JobSpec spec;
  spec.id = 1;
  spec.parts = {part("1-9:2", 1), part("2-10:2", 2), part("5", 1)};
  Status st = s.add_job(spec);
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("task(s) 5"), std::string::npos) << st.message();
  EXPECT_FALSE(s.has_job(1));
  spec.parts.pop_back();
  ASSERT_TRUE(s.add_job(spec).is_ok());  // stepped ranges interleave
  s.check_invariants();
  EXPECT_EQ(s.task(1, 7)->id, 7u);
  EXPECT_FALSE(s.task(1, 11));
}

TEST(SchedulerPartsTest, OpenJobTakesTasksUntilClosed) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(open_spec(1)).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.job_state(1), JobState::kOpened);
  EXPECT_TRUE(s.job_open(1));
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{});  // nothing happened yet
  ASSERT_TRUE(s.add_tasks(more(1, "1-3")).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.job_state(1), JobState::kWaiting);
  ASSERT_TRUE(s.add_worker(1, 4).is_ok());
  std::vector<Assignment> held;
  EXPECT_EQ(assigned(s, &held), (Ids{1, 2, 3}));
  run_all(s, held);
  // Its current tasks are done: opened, and reported (for `wait --without-close`).
  EXPECT_EQ(s.job_state(1), JobState::kOpened);
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{1});
  // Ids must not collide with the earlier submit's.
  Status st = s.add_tasks(more(1, "3-5"));
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("already has task(s) 3"), std::string::npos) << st.message();
  s.check_invariants();
  EXPECT_EQ(s.counts(1).total(), 3u);
  // Another request in a later submit.
  ASSERT_TRUE(s.add_tasks(more(1, "4-5", {}, 2)).is_ok());
  s.check_invariants();
  EXPECT_EQ(assigned(s, &held), (Ids{4, 5}));
  ASSERT_TRUE(s.close_job(1));
  EXPECT_FALSE(s.close_job(1));
  s.check_invariants();
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{});
  run_all(s, held);
  EXPECT_EQ(s.job_state(1), JobState::kFinished);
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{1});
  st = s.add_tasks(more(1, "6"));
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("is not open"), std::string::npos) << st.message();
  st = s.add_tasks(more(7, "1"));
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("job 7 not found"), std::string::npos) << st.message();
  s.check_invariants();
}

TEST(SchedulerPartsTest, ClosingAnIdleOpenJobCompletesIt) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(open_spec(1)).is_ok());
  ASSERT_TRUE(s.close_job(1));
  s.check_invariants();
  EXPECT_EQ(s.job_state(1), JobState::kFinished);
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{1});
}

TEST(SchedulerPartsTest, CrossSubmitDependencies) {
  Scheduler s(SchedulerConfig{0.0});
  ASSERT_TRUE(s.add_job(open_spec(1)).is_ok());
  ASSERT_TRUE(s.add_tasks(more(1, "1-3")).is_ok());
  ASSERT_TRUE(s.add_worker(1, 1).is_ok());
  std::vector<Assignment> held;
  EXPECT_EQ(assigned(s, &held), (Ids{1}));
  run(s, held[0]);  // 1 finished
  held.clear();
  EXPECT_EQ(assigned(s, &held), (Ids{2}));
  run(s, held[0], /*ok=*/false);  // 2 failed
  held.clear();
  EXPECT_EQ(assigned(s, &held), (Ids{3}));
  ASSERT_TRUE(s.task_started(1, held[0].key, 20));  // 3 running
  // A dependency on an id the job does not have: refused, nothing added.
  Status st = s.add_tasks(more(1, "10-11", {{10, {1}}, {11, {9}}}));
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("task 11 depends on task 9, which the job does not have"),
            std::string::npos)
      << st.message();
  EXPECT_EQ(s.counts(1).total(), 3u);
  s.check_invariants();
  // 10 on finished 1: ready at once; 11 on failed 2: aborted at once, naming it; 12 on running
  // 3 waits; 13 on 11 (same submit) is aborted with 11's cause.
  ASSERT_TRUE(
      s.add_tasks(more(1, "10-13", {{10, {1}}, {11, {2}}, {12, {3}}, {13, {11, 10}}}), 30).is_ok());
  s.check_invariants();
  EXPECT_EQ(s.task(1, 11)->state, TaskState::kAborted);
  EXPECT_EQ(*s.task(1, 11)->aborted_by, (TaskRef{1, 2}));
  EXPECT_EQ(s.task(1, 11)->end_time, 30);
  EXPECT_EQ(*s.task(1, 13)->aborted_by, (TaskRef{1, 2}));
  EXPECT_EQ(s.unfinished_dependencies(1, 12), (Ids{3}));
  EXPECT_EQ(s.dependencies(1, 13), (Ids{10, 11}));
  ASSERT_TRUE(s.task_finished(1, held[0].key, 31));
  s.check_invariants();
  held.clear();
  EXPECT_EQ(assigned(s, &held), (Ids{10}));
  run(s, held[0]);
  held.clear();
  EXPECT_EQ(assigned(s, &held), (Ids{12}));
  run(s, held[0]);
  EXPECT_EQ(s.job_state(1), JobState::kOpened);
  ASSERT_TRUE(s.close_job(1));
  EXPECT_EQ(s.job_state(1), JobState::kFailed);
  s.check_invariants();
}

TEST(SchedulerPartsTest, CancelOfAnEarlierSubmitsTaskAbortsLaterDependants) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(open_spec(1)).is_ok());
  ASSERT_TRUE(s.add_tasks(more(1, "1")).is_ok());
  ASSERT_TRUE(s.add_tasks(more(1, "2", {{2, {1}}}, 2)).is_ok());
  s.check_invariants();
  s.cancel_tasks(1, IdSet::single(1), 5);
  s.check_invariants();
  EXPECT_EQ(s.task(1, 2)->state, TaskState::kAborted);
  EXPECT_EQ(*s.task(1, 2)->aborted_by, (TaskRef{1, 1}));
}

// A history replayed: the open job, two submits (the second onto the first's tasks),
// heterogeneous parts, ends, a task running at the crash.
void replay(Scheduler& s) {
  ASSERT_TRUE(s.add_job(open_spec(1)).is_ok());
  JobSpec first;
  first.id = 1;
  first.parts = {part("1,3", 1), part("2", 2, 3)};
  ASSERT_TRUE(s.add_tasks(first, 5).is_ok());
  ASSERT_TRUE(s.restore_started({1, 1, 0}, 1, 10));
  ASSERT_TRUE(s.restore_ended({1, 1, 0}, TaskState::kFinished, 11));
  ASSERT_TRUE(s.restore_started({1, 2, 0}, 1, 10));
  ASSERT_TRUE(s.restore_ended({1, 2, 0}, TaskState::kFailed, 12, "exit code 1"));
  ASSERT_TRUE(s.restore_started({1, 3, 0}, 1, 13));  // running at the crash
  ASSERT_TRUE(s.add_tasks(more(1, "4-6", {{4, {1}}, {5, {2}}, {6, {3, 4}}}), 14).is_ok());
}

TEST(SchedulerPartsTest, RestoreRebuildsPartsOpenStateAndCrossSubmitGraph) {
  Scheduler s;
  replay(s);
  s.finish_restore();
  s.check_invariants();
  EXPECT_TRUE(s.job_open(1));
  EXPECT_EQ(s.task(1, 1)->state, TaskState::kFinished);
  EXPECT_EQ(s.task(1, 3)->state, TaskState::kWaiting);
  EXPECT_EQ(s.task(1, 3)->instance, 1u);  // it may have run: a new instance
  EXPECT_EQ(s.task(1, 5)->state, TaskState::kAborted);
  EXPECT_EQ(*s.task(1, 5)->aborted_by, (TaskRef{1, 2}));
  EXPECT_EQ(s.unfinished_dependencies(1, 6), (Ids{3, 4}));
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{});
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  std::vector<Assignment> held;
  EXPECT_EQ(assigned(s, &held), (Ids{3, 4}));  // 1 never runs again
  run_all(s, held);
  EXPECT_EQ(assigned(s, &held), (Ids{6}));
  run_all(s, held);
  EXPECT_EQ(s.job_state(1), JobState::kOpened);
  ASSERT_TRUE(s.close_job(1));
  s.check_invariants();
  EXPECT_EQ(s.job_state(1), JobState::kFailed);
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{1});
}

TEST(SchedulerPartsTest, RestoreOfAClosedCompleteOpenJobReportsNothing) {
  Scheduler s;
  ASSERT_TRUE(s.add_job(open_spec(1)).is_ok());
  ASSERT_TRUE(s.add_tasks(more(1, "1")).is_ok());
  ASSERT_TRUE(s.restore_ended({1, 1, 0}, TaskState::kFinished, 11, {}, 1));
  ASSERT_TRUE(s.close_job(1));
  s.finish_restore();
  s.check_invariants();
  EXPECT_EQ(s.job_state(1), JobState::kFinished);
  EXPECT_EQ(s.take_completed_jobs(), std::vector<JobId>{});
}

}  // namespace
}  // namespace hq::sched
