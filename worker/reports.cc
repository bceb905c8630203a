#include "worker/reports.h"

#include <algorithm>
#include <unordered_map>
#include <utility>

#include <spdlog/spdlog.h>

namespace hq::worker {

std::vector<std::shared_ptr<stream::StreamWriter>> Reports::flush(
    const std::function<void(const ReportBatch&)>& send) {
  // One sync per file, however many of its tasks ended this turn.
  std::unordered_map<stream::StreamWriter*, Status> synced;
  std::vector<std::shared_ptr<stream::StreamWriter>> broken;
  auto sync = [&](const std::shared_ptr<stream::StreamWriter>& writer) -> const Status& {
    auto [it, fresh] = synced.try_emplace(writer.get());
    if (fresh) {
      it->second = writer->sync();
      if (!it->second) {
        spdlog::error("{}", it->second.message());
        broken.push_back(writer);
      }
    }
    return it->second;
  };
  for (TaskReport& r : batch_.failed) {
    if (r.stream) sync(r.stream).ignore();  // a failure is reported as it is
  }
  std::vector<TaskReport> finished;
  finished.reserve(batch_.finished.size());
  for (TaskReport& r : batch_.finished) {
    if (r.stream) {
      if (const Status& st = sync(r.stream); !st) {
        r.error = "cannot write the output stream: " + st.message();
        batch_.failed.push_back(std::move(r));
        continue;
      }
    }
    finished.push_back(std::move(r));
  }
  batch_.finished = std::move(finished);
  ReportBatch out = std::exchange(batch_, {});
  send(out);
  return broken;
}

}  // namespace hq::worker
