#pragma once
// Placeholders in task paths: %{JOB_ID}, %{TASK_ID}, %{INSTANCE_ID}, %{CWD}, %{SUBMIT_DIR},
// %{SERVER_UID}.

#include <string>
#include <string_view>
#include <vector>

namespace hq {

struct PlaceholderValues {
  std::string job_id;
  std::string task_id;
  std::string instance_id;
  std::string cwd;
  std::string submit_dir;
  std::string server_uid;
};

// Replaces every known placeholder; unknown ones are left as written.
std::string expand_placeholders(std::string_view pattern, const PlaceholderValues& values);

// Names of the placeholders in `pattern` that expand_placeholders() does not know ("%{FOO}" ->
// "FOO"), for a warning at submit time.
std::vector<std::string> unknown_placeholders(std::string_view pattern);

// The output stream directory of a job (`hq submit --stream PATTERN`): %{JOB_ID}, %{SUBMIT_DIR}
// and %{SERVER_UID} replaced by `values`, the result taken relative to `values.submit_dir` when
// it is relative, then normalized. The one resolution of a stream path: the client calls it to
// create the directory, the worker to write into it. Other placeholders are left as written
// (stream_placeholder_errors() rejects them at submit time).
std::string resolve_stream_dir(std::string_view pattern, const PlaceholderValues& values);

// Known placeholders of `pattern` that have no single value for a whole job (%{TASK_ID},
// %{INSTANCE_ID}, %{CWD}), so cannot name its one stream directory.
std::vector<std::string> per_task_placeholders(std::string_view pattern);

}  // namespace hq
