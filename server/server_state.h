#pragma once
// Private to server/: the daemon's state, owned by its one io_context thread.

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <unordered_set>
#include <vector>

#include <asio.hpp>

#include "common/job_spec.h"
#include "journal/journal.h"
#include "net/access.h"
#include "net/connection.h"
#include "net/convert.h"
#include "scheduler/scheduler.h"
#include "server/allocator.h"
#include "server/restore.h"
#include "server/server.h"

namespace hq::server {

// Bounds the memory one submission can claim (about 32 bytes per task).
inline constexpr uint64_t kMaxTasksPerJob = 100'000'000;
// A task list answer is sent in pages of at most this many tasks and about this many bytes,
// well below the peer's message size limit (net/framing.h).
inline constexpr size_t kTasksPerPage = 50'000;
inline constexpr size_t kPageBytes = 8u << 20;

struct WorkerRecord {
  WorkerId id = 0;
  std::string hostname;
  uint32_t cpus = 0;
  ResourceDescriptor resources;
  int64_t limit_time = 0;  // Unix ms when its time limit stops it; 0: none
  std::string group;
  std::string allocation;  // the batch job it runs in, as it reports it; empty: none
  uint32_t pid = 0;        // on its host
  std::string work_dir;
  std::string address;
  int64_t connect_time = 0;
  int64_t end_time = 0;
  std::string end_reason;  // empty while connected
  // How it ends, once known: set when the server gives up on it or stops it, or the worker
  // announces why it stops (FromWorker.stopping); whatever ends the connection unannounced is a
  // connection loss. The first decision stands.
  std::optional<wire::WorkerState> end_state;
  Millis heartbeat{0};  // how often it reports (its --heartbeat, or the server's default)
  std::optional<Millis> idle_timeout;  // its own --idle-timeout, or the server's
  std::string on_server_lost;          // its --on-server-lost policy
  std::shared_ptr<net::Connection> connection;
  std::unordered_set<JobId> known_jobs;  // jobs whose body this worker has
  asio::steady_timer::time_point last_seen;
  bool serving = false;         // told it serves a multi-node task (ToWorker.serving)
  uint32_t reattach_count = 0;  // times it reconnected, as it counts them
  int64_t reattach_time = 0;    // Unix ms of its last reattach; 0: none
};

// A client following the progress of jobs (`hq job progress`, `--progress`): told their summed
// task counts when they change, at most once per kWatchInterval, and a last time once all of
// them are complete (job_management.cc).
struct Watcher {
  std::weak_ptr<net::Connection> connection;
  std::vector<JobId> jobs;
  uint32_t last_counts[6] = {};  // what it was last told, by TaskState
  uint32_t last_complete = 0;
};

// A client waiting for jobs to complete.
struct Waiter {
  std::weak_ptr<net::Connection> connection;
  std::vector<JobId> jobs;
  size_t incomplete = 0;       // of `jobs`
  bool without_close = false;  // an open job counts as done when its current tasks are
};

class Server {
 public:
  Server(asio::io_context& io, ServerOptions options);
  ~Server();
  // Takes the directory lock, binds, writes the access file. Errors name the cause.
  Status start();
  // `stop_workers`: `hq server stop` tells every worker to stop; otherwise (SIGTERM, SIGINT)
  // they are told the server leaves, and follow their --on-server-lost policy.
  void stop(bool stop_workers = true);

