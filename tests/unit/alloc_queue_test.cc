// AllocationQueue: demand in, submissions and cancellations out, on a manual clock. Every step
// ends with the queue's invariant check.

#include <gtest/gtest.h>

#include "alloc/queue.h"

namespace hq::alloc {
namespace {

using namespace std::chrono_literals;

class QueueTest : public ::testing::Test {
 protected:
  void make(QueueLimits limits) { q = std::make_unique<AllocationQueue>(limits); }

  // plan() at the current time, checked.
  Decisions plan(uint32_t demand) {
    Decisions d = q->plan(demand, now);
    check();
    return d;
  }
  // Reports every submission of `d` as accepted, with ids "1", "2", ...; returns the ids.
  std::vector<std::string> accept(const Decisions& d) {
    std::vector<std::string> ids;
    for (uint32_t workers : d.submit) {
      ids.push_back(std::to_string(++next_id));
      q->on_submitted(ids.back(), workers, now);
      check();
    }
    return ids;
  }
  void status(std::map<std::string, AllocationStatus> s) {
    q->on_status(s, now);
    check();
  }
  void check() {
    Status st = q->check_invariants();
    ASSERT_TRUE(st) << st.message();
  }
  const Allocation& alloc(const std::string& id) { return q->allocations().at(id); }

