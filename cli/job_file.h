#pragma once
// Job definition files (`hq job submit-file FILE.toml`): HyperQueue's TOML format, read into a
// description of each task. Nothing is submitted from a file with an error: parse_job_file
// checks everything first, and its errors name the file, the line and the key.

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/ids.h"
#include "common/job_spec.h"
#include "common/paths.h"
#include "common/resources.h"
#include "common/result.h"

namespace hq::cli {

// A task's output: a path (placeholders allowed), and whether it is removed when the task
// finishes (`mode = "rm-if-finished"`). Unset: the default path.
struct JobFileOutput {
  std::string path;
  bool remove_if_finished = false;
};

// One alternative request of a task (`[[task.request]]`): the scheduler may use any of them.
struct JobFileRequest {
  ResourceRequest resources;  // "cpus" among them (1 when not given)
  uint64_t time_request_ms = 0;
  uint32_t nodes = 0;  // `n_nodes`: whole workers; 0: none
};

struct JobFileTask {
  TaskId id = 0;
  std::vector<std::string> command;
  std::vector<std::pair<std::string, std::string>> env;
  std::string cwd;
  std::optional<JobFileOutput> stdout_output, stderr_output;
  std::optional<std::string> stdin_text;  // written to the task's standard input
  bool task_dir = false;
  std::string pin;  // "", "taskset" or "omp"
  int32_t priority = 0;
  uint64_t time_limit_ms = 0;
  std::optional<uint32_t> crash_limit;
  std::vector<TaskId> deps;
  std::vector<JobFileRequest> requests;  // at least one
  std::optional<std::string> entry;      // an [array] entry (HQ_ENTRY)
};

struct JobFile {
  std::string name;
  std::optional<int64_t> max_fails;
  std::string stream;
  std::vector<JobFileTask> tasks;  // in file order
  bool array = false;              // from an [array] table: every task runs one body
};

// Parses the text of a job file; `file` names it in errors ("jobs.toml:12: ..."). With
// `deps_outside` (tasks added to an open job), `deps` may name ids the file does not define:
// tasks of the job's earlier submits, which the server checks.
Result<JobFile> parse_job_file(std::string_view text, const std::string& file,
                               bool deps_outside = false);
Result<JobFile> read_job_file(const fs::path& path, bool deps_outside = false);

// The job a parsed file describes, one body per task, with relative paths against
// `submit_dir` (an [array] file: an array job, its entries in HQ_ENTRY). Tasks may differ in
// their request, priority, crash limit and nodes; several requests of one task become the
// body's variants (alternatives).
Result<JobDescriptionSpec> job_file_description(const JobFile& file, const std::string& name,
                                                const std::string& submit_dir);

}  // namespace hq::cli