 private:
  // server.cc
  void on_client(std::shared_ptr<net::Connection> connection);
  void on_worker(std::shared_ptr<net::Connection> connection);
  void on_worker_message(std::shared_ptr<net::Connection> connection, WorkerId* id,
                         net::Message& message);
  // `reason` is empty for an orderly close.
  void on_worker_lost(WorkerId id, const std::string& reason);
  void handle_worker_events(WorkerRecord& worker, wire::WorkerEvents::Reader events);
  // Validates a registration and fills `w` from it (all but the id); nothing is changed on
  // error, which names the peer's mistake.
  Status read_registration(wire::WorkerRegistration::Reader reg, net::Connection& connection,
                           WorkerRecord& w) const;
  // A task's end reported by worker `w` (live, or claimed at reattach): applied, and recorded
  // when it is a real end. Returns whether anything changed.
  bool apply_task_end(WorkerRecord& w, TaskKey key, int64_t time, bool finished,
                      const std::string& error);
  // reattach.cc: registration, and workers coming back after a restart.
  // A worker that is not reattaching: journaled, then added and answered once its id is durable.
  // Tells a worker its id and the server's settings, then which of its tasks to kill (claims
  // this server does not expect there).
  void send_registered(net::Connection& c, WorkerId wid, const WorkerRecord& w,
                       const std::vector<TaskKey>& stale);
  void register_new_worker(const std::shared_ptr<net::Connection>& connection, WorkerId wid,
                           wire::WorkerRegistration::Reader reg);
  // Whether a registration is a worker the server waits for (same server, id expected).
  bool expects_reattach(wire::WorkerRegistration::Reader reg) const;
  // Registers `w` under its old id, adopts its valid claims, records them, answers it, and
  // tells it to kill the stale ones.
  void reattach_worker(std::shared_ptr<net::Connection> connection, WorkerRecord w,
                       wire::WorkerRegistration::Reader reg);
  // Tells a worker registered anew (not reattached) to kill every task it claims.
  void kill_claims(WorkerRecord& w, wire::WorkerRegistration::Reader reg);
  // How many server restarts the task's current instance survived on its worker.
  uint32_t reattached_count(JobId job, const sched::TaskView& task) const;
  // Starts the grace after a restart (nothing to wait for: it ends at once).
  void start_reattach_grace();
  // The grace is over: unclaimed orphans wait again with instance + 1, missing workers are lost.
  void end_reattach_grace(const char* why);
  // Ends the event loop once stop() has closed every connection.
  void finish_stop_when_idle();
  void request_schedule();
  void run_schedule();
  void after_state_change();
  // Closes the connections of workers silent for more than missed_heartbeats of their own
  // heartbeats (HEARTBEAT_LOST), then checks again after the shortest heartbeat of any worker.
  void check_heartbeats();
  void arm_heartbeat_check(Millis period);
  void send_cancels(const std::vector<sched::Assignment>& held);
  // Sends in order with the messages held back until the journal synced what they depend on.
  void send_to_worker(WorkerRecord& w, capnp::MessageBuilder& message);

  // journaling.cc: the durability contract (DESIGN.md). Every state change is recorded when the
  // scheduler accepts it; what a client sees is sent only once the records behind it are synced.
  // Opens the journal and replays it into the scheduler (nothing to do with --no-journal).
  Status open_journal();
  // Appends the event (after the task batches pending before it) to the open group. Once the
  // journal failed, records are dropped (the failure was reported and submissions are refused).
  // Nothing waits for a record nobody has seen: the commit comes when a client's reply needs
  // it, or within kLazyCommit.
  void record(journal::EventMessage& event);
  // Task starts and ends wait in memory until the next record or commit, then go out as one
  // record per kind, job and worker: a few bytes per task, and one sync for many worker
  // messages. A task starts before it ends, so starts are written first; anything else (a
  // failure, a requeue) is a record of its own, which flushes what is pending first.
  enum class TaskRecord { kStarted, kFinished };
  void record_task(TaskRecord kind, WorkerId worker, TaskKey key, int64_t time);
  void flush_task_batches();
  void record_requeued(const std::vector<TaskKey>& tasks);
  // Before assignments of `job` go out: reserves (journals) tasks up to past its fresh cursor.
  void reserve_assigned(JobId job);
  bool all_durable() const;
  void arm_lazy_commit();
  void commit_now();
  void commit_journal();
  void on_commit(journal::Seq upto, const Status& status);
  // Posted by the journal when its writes start failing (error) and go through again (ok): while
  // they fail, changes are refused and replies showing unstored state too, but nothing recorded
  // is dropped, and what waits for the journal goes out once its records are written.
  void on_journal_health(const Status& health);
  // A record could not even be queued (or a commit was given up): the journal no longer holds
  // everything, so nothing more is recorded, shown unsynced, scheduled or sent to workers; a
  // restart is needed.
  void fail_journal(const std::string& error);
  // Runs `fn` once every record appended so far is synced (at once when none is pending), with
  // the error of a failed journal.
  void when_durable(std::function<void(const Status&)> fn);
  // Sends the reply once the state it shows is durable (or an error, if it never will be).
  void respond(net::Connection& c, capnp::MessageBuilder& reply);
  void handle_journal_prune(net::Connection& c);
  void handle_journal_flush(net::Connection& c);

