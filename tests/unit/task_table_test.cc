// The compact task records (scheduler/task_table.h): what a job's tasks cost while they wait,
// run and after they ended, and that every record reads back as it was written, through the
// packed form too. The scheduler's invariant checker also checks each chunk's form and counts.

#include "scheduler/task_table.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "scheduler/scheduler.h"

namespace hq::sched {
namespace {

constexpr uint32_t kChunk = TaskTable::kChunkSize;

TaskSlot ended_slot(std::mt19937& rng) {
  TaskSlot s;
  s.state = static_cast<TaskState>(2 + rng() % 4);
  s.end_time = 1'700'000'000'000 + static_cast<int64_t>(rng() % 100'000);
  switch (rng() % 4) {
    case 0:
      break;  // never started
    case 1:
      s.start_time = s.end_time + static_cast<int64_t>(rng() % 50);
      break;  // clock skew
    default:
      s.start_time = s.end_time - static_cast<int64_t>(rng() % 100'000);
  }
  if (rng() % 8 == 0) s.instance = rng() % 5;
  if (rng() % 16 == 0) s.crashes = static_cast<uint16_t>(rng() % 3);
  s.worker = rng() % 3 == 0 ? 0 : 1 + rng() % 1000;
  return s;
}

void expect_same(const TaskSlot& a, const TaskSlot& b, uint32_t i) {
  EXPECT_EQ(a.state, b.state) << i;
  EXPECT_EQ(a.start_time, b.start_time) << i;
  EXPECT_EQ(a.end_time, b.end_time) << i;
  EXPECT_EQ(a.worker, b.worker) << i;
  EXPECT_EQ(a.instance, b.instance) << i;
  EXPECT_EQ(a.crashes, b.crashes) << i;
  EXPECT_EQ(a.flags, b.flags) << i;
}

TEST(TaskTableTest, WaitingTasksCostNoBytePerTask) {
  TaskTable t(100'000'000);
  EXPECT_EQ(t.chunks(), (100'000'000 + kChunk - 1) / kChunk);
  EXPECT_EQ(t.chunk_end(t.chunks() - 1), 100'000'000u);
  EXPECT_LT(t.bytes(), 100'000'000u / 16);
  const size_t before = t.bytes();
  EXPECT_EQ(t.get(99'999'999).state, TaskState::kWaiting);
  EXPECT_EQ(t.bytes(), before);  // a read unpacks nothing
  EXPECT_EQ(t.check(), "");
}

TEST(TaskTableTest, EndedChunksPackAndReadBackEveryField) {
  const uint32_t n = 2 * kChunk + 77;  // two whole chunks and a short one
  TaskTable t(n);
  std::mt19937 rng(7);
  std::vector<TaskSlot> want(n);
  for (uint32_t i = 0; i < n; ++i) {
    want[i] = ended_slot(rng);
    if (i % 997 == 5) {  // absurd times a broken worker could report round-trip too
      want[i].start_time = i % 2 ? INT64_MIN + 1 : 1;
      want[i].end_time = i % 2 ? INT64_MAX : INT64_MIN;
      want[i].worker = UINT32_MAX;
    }
    TaskSlot& s = t.at(i);
    const bool last = t.note_state(i, s.state, want[i].state);
    s = want[i];
    EXPECT_EQ(last, i + 1 == t.chunk_end(i / kChunk)) << i;
  }
  const size_t dense = t.bytes();
  for (uint32_t c = 0; c < t.chunks(); ++c) EXPECT_TRUE(t.pack(c));
  EXPECT_LT(t.bytes(), dense / 2);
  EXPECT_EQ(t.check(), "");
  // Read in order, backwards, and at random: the decoding cache must not mix chunks.
  for (uint32_t i = 0; i < n; ++i) expect_same(t.get(i), want[i], i);
  for (uint32_t i = n; i-- > 0;) expect_same(t.get(i), want[i], i);
  for (int k = 0; k < 1000; ++k) {
    const uint32_t i = rng() % n;
    expect_same(t.get(i), want[i], i);
  }
  // A change unpacks one chunk only, and it packs again.
  const size_t packed = t.bytes();
  t.at(kChunk + 5).worker = 4242;
  want[kChunk + 5].worker = 4242;
  EXPECT_GT(t.bytes(), packed);
  expect_same(t.get(kChunk + 5), want[kChunk + 5], kChunk + 5);
  expect_same(t.get(3), want[3], 3);
  EXPECT_TRUE(t.pack(1));
  EXPECT_LE(t.bytes(), packed + 16);
  for (uint32_t i = 0; i < n; ++i) expect_same(t.get(i), want[i], i);
  EXPECT_EQ(t.check(), "");
}

TEST(TaskTableTest, AChunkWithAHeldOrUnendedTaskStaysDense) {
  TaskTable t(10);
  for (uint32_t i = 0; i < 10; ++i) {
    TaskSlot& s = t.at(i);
    t.note_state(i, s.state, TaskState::kFinished);
    s.state = TaskState::kFinished;
    s.start_time = 100 + i;
    s.end_time = 200 + i;
    s.worker = 1;
  }
  t.at(4).flags = kHeld;  // canceled, and its worker has not reported its end yet
  EXPECT_FALSE(t.pack(0));
  EXPECT_EQ(t.at(4).flags, kHeld);  // still dense: the reference is valid
  t.at(4).flags = 0;
  EXPECT_TRUE(t.pack(0));
  EXPECT_EQ(t.get(4).start_time, 104);
  // A task that comes back (a restore) is counted out of the ended ones.
  TaskSlot& s = t.at(2);
  EXPECT_FALSE(t.note_state(2, s.state, TaskState::kWaiting));
  s.state = TaskState::kWaiting;
  EXPECT_EQ(t.check(), "");
}

TEST(TaskTableTest, TasksEndedTogetherPackToOneRecord) {
  TaskTable t(kChunk);
  for (uint32_t i = 0; i < kChunk; ++i) {
    TaskSlot& s = t.at(i);
    t.note_state(i, s.state, TaskState::kCanceled);
    s.state = TaskState::kCanceled;
    s.end_time = 99;
  }
  EXPECT_TRUE(t.pack(0));
  EXPECT_NE(t.uniform(0), nullptr);
  EXPECT_EQ(t.get(kChunk - 1).state, TaskState::kCanceled);
  EXPECT_EQ(t.get(kChunk - 1).end_time, 99);
  EXPECT_EQ(t.check(), "");
}

// Through the scheduler: an array job that runs to its end on two workers, a few tasks failing,
// reads back the times and workers it was given, at a few bytes per task.
TEST(TaskTableTest, AFinishedArrayJobCostsAFewBytesPerTask) {
  const uint32_t n = 3 * kChunk + 1000;
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 64).is_ok());
  ASSERT_TRUE(s.add_worker(2, 64).is_ok());
  ASSERT_TRUE(s.add_job(JobSpec{1, IdSet::range(1, n), 1, 0}).is_ok());
  EXPECT_LT(s.task_record_bytes(1), n / 8);  // waiting: per chunk, not per task
  struct Seen {
    WorkerId worker;
    int64_t start, end;
    bool failed;
  };
  std::map<TaskId, Seen> seen;
  int64_t now = 1'700'000'000'000;
  uint32_t ended = 0;
  while (ended < n) {
    Decisions d = s.schedule(now);
    ASSERT_FALSE(d.assign.empty()) << ended;
    for (const Assignment& a : d.assign) {
      const int64_t start = ++now;
      ASSERT_TRUE(s.task_started(a.worker, a.key, start));
      const int64_t end = start + 1 + a.key.task % 5;
      const bool fail = a.key.task % 1009 == 0;
      if (fail) {
        ASSERT_TRUE(s.task_failed(a.worker, a.key, end, "exit code 1"));
      } else {
        ASSERT_TRUE(s.task_finished(a.worker, a.key, end));
      }
      seen[a.key.task] = {a.worker, start, end, fail};
      ++ended;
    }
  }
  s.schedule(now);  // the safe point where ended chunks are packed
  s.check_invariants();
  EXPECT_LE(s.task_record_bytes(1), 4u * n) << s.task_record_bytes(1) / double(n);
  ASSERT_EQ(seen.size(), n);
  for (const auto& [id, want] : seen) {
    std::optional<TaskView> v = s.task(1, id);
    ASSERT_TRUE(v.has_value()) << id;
    EXPECT_EQ(v->state, want.failed ? TaskState::kFailed : TaskState::kFinished) << id;
    EXPECT_EQ(v->worker, want.worker) << id;
    EXPECT_EQ(v->start_time, want.start) << id;
    EXPECT_EQ(v->end_time, want.end) << id;
    if (want.failed) {
      ASSERT_NE(v->error, nullptr);
      EXPECT_EQ(*v->error, "exit code 1");
    }
  }
  uint32_t listed = 0;
  s.for_each_task(1, [&](const TaskView& v) {
    EXPECT_EQ(v.end_time, seen.at(v.id).end);
    ++listed;
  });
  EXPECT_EQ(listed, n);
  EXPECT_EQ(s.job_state(1), JobState::kFailed);
}

// A huge job canceled before it ran: its tasks end together, without a record each.
TEST(TaskTableTest, CancelingAWaitingJobAllocatesNoRecordPerTask) {
  const uint32_t n = 5'000'000;
  Scheduler s;
  ASSERT_TRUE(s.add_worker(1, 2).is_ok());
  ASSERT_TRUE(s.add_job(JobSpec{1, IdSet::range(0, n - 1), 1, 0}).is_ok());
  Decisions d = s.schedule(10);
  ASSERT_EQ(d.assign.size(), 4u);  // 2 CPUs and a queue as deep
  ASSERT_TRUE(s.task_started(1, d.assign[0].key, 11));
  std::vector<Assignment> kills = s.cancel_job(1, 20);
  EXPECT_EQ(kills.size(), 4u);
  EXPECT_EQ(s.counts(1)[TaskState::kCanceled], n);
  EXPECT_LT(s.task_record_bytes(1), 2'000'000u);  // one dense chunk while its tasks are held
  for (const Assignment& k : kills) ASSERT_TRUE(s.task_failed(1, k.key, 21, "killed"));
  s.schedule(22);
  s.check_invariants();
  EXPECT_LT(s.task_record_bytes(1), n / 64);
  EXPECT_EQ(s.task(1, n - 1)->state, TaskState::kCanceled);
  EXPECT_EQ(s.task(1, n - 1)->end_time, 20);
  EXPECT_EQ(s.task(1, d.assign[0].key.task)->start_time, 11);
}

}  // namespace
}  // namespace hq::sched
