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

}  // namespace hq