  // client_api.cc
  void on_client_request(const std::shared_ptr<net::Connection>& connection, net::Message& message);
  void reply_error(net::Connection& connection, const std::string& error);
  std::vector<JobId> select_jobs(wire::JobSelector::Reader selector) const;
  void fill_job_summary(JobId id, wire::JobSummary::Builder out) const;
  void fill_worker_summary(const WorkerRecord& w, wire::WorkerSummary::Builder out) const;
  void handle_submit(net::Connection& c, wire::JobDescription::Reader description);
  void handle_job_list(net::Connection& c);
  void handle_job_info(net::Connection& c, wire::JobSelector::Reader selector);
  void handle_job_cancel(net::Connection& c, wire::JobSelector::Reader selector);
  void handle_job_wait(const std::shared_ptr<net::Connection>& c,
                       wire::JobSelector::Reader selector, bool without_close = false);
  // Whether the waiter is done waiting for the job.
  bool job_done_for(const Waiter& w, JobId id) const;

  // open_jobs.cc: `hq job open`, tasks added to an open job, `hq job close`.
  void handle_job_open(net::Connection& c, wire::JobDescription::Reader description);
  void handle_job_close(net::Connection& c, wire::JobSelector::Reader selector);
  // `job.job` names the open job; the description was checked as handle_submit checks a job.
  void handle_add_tasks(net::Connection& c, JobDescriptionSpec job);
  void handle_task_list(net::Connection& c, wire::TaskQuery::Reader query);
  void handle_task_explain(net::Connection& c, wire::TaskKey::Reader key);
  // job_management.cc: `hq task cancel`, `hq job forget`, `hq job progress`.
  void handle_task_cancel(net::Connection& c, wire::TaskCancelRequest::Reader request);
  void handle_job_forget(net::Connection& c, wire::JobForgetRequest::Reader request);
  void handle_job_watch(const std::shared_ptr<net::Connection>& c,
                        wire::JobSelector::Reader selector);
  // After a state change: the watchers hear of it within kWatchInterval (coalesced).
  void note_watchers();
  // Tells every watcher whose counts changed; the ones whose jobs are all complete get their
  // last message and are dropped. Returns whether any watcher is left.
  bool send_progress();
  // Tells a worker whether it serves a multi-node task as a secondary node (no idle timeout).
  void set_serving(WorkerRecord& w, bool serving);
  void handle_worker_list(net::Connection& c, const std::vector<WorkerId>& ids);
  void handle_worker_stop(net::Connection& c, wire::WorkerSelector::Reader selector);
  void handle_server_info(net::Connection& c);
  // alloc_api.cc: `hq alloc add|list|pause|resume|remove`.
  void handle_alloc_request(const std::shared_ptr<net::Connection>& connection,
                            wire::ClientRequest::Reader request);
  void reply_alloc_queues(net::Connection& c, const std::vector<uint32_t>& ids);
  // The same, once what the request journaled is durable.
  void reply_alloc_queues_durably(const std::shared_ptr<net::Connection>& connection,
                                  const std::vector<uint32_t>& ids);

 public:
  // What `hq server info` shows; also handed to ServerOptions::on_started.
  void fill_server_info(wire::ServerInfo::Builder info) const;

