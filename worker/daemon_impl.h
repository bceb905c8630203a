#pragma once
// Private to worker/: the worker daemon's state (class Worker) and what its two halves share.
// daemon.cc holds its life and its connection (registration, reattach, messages, reports,
// heartbeats, the end); tasks.cc runs its tasks (the queue, the spawn and its environment,
// streams, the exits).

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/job_spec.h"
#include "common/resource_pool.h"
#include "common/resources.h"
#include "net/connection.h"
#include "output-stream/stream.h"
#include "worker/daemon.h"
#include "worker/process.h"
#include "worker/reaper.h"
#include "worker/reports.h"

namespace hq::worker {

struct JobBody {
  TaskBodySpec body;
  // A pattern (resolve_stream_dir); empty: no stream (see JobDescriptionSpec::stream).
  std::string stream;
  // What each task needs: body.resources, or `body.cpus` whole CPUs when that is empty.
  ResourceRequest request;
  PoolRequest pool_request;  // `request` interned in the worker's ResourceNames
  // body.variants, each interned as pool_request (the first is `request` again); empty: none.
  std::vector<PoolRequest> variant_pools = {};

  // Variant `v` of the request (0 when the body has none).
  const ResourceRequest& request_of(uint8_t v) const {
    return v < body.variants.size() ? body.variants[v] : request;
  }
  const PoolRequest& pool_of(uint8_t v) const {
    return v < variant_pools.size() ? variant_pools[v] : pool_request;
  }
};

struct RunningTask {
  TaskKey key;
  pid_t pid = 0;
  int64_t start_time = 0;  // Unix ms
  uint8_t variant = 0;     // the resource variant it runs with (HQ_RESOURCE_VARIANT)
  Allocation allocation;   // given back to the pool when the task ends
  bool canceled = false;
  bool timed_out = false;  // killed by the job's --time-limit
  // HQ_NODE_FILE and HQ_HOST_FILE of a multi-node task, removed at its end.
  std::vector<std::string> node_files;
  std::shared_ptr<asio::steady_timer> time_limit;
  // The writer of the job's stream directory, when a channel of the task goes there.
  std::shared_ptr<stream::StreamWriter> stream;
  std::string stream_error;  // the first failed write of this task's records; fails the task
  // `--task-dir`: HQ_TASK_DIR, removed at the task's end; empty: none.
  std::string task_dir;
  // `:rm-if-finished` output files, removed when the task finishes.
  std::vector<std::string> remove_if_finished;
};

constexpr Millis kStreamFlushInterval{1000};
// A task's start is reported with the next batch that goes out, or after this long: the start of
// a short task then travels with its end, in one message instead of two (the server knows the
// task is on this worker already; only `hq task list` sees it running a little later).
constexpr Millis kStartReportDelay{20};
// A task's end is reported at once when this worker has no queued task left to start (the
// server must send more before a CPU idles), else with the next batch or after this long: the
// ends of short tasks then share a message, and the server a round of scheduling.
constexpr Millis kEndReportDelay{20};
// Ended tasks whose results a reattaching worker presents again: the server may have lost the
// last ones it was sent (unsynced when it crashed). Results older than these many ends are
// taken as recorded.
constexpr size_t kRecentEnds = 10'000;
// Reconnect attempts: the first this soon after the loss, doubling up to the maximum.
constexpr Millis kReconnectFirst{200};
constexpr Millis kReconnectMax{5000};

// A result the worker keeps for a reattach (wire::EndedClaim).
struct EndedTask {
  TaskKey key;
  int64_t start = 0, end = 0;
  bool finished = false;
  std::string error;
};

// Task files (tasks.cc).
std::string read_error_file(const std::string& path);
void remove_task_dir(const std::string& dir);
void remove_files(const std::vector<std::string>& paths);
Status write_lines(const std::string& path, const std::vector<std::string>& lines);

class Worker {
 public:
  // `reaper` must outlive the worker.
  Worker(asio::io_context& io, WorkerOptions options, TaskReaper& reaper)
      : io_(io),
        options_(std::move(options)),
        runner_(io, Millis(1000), &reaper),
        signals_(io, SIGINT, SIGTERM),
        heartbeat_timer_(io),
        idle_timer_(io),
        lifetime_timer_(io),
        reconnect_timer_(io),
        stream_flush_timer_(io),
        report_timer_(io) {}

  Status start();
  int exit_code() const { return exit_code_; }

  ~Worker();

 private:
  void on_connected(Result<net::Connected>& connected);
  void use_connection(std::shared_ptr<net::Connection> connection);
  void on_closed(const std::weak_ptr<net::Connection>& closed, const std::string& reason);
  void fill_registration(wire::WorkerRegistration::Builder reg);

  // The connection broke (--on-server-lost reconnect): tasks and their output capture go on;
  // queued tasks are dropped (the server gives them out again); reconnect until the timeout.
  void lose_server(const std::string& why);
  void schedule_reconnect();

  // Presents the old id and what the worker holds, once the streams of the tasks that ended
  // meanwhile are synced (their results count only then).
  void reattach(std::shared_ptr<net::Connection> connection);
  void remember_ends(const ReportBatch& batch);
  void on_message(net::Message& m);
  bool remove_queued(const TaskKey& key);
  void cancel(const TaskKey& key);
  void intern_variants(JobBody& job);

  // Starts queued tasks in queue order while their requests fit the free resources: the first
  // that does not fit stops the rest. The server promotes its queued tasks the same way.
  void start_queued();

  // --zero-work: the task starts and finishes now, giving its resources back at once.
  void end_at_once(const TaskKey& key, const Allocation& allocation);
  void fail_unstarted(const TaskKey& key, std::string error);