  std::unique_ptr<AllocationQueue> q;
  int64_t now = 1'000'000;
  int next_id = 0;
};

const AllocationStatus kPending{AllocationState::kQueued, "PENDING (Priority)"};
const AllocationStatus kRunning{AllocationState::kRunning, "RUNNING"};
const AllocationStatus kCompleted{AllocationState::kFinished, "COMPLETED"};
const AllocationStatus kCanceled{AllocationState::kFinished, "CANCELLED"};
const AllocationStatus kFailed{AllocationState::kFailed, "FAILED (NonZeroExitCode)"};

std::vector<uint32_t> workers(std::initializer_list<uint32_t> l) { return l; }

TEST_F(QueueTest, SubmitsForDemandOnceAndCountsPendingWorkers) {
  make({});
  EXPECT_TRUE(plan(0).empty());
  Decisions d = plan(1);
  EXPECT_EQ(d.submit, workers({1}));
  // Not reported yet: nothing more, whatever the demand.
  EXPECT_TRUE(plan(5).empty());
  auto ids = accept(d);
  EXPECT_EQ(alloc(ids[0]).state, AllocationState::kQueued);
  EXPECT_EQ(q->pending_workers(), 1u);
  // The queued allocation covers a demand of one; the backlog (1) stops more.
  EXPECT_TRUE(plan(1).empty());
  EXPECT_TRUE(plan(3).empty());
}

TEST_F(QueueTest, BacklogLimitsQueuedAllocationsNotRunningOnes) {
  make({.backlog = 2});
  Decisions d = plan(5);
  EXPECT_EQ(d.submit, workers({1, 1}));
  auto ids = accept(d);
  EXPECT_TRUE(plan(5).empty());
  // One runs (its worker not connected yet, so still pending), one is queued: the backlog
  // has room for one more queued allocation.
  status({{ids[0], kRunning}, {ids[1], kPending}});
  EXPECT_EQ(alloc(ids[0]).state, AllocationState::kRunning);
  EXPECT_EQ(plan(5).submit, workers({1}));
  accept(Decisions{{1}, {}});
  EXPECT_EQ(q->pending_workers(), 3u);
  q->on_worker_connected(ids[0], now);
  check();
  EXPECT_EQ(q->pending_workers(), 2u);
  // Demand (beyond connected workers) now 4: two pending, backlog full with two queued.
  EXPECT_TRUE(plan(4).empty());
}

TEST_F(QueueTest, MaxWorkersPerAllocSplitsDemand) {
  make({.backlog = 3, .max_workers_per_alloc = 4});
  EXPECT_EQ(plan(10).submit, workers({4, 4, 2}));
}

TEST_F(QueueTest, FewerWorkersThanTheMaximumWhenDemandIsSmaller) {
  make({.backlog = 1, .max_workers_per_alloc = 4});
  EXPECT_EQ(plan(3).submit, workers({3}));
}

TEST_F(QueueTest, MaxWorkerCountCapsQueuedAndRunningWorkers) {
  make({.backlog = 5, .max_workers_per_alloc = 2, .max_worker_count = 3});
  Decisions d = plan(10);
  EXPECT_EQ(d.submit, workers({2, 1}));
  auto ids = accept(d);
  status({{ids[0], kRunning}, {ids[1], kRunning}});
  q->on_worker_connected(ids[0], now);
  q->on_worker_connected(ids[0], now);
  q->on_worker_connected(ids[1], now);
  check();
  EXPECT_EQ(q->active_workers(), 3u);
  EXPECT_TRUE(plan(10).empty());
  // One allocation ends: room for one worker again.
  status({{ids[0], kRunning}, {ids[1], kCompleted}});
  EXPECT_EQ(plan(10).submit, workers({1}));
}

TEST_F(QueueTest, FailedSubmissionsBackOffThenPauseWithTheError) {
  make({.max_submit_failures = 4, .retry_delay = 1s, .max_retry_delay = 3s});
  const std::string error = "sbatch failed (exit 1): sbatch: error: Invalid account";
  // The wait after each failure: 1s, 2s, then capped at 3s.
  for (int64_t delay : {1000, 2000, 3000}) {
    ASSERT_EQ(plan(1).submit, workers({1}));
    q->on_submit_failed(1, error, now);
    check();
    EXPECT_FALSE(q->paused());
    now += delay - 1;
    EXPECT_TRUE(plan(1).empty()) << "still waiting " << delay << "ms";
    now += 1;
  }
  ASSERT_EQ(plan(1).submit, workers({1}));
  q->on_submit_failed(1, error, now);
  check();
  ASSERT_TRUE(q->paused());
  EXPECT_EQ(q->pause_reason(), "4 submissions in a row failed; the last: " + error);
  now += 3'600'000;
  EXPECT_TRUE(plan(1).empty()) << "a paused queue submits nothing";
  q->resume();
  check();
  EXPECT_EQ(plan(1).submit, workers({1}));
}

TEST_F(QueueTest, ASuccessfulSubmissionResetsTheFailureCount) {
  make({.max_submit_failures = 2, .retry_delay = 1s});
  plan(1);
  q->on_submit_failed(1, "boom", now);
  now += 1000;
  accept(plan(1));
  EXPECT_FALSE(q->paused());
  now += 1000;
  status({{"1", kCompleted}});
  // "1" ended before a worker connected: a failure of another kind, counted apart.
  plan(1);
  q->on_submit_failed(1, "boom", now);
  check();
  EXPECT_FALSE(q->paused());
}

TEST_F(QueueTest, AllocationsThatNeverBringAWorkerPauseTheQueue) {
  make({.backlog = 1, .max_allocation_failures = 3});
  for (int i = 0; i < 3; ++i) {
    auto ids = accept(plan(1));
    ASSERT_EQ(ids.size(), 1u) << "round " << i;
    now += 1000;
    status({{ids[0], kRunning}});
    now += 1000;
    status({{ids[0], kFailed}});
    EXPECT_EQ(alloc(ids[0]).state, AllocationState::kFailed);
  }
  ASSERT_TRUE(q->paused());
  EXPECT_EQ(q->pause_reason(),
            "3 allocations in a row ended before any worker connected; the last, 3: FAILED "
            "(NonZeroExitCode)");
  EXPECT_TRUE(plan(1).empty());
}

TEST_F(QueueTest, AConnectedWorkerResetsTheAllocationFailureCount) {
  make({.backlog = 1, .max_allocation_failures = 2});
  auto a = accept(plan(1));
  status({{a[0], kFailed}});
  auto b = accept(plan(1));
  q->on_worker_connected(b[0], now);  // before squeue says it runs
  check();
  EXPECT_EQ(alloc(b[0]).state, AllocationState::kRunning);
  q->on_worker_lost(b[0]);
  status({{b[0], kCompleted}});
  auto c = accept(plan(1));
  status({{c[0], kFailed}});
  EXPECT_FALSE(q->paused()) << q->pause_reason();
  EXPECT_EQ(q->last_error(),
            "allocation 3 ended before any worker connected: FAILED "
            "(NonZeroExitCode)");
}

TEST_F(QueueTest, ForgottenAllocationsEnd) {
  make({.backlog = 2});
  auto ids = accept(plan(2));
  q->on_worker_connected(ids[0], now);
  q->on_worker_connected(ids[1], now);
  status({{ids[1], kRunning}});
  EXPECT_EQ(alloc(ids[0]).state, AllocationState::kFinished);
  EXPECT_EQ(alloc(ids[0]).detail, "no longer known to the batch system");
  EXPECT_EQ(q->ids_to_query(), std::vector<std::string>{ids[1]});
}

TEST_F(QueueTest, RemoveCancelsQueuedAndRunningAndIsNoFailure) {
  make({.backlog = 2, .max_allocation_failures = 1});
  auto ids = accept(plan(2));
  status({{ids[0], kRunning}, {ids[1], kPending}});
  Decisions d = q->remove();
  check();
  EXPECT_TRUE(d.submit.empty());
  EXPECT_EQ(d.cancel, ids);
  status({{ids[0], kCanceled}, {ids[1], kCanceled}});
  EXPECT_FALSE(q->paused()) << "allocations hq canceled did not fail";
  EXPECT_TRUE(plan(5).empty());
  EXPECT_TRUE(q->ids_to_query().empty());
}

TEST_F(QueueTest, QueuedAllocationsAreCanceledAfterALongSpellWithoutDemand) {
  make({.backlog = 2, .cancel_queued_after = 5min});
  auto ids = accept(plan(2));
  status({{ids[0], kRunning}, {ids[1], kPending}});
  EXPECT_TRUE(plan(0).empty());
  now += 4 * 60'000;
  EXPECT_TRUE(plan(0).empty());
  EXPECT_TRUE(plan(1).empty()) << "demand again: the clock starts over";
  now += 1000;
  EXPECT_TRUE(plan(0).empty());
  now += 5 * 60'000;
  Decisions d = plan(0);
  EXPECT_EQ(d.cancel, std::vector<std::string>{ids[1]}) << "only the queued one";
  EXPECT_TRUE(plan(0).empty()) << "asked once";
  EXPECT_EQ(q->pending_workers(), 1u);
}

TEST_F(QueueTest, NoCancellationWithoutTheOption) {
  make({});
  accept(plan(1));
  plan(0);
  now += 24LL * 3'600'000;
  EXPECT_TRUE(plan(0).empty());
}

TEST_F(QueueTest, RestoredAllocationsCountAsPendingUntilTheBatchSystemAnswers) {
  make({.backlog = 1});
  Allocation live;
  live.id = "41";
  live.workers = 2;
  live.state = AllocationState::kRunning;  // as before the restart: taken as queued again
  live.submitted_at = now - 5000;
  q->restore(live);
  Allocation done;
  done.id = "40";
  done.state = AllocationState::kFailed;
  done.submitted_at = now - 9000;
  done.ended_at = now - 6000;
  q->restore(done);
  check();
  EXPECT_EQ(alloc("41").state, AllocationState::kQueued);
  EXPECT_EQ(alloc("40").state, AllocationState::kFailed);
  // Only the live one is asked about; it covers a demand of two, and fills the backlog.
  EXPECT_EQ(q->ids_to_query(), std::vector<std::string>{"41"});
  EXPECT_EQ(q->pending_workers(), 2u);
  EXPECT_TRUE(plan(2).empty());
  EXPECT_TRUE(plan(5).empty());
  // Its workers reconnect; the batch system says it runs.
  q->on_worker_connected("41", now);
  status({{"41", kRunning}});
  EXPECT_EQ(alloc("41").state, AllocationState::kRunning);
  EXPECT_EQ(q->pending_workers(), 1u);
  // A history entry is no failure: nothing paused the queue.
  EXPECT_FALSE(q->paused());
}

}  // namespace
}  // namespace hq::alloc
