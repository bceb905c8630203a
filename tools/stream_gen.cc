// Writes a synthetic output stream through the StreamWriter, as workers would: tools/bench-stream
// uses it to build a stream of a million tasks without running a million processes.
//
//   stream-gen DIR TASKS BYTES_PER_TASK [WRITERS]
//
// Job 1, tasks 0..TASKS-1, each a start record, BYTES_PER_TASK bytes of stdout (one line of the
// task id, padded with 'x') and an end record; tasks go to WRITERS files (worker ids 1..WRITERS)
// round robin. Prints the bytes written and the seconds it took.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "output-stream/stream.h"

namespace {

int usage() {
  std::fprintf(stderr, "usage: stream-gen DIR TASKS BYTES_PER_TASK [WRITERS]\n");
  return 2;
}

bool parse_count(const char* text, uint64_t min, uint64_t max, uint64_t& out) {
  char* end = nullptr;
  unsigned long long v = std::strtoull(text, &end, 10);
  if (end == text || *end != '\0' || v < min || v > max) return false;
  out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  using hq::stream::Channel;
  using hq::stream::StreamWriter;
  if (argc < 4 || argc > 5) return usage();
  uint64_t tasks = 0, bytes = 0, writers = 1;
  if (!parse_count(argv[2], 1, 100'000'000, tasks) || !parse_count(argv[3], 1, 16u << 20, bytes) ||
      (argc == 5 && !parse_count(argv[4], 1, 1024, writers))) {
    return usage();
  }
  auto start = std::chrono::steady_clock::now();
  std::vector<std::unique_ptr<StreamWriter>> out;
  for (uint64_t w = 0; w < writers; ++w) {
    auto created = StreamWriter::create(argv[1], "stream-gen", static_cast<uint32_t>(w + 1));
    if (!created) {
      std::fprintf(stderr, "stream-gen: %s\n", created.message().c_str());
      return 1;
    }
    out.push_back(std::move(*created));
  }
  std::string line;
  int64_t now = 1'700'000'000'000;
  for (uint64_t t = 0; t < tasks; ++t) {
    StreamWriter& w = *out[t % writers];
    hq::TaskKey key{1, static_cast<uint32_t>(t), 0};
    line = fmt::format("task {} ", t);
    line.resize(bytes - 1, 'x');
    line.push_back('\n');
    hq::Status st = w.task_start(key, now);
    if (st) st = w.data(key, Channel::kStdout, line);
    if (st) st = w.task_end(key, true, 0, now);
    if (!st) {
      std::fprintf(stderr, "stream-gen: %s\n", st.message().c_str());
      return 1;
    }
  }
  uint64_t total = 0;
  for (auto& w : out) {
    total += w->size();
    if (auto st = w->close(); !st) {
      std::fprintf(stderr, "stream-gen: %s\n", st.message().c_str());
      return 1;
    }
  }
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("%llu %.3f\n", static_cast<unsigned long long>(total), secs);
  return 0;
}
