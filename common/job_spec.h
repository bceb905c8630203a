#pragma once
// What a user submits, in plain C++ form. net/convert.h maps it to and from the wire schema.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/id_set.h"
#include "common/resources.h"
#include "common/result.h"

namespace hq {

// `hq submit --pin`: how a task is bound to the CPUs it got.
enum class PinMode : uint8_t { kNone, kTaskset, kOmp };

// What every task of a job runs. Paths may hold placeholders (common/placeholders.h).
struct TaskBodySpec {
  std::vector<std::string> program;  // argv
  std::vector<std::pair<std::string, std::string>> env;
  std::string cwd;
  // Empty: discard; or, when the job has a stream directory, send the channel into the stream
  // (a streamed job discards a channel with "/dev/null").
  std::string stdout_path;
  std::string stderr_path;
  std::string submit_dir;
  uint32_t cpus = 1;           // whole CPUs per task when `resources` is empty; 0 for `--cpus all`
  uint64_t time_limit_ms = 0;  // a task running longer is killed ("Time limit reached"); 0: none
  // What each task needs, sorted by name with "cpus" among them (make_request); empty: `cpus`.
  ResourceRequest resources;
  // Alternatives (a job file's several `[[task.request]]`): empty, or two or more requests in
  // file order, the first equal to `resources`. The scheduler may run a task with any of them
  // and tells it which (HQ_RESOURCE_VARIANT, the index here). All share the time request.
  std::vector<ResourceRequest> variants;
  PinMode pin = PinMode::kNone;
  // `--time-request`: only a worker that lives this long after the start runs the task; 0: any.
  uint64_t time_request_ms = 0;
  // `--stdin`: given to every task on its standard input (the same bytes each time); empty:
  // /dev/null.
  std::string stdin_data;
  // `--task-dir`: each task instance gets a fresh directory (HQ_TASK_DIR), removed when it ends.
  bool task_dir = false;
  // `:rm-if-finished`: the output file is removed when the task finishes (kept when it fails).
  bool stdout_rm_if_finished = false;
  bool stderr_rm_if_finished = false;

  bool operator==(const TaskBodySpec&) const = default;
};

// Default of `--crash-limit`: how many lost workers a task may outlive.
inline constexpr uint32_t kDefaultCrashLimit = 5;
inline constexpr int64_t kNoMaxFails = -1;

// One task of a job with its own body (a job file's `[[task]]`): what it runs and which tasks of
// the job must finish before it starts.
struct GraphTaskSpec {
  uint32_t id = 0;
  TaskBodySpec body;
  std::vector<uint32_t> deps;  // task ids of the same job (of earlier submits too, open jobs)
  // The task's own scheduling parameters (a job file's `priority`, `crash_limit`, `n_nodes`);
  // when false, the job's are used.
  bool own_params = false;
  int32_t priority = 0;
  uint32_t crash_limit = kDefaultCrashLimit;
  uint32_t nodes = 0;
};

struct JobDescriptionSpec {
  std::string name;
  IdSet task_ids;
  int32_t priority = 0;
  TaskBodySpec body;
  // Output stream directory (`hq submit --stream`, docs/stream-format.md): the channels whose
  // path is empty go there. Absolute, and may hold %{JOB_ID} and %{SERVER_UID}, which workers
  // resolve (resolve_stream_dir). Empty: no stream, per-task files.
  std::string stream;
  // A task whose worker is lost while running it for the crash_limit-th time fails instead of
  // running again; 0: unlimited (`--crash-limit unlimited`), 1: `never-restart`.
  uint32_t crash_limit = kDefaultCrashLimit;
  // More failed tasks than this abort the job's remaining tasks; kNoMaxFails: never.
  int64_t max_fails = kNoMaxFails;
  // More than 1: each task takes this many whole workers of one group (`--nodes`) and runs on
  // the first, told the others through HQ_NODE_FILE.
  uint32_t nodes = 0;
  // Empty: every task runs `body` (an array job). Otherwise one entry per task in increasing id
  // order, `task_ids` holding exactly their ids, and `body` unused for running: each task runs
  // its own, and waits for its `deps`. Tasks may differ in their requests and parameters: the
  // scheduler groups them into parts.
  std::vector<GraphTaskSpec> tasks;
  // `--each-line`, `--from-json`, a job file's `[array] entries`: HQ_ENTRY of each task, one per
  // id of `task_ids` in increasing id order; empty: the tasks have no entry.
  std::vector<std::string> entries;
  // The open job these tasks are added to (`hq submit --job`); 0: a new job.
  uint32_t job = 0;
  // A plain submit (no `tasks`) into an open job: every task depends on these earlier tasks.
  IdSet submit_deps;
  // Into an open job: `task_ids` (from 0) move to start past the job's highest id (ids the user
  // did not give).
  bool auto_ids = false;
};

// HQ_ENTRY of task `task` of the job, or nullptr when the job has no entries (or `task` is not
// one of its tasks).
const std::string* task_entry(const JobDescriptionSpec& job, uint32_t task);

// The body task `task` of the job runs: its own in a job with per-task bodies, else the job's.
// `task` must be one of the job's.
const TaskBodySpec& task_body(const JobDescriptionSpec& job, uint32_t task);

// What each task of the job needs: `body.resources`, or `body.cpus` whole CPUs (at least one)
// when it is empty; every CPU of a worker for a multi-node job (nodes > 1).
ResourceRequest task_request(const TaskBodySpec& body, uint32_t nodes = 0);
// Sets the body's request to task_request() (and `cpus` to match), so that every reader of the
// job (scheduler, workers, clients) sees one request. The server does it on submit and replay.
// A job with per-task bodies: each task's body too, the tasks are sorted by id, and `task_ids`
// and `body`'s request come from them (the first task's); fails when ids repeat.
[[nodiscard]] Status normalize_request(JobDescriptionSpec& job);

// Where one task instance runs and writes: its working directory (the body's cwd with
// placeholders expanded, relative to the submit directory) and its output files (relative to
// that directory; empty when discarded or streamed). The worker opens these; `hq task list`
// shows them.
struct TaskPaths {
  std::string cwd;
  std::string stdout_path;
  std::string stderr_path;
};
TaskPaths task_paths(const TaskBodySpec& body, uint32_t job, uint32_t task, uint32_t instance,
                     const std::string& server_uid);

}  // namespace hq
