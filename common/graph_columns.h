#pragma once
// The per-task bodies and dependencies of a job file's job, packed into columns for the wire and
// the journal: a GraphTask struct with a whole TaskBody per task costs about 300 bytes, so a
// million-task file would not fit a message; columns cost about 16 bytes per task plus its
// program's text and 4 bytes per dependency. The tasks' bodies apart from their programs are
// stored once each (most files have one or a few), and each task names its own.

#include <cstdint>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "common/result.h"

namespace hq {

// A task's own scheduling parameters (GraphTaskSpec::own_params).
struct TaskParamsSpec {
  uint32_t id = 0;
  int32_t priority = 0;
  uint32_t crash_limit = 0;
  uint32_t nodes = 0;
};

struct GraphColumns {
  std::vector<uint32_t> ids;           // the tasks, in the order of every other column
  std::vector<TaskBodySpec> bodies;    // the distinct bodies, each with an empty program
  std::vector<uint32_t> body_of;       // per task: its body in `bodies`; empty: all bodies[0]
  std::string argv;                    // every task's program, each argument ending in a NUL
  std::vector<uint32_t> argv_end;      // per task: where its program ends in `argv`
  std::vector<uint32_t> dep_end;       // per task: where its dependencies end in `deps`
  std::vector<uint32_t> deps;          // task ids
  std::vector<TaskParamsSpec> params;  // the tasks with own parameters, in the order of `ids`
};

// The columns of `tasks`. Bodies equal but for their programs are stored once.
GraphColumns pack_graph(const std::vector<GraphTaskSpec>& tasks);

// The tasks back from columns that came from outside (a peer, a journal): fails naming the
// column when their sizes disagree, an offset goes backwards or beyond its column, a body index
// is out of range, a program does not end in a NUL, or `params` names a task out of order or
// not among `ids`.
Result<std::vector<GraphTaskSpec>> unpack_graph(GraphColumns columns);

}  // namespace hq
