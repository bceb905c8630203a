#pragma once
// The decisions of one allocation queue, as pure logic: demand and the batch system's answers
// in, submissions and cancellations out. It runs no command and reads no clock: every call takes
// the time (milliseconds of any monotonic clock), so tests drive it with a manual clock. The
// server (not wired yet) runs the decisions through a BatchSystem and reports back.
//
// Terms. An allocation's workers are its nodes, one worker each. A worker is *pending* while its
// allocation is queued, or running but that worker has not connected yet. *Demand* is the
// number of workers that the waiting tasks could use beyond the connected ones (the server
// computes it; tasks that only wait on dependencies, or that such a worker could never run, are
// not in it).

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "alloc/backend.h"
#include "common/result.h"
#include "common/time.h"

namespace hq::alloc {

struct QueueLimits {
  uint32_t backlog = 1;                // queued allocations at most
  uint32_t max_workers_per_alloc = 1;  // nodes per allocation at most
  std::optional<uint32_t> max_worker_count =
      std::nullopt;  // workers of queued + running allocations at most
  // Pausing: this many submissions failing in a row, or this many allocations in a row that
  // fail or end before any of their workers connected.
  uint32_t max_submit_failures = 10;
  uint32_t max_allocation_failures = 3;
  // After a failed submission none is tried for retry_delay, doubled at each further failure
  // up to max_retry_delay.
  Millis retry_delay{1000};
  Millis max_retry_delay{5 * 60 * 1000};
  // Queued allocations are canceled once there has been no demand for this long (none: never).
  std::optional<Millis> cancel_queued_after = std::nullopt;
};

struct Allocation {
  std::string id;
  uint32_t workers = 1;
  AllocationState state = AllocationState::kQueued;
  std::string detail;          // the batch system's last words about it
  uint32_t connected = 0;      // its workers connected now
  bool any_connected = false;  // ever
  int64_t submitted_at = 0;
  std::optional<int64_t> started_at, ended_at;
  bool cancel_requested = false;
};

struct Decisions {
  std::vector<uint32_t> submit;     // one allocation of that many workers each
  std::vector<std::string> cancel;  // allocation ids
  bool empty() const { return submit.empty() && cancel.empty(); }
};

class AllocationQueue {
 public:
  explicit AllocationQueue(QueueLimits limits) : limits_(limits) {}

  // What to do now, given `demand` (see above). Submissions come only when the queue is not
  // paused and not in a retry delay, within the backlog and the worker limits, and only once
  // every submission asked for before has been reported (on_submitted / on_submit_failed).
  Decisions plan(uint32_t demand, int64_t now);

  // Reports on the submissions that plan() asked for (or an allocation found again after a
  // restart, with its state as the batch system reports it).
  void on_submitted(const std::string& id, uint32_t workers, int64_t now);
  void on_submit_failed(uint32_t workers, const std::string& error, int64_t now);
  // The answer of one status query for ids_to_query(); an id absent from it is one the batch
  // system forgot: it ended.
  void on_status(const std::map<std::string, AllocationStatus>& status, int64_t now);
  // After a server restart: an allocation the journal knows. One whose `ended_at` is set is
  // history (state kFinished or kFailed); any other counts as queued until the next on_status,
  // with no worker connected yet (they reconnect through on_worker_connected).
  void restore(Allocation a);
  void on_worker_connected(const std::string& id, int64_t now);
  void on_worker_lost(const std::string& id);
  // The allocations whose state can still change: queued and running ones.
  std::vector<std::string> ids_to_query() const;

  void pause(std::string reason);
  // Also forgets the failure counts that paused it.
  void resume();
  bool paused() const { return pause_reason_.has_value(); }
  const std::string& pause_reason() const;
  // The last failed submission's error, or why the last failed allocation failed.
  const std::string& last_error() const { return last_error_; }
  // The queue goes away: cancels its queued and running allocations.
  Decisions remove();

  const std::map<std::string, Allocation>& allocations() const { return allocations_; }
  uint32_t pending_workers() const;
  uint32_t active_workers() const;  // of queued and running allocations
  const QueueLimits& limits() const { return limits_; }

  // The whole state's invariants; every unit test step checks them.
  Status check_invariants() const;

 private:
  void allocation_ended(Allocation& a, bool failed, int64_t now);

  QueueLimits limits_;
  std::map<std::string, Allocation> allocations_;
  std::optional<std::string> pause_reason_;
  uint32_t submit_failures_ = 0;      // in a row
  uint32_t allocation_failures_ = 0;  // in a row
  std::optional<int64_t> retry_at_;
  uint32_t in_flight_ = 0;  // submissions asked for and not reported yet
  uint32_t in_flight_workers_ = 0;
  std::optional<int64_t> no_demand_since_;
  std::string last_error_;
  bool removed_ = false;
};

}  // namespace hq::alloc
