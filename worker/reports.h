#pragma once
// What a worker tells the server in one message: the tasks that started, ended or were given
// back during one turn of its event loop. A task that streams its output is reported ended only
// once that output is on disk (docs: the durability contract, point 7): the batch syncs each
// stream file its ended tasks wrote once, whatever the number of tasks, then goes out.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "common/ids.h"
#include "output-stream/stream.h"

namespace hq::worker {

struct TaskReport {
  TaskKey key;
  int64_t time = 0;   // Unix ms
  std::string error;  // of a failed task
  // The stream file holding the task's output (its end record included); null: none.
  std::shared_ptr<stream::StreamWriter> stream;
  int64_t start = 0;  // of an ended task: when it started (Unix ms); 0: unknown
};

struct ReportBatch {
  std::vector<TaskReport> started, finished, failed;
  std::vector<TaskKey> retracted;
  bool empty() const {
    return started.empty() && finished.empty() && failed.empty() && retracted.empty();
  }
};

// Gathers the reports of a loop turn. Lives on the worker's event loop thread.
class Reports {
 public:
  ReportBatch& pending() { return batch_; }

  // Syncs every distinct stream of the ended tasks once; an ended task whose stream cannot be
  // synced is reported failed, with the error. Then hands the batch to `send` and starts a new
  // one. Returns the streams that failed (broken now: their owner should drop them).
  std::vector<std::shared_ptr<stream::StreamWriter>> flush(
      const std::function<void(const ReportBatch&)>& send);

 private:
  ReportBatch batch_;
};

}  // namespace hq::worker