 private:
  void reply_job_summaries(net::Connection& c, const std::vector<JobId>& ids);
  // Answers the waiters whose last incomplete job is among `completed`: O(waiters of those jobs).
  void notify_waiters(const std::vector<JobId>& completed);

  asio::io_context& io_;
  ServerOptions options_;
  net::AccessRecord access_;
  int lock_fd_ = -1;
  int64_t start_time_ = 0;
  std::unique_ptr<net::Listener> client_listener_;
  std::unique_ptr<net::Listener> worker_listener_;
  asio::signal_set signals_;
  asio::steady_timer heartbeat_timer_;
  asio::steady_timer reattach_timer_;
  bool reattaching_ = false;              // in the grace after a restart
  std::set<WorkerId> reattach_expected_;  // connected before the restart, not back yet
  bool schedule_pending_ = false;
  bool stopping_ = false;
  bool leaving_ = false;  // stopping without stopping the workers (SIGTERM, SIGINT)

  std::unique_ptr<journal::Journal> journal_;
  fs::path journal_path_;
  Status journal_status_ = Status::ok();  // why the journal cannot store changes now
  bool journal_broken_ = false;           // for good: see fail_journal()
  journal::Seq appended_seq_ = 0;         // the last record appended
  journal::Seq committed_seq_ = 0;        // the last record handed to commit()
  journal::Seq durable_seq_ = 0;          // the last record known synced
  bool commit_posted_ = false;
  bool lazy_commit_armed_ = false;
  asio::steady_timer lazy_commit_timer_;
  struct PendingTask {
    TaskKey key;
    int64_t time;
    WorkerId worker;
  };
  std::vector<PendingTask> pending_tasks_[2];  // by TaskRecord
  // Messages to workers wait until the records they depend on are synced: the reservation of
  // the tasks they assign, the requeue of a task assigned again (journaling.cc).
  journal::Seq must_sync_seq_ = 0;
  uint32_t worker_sends_waiting_ = 0;
  std::unordered_map<JobId, uint32_t> reserved_;  // tasks reserved per job, this run
  // Submits into open jobs and closes journaled but not applied yet (open_jobs.cc).
  struct PendingOpenJob {
    std::vector<IdSet> ids;  // of the submits
    uint32_t submits = 0;
    bool closing = false;
  };
  std::unordered_map<JobId, PendingOpenJob> pending_open_;
  std::deque<std::pair<journal::Seq, std::function<void(const Status&)>>> durable_waiters_;
  uint32_t restored_jobs_ = 0;
  uint64_t restored_tasks_ = 0;
  uint32_t replay_ms_ = 0;

  // Jobs of short tasks queue deeper on workers (SchedulerConfig::short_task_queue_factor).
  sched::Scheduler scheduler_{sched::SchedulerConfig{1.0, 8.0}};
  std::unique_ptr<Allocator> allocator_;  // asks scheduler_ for demand
  std::map<JobId, JobRecord> jobs_;
  std::map<WorkerId, WorkerRecord> workers_;
  JobId last_job_id_ = 0;
  WorkerId last_worker_id_ = 0;
  std::unordered_map<uint64_t, Waiter> waiters_;
  std::unordered_map<JobId, std::vector<uint64_t>> waiters_by_job_;  // of its incomplete jobs
  uint64_t next_waiter_ = 1;
  std::vector<JobId> deferred_completions_;  // completed while the journal failed
  size_t waiters_swept_at_ = 64;  // sweep closed connections' waiters when there are this many
  std::set<std::shared_ptr<net::Connection>> clients_;
  // Jobs forgotten (`hq job forget`, or replayed) whose journal records `hq journal prune` has
  // not dropped yet.
  std::set<JobId> forgotten_;
  std::unordered_map<uint64_t, Watcher> watchers_;
  uint64_t next_watcher_ = 1;
  std::unique_ptr<asio::steady_timer> watch_timer_;  // made at the first watch
  bool watch_armed_ = false;
};

}  // namespace hq::server
