#pragma once
// Private to server/: the allocation queues of `hq alloc` driven by the server. Each queue's
// decisions come from alloc::AllocationQueue (pure logic); this module feeds it the demand of
// the scheduler, the workers that connect from its allocations, and the batch system's answers,
// and runs its submissions, status queries and cancellations.
//
// Thread: everything here belongs to the server's io_context thread, except the batch commands,
// which run one at a time on a thread of their own (they block for as long as sbatch or squeue
// take) and post their results back. One status query per queue per refresh (kRefresh), for all
// of its allocations at once.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <asio.hpp>

#include "alloc/batch_system.h"
#include "alloc/queue.h"
#include "common/ids.h"
#include "common/paths.h"
#include "journal/events.h"
#include "net/protocol.capnp.h"
#include "scheduler/scheduler.h"
#include "server/restore.h"

namespace hq::server {

class Allocator {
 public:
  // How often queues plan (cheap: no command unless they submit), and how often each queue asks
  // the batch system about its allocations.
  static constexpr Millis kTick{500};
  static constexpr Millis kRefresh{2000};

  using DemandFn = std::function<sched::AllocationDemand(const sched::WorkerShape&)>;
  // Journals one event: the callee fills it in.
  using RecordFn = std::function<void(const std::function<void(journal::schema::Event::Builder)>&)>;

  // `demand` asks the scheduler; it is called on the io thread at each tick. `record` journals
  // every change of a queue and of its allocations (allocQueue* and allocation* events).
  Allocator(asio::io_context& io, fs::path server_dir, DemandFn demand, RecordFn record);
  // Waits for the batch command running, if any (stop() should come first).
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // A new queue; its id, or why the parameters are wrong. Submits nothing yet: the next tick
  // plans.
  Result<uint32_t> add_queue(wire::AllocQueueParams::Reader params);
  // After a restart, before any add_queue: the queues the journal kept, with their allocations
  // (the live ones are queried at the first tick, not submitted again). A queue whose
  // parameters no longer make one is skipped, with a warning. Ids continue after `max_id`.
  void restore(const std::map<uint32_t, RestoredQueue>& queues, uint32_t max_id);
  Status pause(uint32_t queue);
  Status resume(uint32_t queue);
  // Cancels the queue's allocations and forgets it once scancel/qdel answered; `done` gets the
  // cancel's error, if any. Without `force` it refuses while workers of the queue are connected.
  void remove(uint32_t queue, bool force, std::function<void(const Status&)> done);
  bool has_queue(uint32_t queue) const { return queues_.contains(queue); }
  // Every queue (none given) or one.
  void fill(capnp::List<wire::AllocQueueSummary>::Builder out,
            const std::vector<uint32_t>& queues) const;
  std::vector<uint32_t> queue_ids() const;

  // A worker registered from batch job `allocation` (as it detected it; empty: none): when that
  // is one of the queues' allocations, it counts as connected there.
  void on_worker_connected(WorkerId worker, const std::string& allocation);
  void on_worker_lost(WorkerId worker);

  // The server stops: no more planning. With `cancel` (`hq server stop`), queued and running
  // allocations are canceled (the cancel finishes before the destructor returns); without (a
  // signal), they stay, for a restarted server to adopt.
  void stop(bool cancel);

 private:
  struct Queue {
    uint32_t id = 0;
    alloc::ManagerKind kind = alloc::ManagerKind::kSlurm;
    std::unique_ptr<capnp::MallocMessageBuilder> params;  // an AllocQueueParams
    std::unique_ptr<alloc::AllocationQueue> logic;
    // Used on the batch thread only; shared with the commands in flight.
    std::shared_ptr<alloc::BatchSystem> batch;
    sched::WorkerShape shape;
    uint32_t worker_cpus = 0;  // 0: not known before the workers start
    bool busy = false;         // a batch command runs for it
    bool removing = false;
    int64_t last_query = 0;
    uint32_t demand = 0;
    std::vector<std::string> unfit;
    uint32_t next_dir = 0;
    std::map<std::string, std::string> log_dirs;              // by allocation id
    std::map<std::string, std::vector<WorkerId>> worker_ids;  // by allocation id
    // What the journal has heard of its state.
    std::set<std::string> ended_journaled;
    bool paused_journaled = false;
  };

  Result<std::unique_ptr<Queue>> make_queue(wire::AllocQueueParams::Reader params);
  // Journals what changed in the queue's logic since the last call: allocations that ended, a
  // pause or resume.
  void journal_changes(Queue& q);
  wire::AllocQueueParams::Reader params_of(const Queue& q) const;
  void arm_tick();
  void tick();
  // Converts what the waiting tasks ask into workers of the queue.
  uint32_t demand_of(Queue& q);
  void submit(Queue& q, const std::vector<uint32_t>& workers);
  void query(Queue& q);
  void cancel(Queue& q, std::vector<std::string> ids, std::function<void(const Status&)> done);
  // Runs `work` on the batch thread, then `then` with its result on the io thread, unless this
  // Allocator is gone.
  template <typename T>
  void run_batch(std::function<T()> work, std::function<void(T&)> then);

  asio::io_context& io_;
  fs::path server_dir_;
  DemandFn demand_;
  RecordFn record_;
  asio::steady_timer timer_;
  bool stopped_ = false;
  std::map<uint32_t, std::unique_ptr<Queue>> queues_;
  uint32_t last_queue_id_ = 0;
  std::map<WorkerId, std::pair<uint32_t, std::string>> worker_alloc_;  // queue, allocation
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // handlers hold a weak_ptr to it
  alloc::ProcessRunner runner_;                            // the batch thread's only
  // Last: joined (in the destructor) before anything the batch commands use goes away.
  std::unique_ptr<asio::thread_pool> batch_thread_;
};

}  // namespace hq::server
