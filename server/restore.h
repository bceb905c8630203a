#pragma once
// Rebuilding the server's jobs and tasks from the journal: the one fold of journal events into a
// scheduler and job records. The server runs it at start; `hq journal report` runs it offline, so
// that the report shows what a restarted server would serve.

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/job_spec.h"
#include "common/result.h"
#include "journal/journal.h"
#include "net/protocol.capnp.h"
#include "scheduler/scheduler.h"

namespace hq::server {

struct JobRecord {
  // The job as submitted; of an open job, its name (and the first added submit's body, which
  // clients show for it).
  JobDescriptionSpec description;
  // An open job's submits, in order: each holds its tasks' bodies (open_jobs.cc).
  std::vector<JobDescriptionSpec> added;
  int64_t submit_time = 0;
  int64_t end_time = 0;  // set when the job completes
  // Tasks that survived server restarts on their workers: by task, the instance and how many
  // restarts it survived (`hq task info`). Entries of an older instance are stale.
  std::unordered_map<TaskId, std::pair<InstanceId, uint32_t>> reattached;
  // The description holding the task's body (an added submit of an open job, or `description`).
  const JobDescriptionSpec& holder(TaskId task) const;
  // Records a submit added to the open job.
  void add(JobDescriptionSpec submit);
  // An open job as one description for clients: every submit's ids, and each task with its own
  // body when there are at most `max_tasks` of them (else the first submit's body for all).
  JobDescriptionSpec merged(size_t max_tasks) const;
};

// An allocation queue as the journal left it (alloc events), for the allocator to take over.
struct RestoredAllocation {
  std::string id;  // the batch system's
  uint32_t workers = 1;
  std::string log_dir;
  int64_t submit_time = 0;
  // Ended, as journaled; otherwise it may still be queued or running in the batch system.
  std::optional<int64_t> end_time;
  bool failed = false;
  std::string detail;
};

struct RestoredQueue {
  uint32_t id = 0;
  std::string params;  // the allocQueueAdded record's bytes (AllocQueueParams)
  std::optional<std::string> pause_reason;
  std::vector<RestoredAllocation> allocations;  // in submission order
};

// Calls `fn` with the AllocQueueParams that `bytes` (an allocQueueAdded record's params) hold,
// or fails naming what is wrong with them.
Status with_queue_params(const std::string& bytes,
                         const std::function<void(wire::AllocQueueParams::Reader)>& fn);

// Applies journal events, in seq order, to `scheduler` (fresh: no workers) and `jobs`, which
// must outlive it. Owner thread of both.
// One more restart that the task's instance `key` survived on its worker.
void note_reattached(JobRecord& job, TaskKey key);

class Restore {
 public:
  Restore(sched::Scheduler& scheduler, std::map<JobId, JobRecord>& jobs)
      : scheduler_(scheduler), jobs_(jobs) {}

  void apply(journal::Seq seq, journal::schema::Event::Reader event);
  // Ends the restore: the scheduler's finish_restore(reattach) (with `reattach`, tasks that may
  // be running wait for their workers as orphans; without, they wait again with instance + 1),
  // then the forgotten jobs go (from the scheduler and the records), and incomplete jobs lose
  // the end time of their last ended task.
  void finish(bool reattach = false);
  // The workers that were connected when the last server stopped, and never journaled lost,
  // with the reconnect policy: those that may come back with tasks (reattach).
  const std::set<WorkerId>& connected_workers() const { return connected_; }
  // The jobs whose forget was replayed (their records are still in the journal, until a prune).
  const std::vector<JobId>& forgotten() const { return forgotten_; }

  // Ok, or why an acknowledged job could not be restored (the first one, named): a server must
  // then not start, since it would serve a smaller campaign than it acknowledged.
  const Status& status() const { return status_; }
  // The highest job id of the jobSubmitted events applied.
  JobId max_job_id() const { return max_job_id_; }
  // The allocation queues not removed, by id, and the highest queue id ever added.
  const std::map<uint32_t, RestoredQueue>& alloc_queues() const { return queues_; }
  uint32_t max_queue_id() const { return max_queue_id_; }

 private:
  void note_end(JobId job, int64_t time);
  // Notes the first acknowledged job that cannot be restored.
  void fail(journal::Seq seq, JobId id, const Status& why);

  sched::Scheduler& scheduler_;
  std::map<JobId, JobRecord>& jobs_;
  Status status_ = Status::ok();
  JobId max_job_id_ = 0;
  std::vector<JobId> forgotten_;
  std::set<WorkerId> connected_;
  std::map<uint32_t, RestoredQueue> queues_;
  uint32_t max_queue_id_ = 0;
};

}  // namespace hq::server
