#pragma once
// What a user submits, in plain C++ form. net/convert.h maps it to and from the wire schema.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/id_set.h"

namespace hq {

// What every task of a job runs. Paths may hold placeholders (common/placeholders.h).
struct TaskBodySpec {
  std::vector<std::string> program;  // argv
  std::vector<std::pair<std::string, std::string>> env;
  std::string cwd;
  std::string stdout_path;  // empty: discard
  std::string stderr_path;  // empty: discard
  std::string submit_dir;
  uint32_t cpus = 1;
};

struct JobDescriptionSpec {
  std::string name;
  IdSet task_ids;
  int32_t priority = 0;
  TaskBodySpec body;
  std::string stream;  // output stream directory; empty: per-task files
};

}  // namespace hq
