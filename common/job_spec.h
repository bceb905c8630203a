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
  // Empty: discard; or, when the job has a stream directory, send the channel into the stream
  // (a streamed job discards a channel with "/dev/null").
  std::string stdout_path;
  std::string stderr_path;
  std::string submit_dir;
  uint32_t cpus = 1;
};

struct JobDescriptionSpec {
  std::string name;
  IdSet task_ids;
  int32_t priority = 0;
  TaskBodySpec body;
  // Output stream directory (absolute; `hq submit --stream`, docs/stream-format.md): the channels
  // whose path is empty go there. Empty: no stream, per-task files.
  std::string stream;
};

}  // namespace hq