  // The units of `resource` in `allocation` (indexed resources only): the whole ones in unit
  // order, then the one shared with other tasks (a fraction), last, as HyperQueue orders them.
  std::vector<uint32_t> allocated_units(const Allocation& allocation, uint32_t resource) const;
  static bool job_sets(const JobBody& job, std::string_view name);

  // The variables that tell a task what it got, and how to bind to it, named and formed as
  // HyperQueue does (docs/hyperqueue.md lists what hq adds).
  void add_resource_env(const JobBody& job, uint8_t variant, const Allocation& allocation,
                        SpawnSpec& spec) const;

  // Runs `key` on the resources of `allocation`, which it owns from now on (given back to the
  // pool when it cannot start or when it ends).
  void start_task(const TaskKey& key, const JobBody& job, uint8_t variant, Allocation allocation);

  // The writer of stream directory `dir`, created at the first task that needs it: one file per
  // worker process and directory.
  Result<std::shared_ptr<stream::StreamWriter>> stream_writer(const std::string& dir);

  // Records the first failed write of `task`'s records. A failed writer stays failed: it is
  // dropped, so that the next task of its directory starts a new file.
  void check_stream(RunningTask& task, const Status& st);

  // Forgets a broken writer, so that the next task of its directory starts a new file.
  void drop_stream(const std::shared_ptr<stream::StreamWriter>& writer);
  void on_output(TaskRef ref, OutputChannel channel, std::span<const uint8_t> bytes);

  // Output of running tasks reaches the files within kStreamFlushInterval (not only at their
  // end), so that `hq output cat --allow-unfinished` shows it and a killed worker loses little.
  void schedule_stream_flush();
  void on_time_limit(TaskRef ref);
  void on_exit(TaskRef ref, ExitStatus status);

  // The server is gone: queued tasks are dropped, running ones end, then the worker stops.
  void drain(const std::string& reason);

  // How long until the worker's time limit stops it (zero when it has none left).
  Millis remaining() const;

  // Events of one loop iteration go out as one message.
  void flush_soon();

  // The batch goes out with the next flush, or after `delay` (sooner if an earlier call asked).
  void flush_later(Millis delay = kStartReportDelay);

  // Sends what the turn gathered, once the streams of the ended tasks are synced.
  void flush();
  void send(const ReportBatch& batch);
  void send_heartbeats();
  void update_idle();

  // Kills everything and closes the connection. A stop on purpose (`why`) is announced to the
  // server first, which then records a stop rather than a loss of this worker.
  void shutdown(const std::string& reason, int code,
                std::optional<wire::WorkerStopReason> why = std::nullopt);

  // Flushes, fsyncs and closes every stream file. Output arriving later is dropped.
  void close_streams();

  asio::io_context& io_;
  WorkerOptions options_;
  ProcessRunner runner_;
  asio::signal_set signals_;
  asio::steady_timer heartbeat_timer_;
  asio::steady_timer idle_timer_;
  asio::steady_timer lifetime_timer_;
  asio::steady_timer reconnect_timer_;
  std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point away_since_;  // of the current loss of the server
  Millis reconnect_delay_ = kReconnectFirst;
  uint32_t reconnects_ = 0;
  bool server_leaving_ = false;        // the server said it leaves without stopping this worker
  std::deque<EndedTask> recent_ends_;  // the last kRecentEnds results, oldest first
  bool draining_ = false;
  bool serving_ = false;  // a secondary node of a multi-node task
  std::string drain_reason_;
  asio::steady_timer stream_flush_timer_;
  asio::steady_timer report_timer_;
  std::shared_ptr<net::Connection> connection_;
  WorkerId worker_id_ = 0;
  std::string server_uid_;
  Millis heartbeat_{8000};
  std::unordered_map<JobId, JobBody> jobs_;
  // Tasks of jobs with per-task bodies, from their assignment until they end or go back.
  std::unordered_map<TaskRef, JobBody> task_bodies_;
  // HQ_ENTRY of queued tasks of jobs with entries, from their assignment until they start or go.
  std::unordered_map<TaskRef, std::string> task_entries_;
  // The resource variant of queued tasks the server gave one other than the first.
  std::unordered_map<TaskRef, uint8_t> task_variants_;
  std::deque<TaskKey> queue_;
  std::map<TaskKey, std::vector<std::string>> node_hosts_;  // of queued multi-node tasks
  std::unordered_map<TaskRef, RunningTask> running_;
  // By absolute directory. Running tasks share ownership, so a dropped (failed) writer lives
  // until its last task ends.
  std::unordered_map<std::string, std::shared_ptr<stream::StreamWriter>> stream_writers_;
  ResourceDescriptor descriptor_;  // what the worker offers, fixed at start
  ResourceNames names_;
  ResourcePool pool_;                             // what is free now
  std::vector<std::vector<std::string>> labels_;  // by resource id: unit labels, groups flattened
  uint32_t cpus_id_ = 0, nvidia_id_ = 0, amd_id_ = 0;
  Reports reports_;
  bool flush_pending_ = false;
  bool report_armed_ = false;                                // report_timer_ waits to flush
  std::chrono::steady_clock::time_point report_deadline_{};  // of report_timer_, when armed
  bool sent_since_heartbeat_ = false;
  bool idle_armed_ = false;
  bool stream_flush_armed_ = false;
  bool stopping_on_request_ = false;
  bool shut_down_ = false;
  bool owned_work_dir_ = false;  // made by start(): removed at the end
  int exit_code_ = 0;
};

}  // namespace hq::worker
