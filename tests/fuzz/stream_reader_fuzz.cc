// libFuzzer target for the output stream reader: the bytes of a stream file and of its index
// sidecar are untrusted (a crash can leave anything at a file's end; anyone can write into a
// shared directory). Whatever they hold, opening and reading must not crash or hang; damage may
// only come back as an error or a Damage entry.
//
// The first input byte picks what the rest is:
//   0: a whole stream file (no sidecar);
//   1: patches to the sidecar of a valid sample stream;
//   2: patches to the sample stream itself, read with its (now possibly stale) sidecar.
// Patches are a truncation byte, then (offset low, offset high, value) triples.

#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

#include "output-stream/stream.h"

namespace {

using hq::stream::Channel;
using hq::stream::StreamReader;

struct Sample {
  std::vector<uint8_t> stream;
  std::vector<uint8_t> index;
};

std::vector<uint8_t> slurp(const hq::fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A small stream of two jobs, both channels, a restarted task and an unfinished one, and its
// sidecar, written by the real writer and reader.
Sample make_sample() {
  std::string dir_template = (hq::fs::temp_directory_path() / "hq-stream-fuzz-XXXXXX").string();
  if (!::mkdtemp(dir_template.data())) abort();
  const hq::fs::path dir = dir_template;
  {
    auto w = hq::stream::StreamWriter::create(dir, "fuzz", 1);
    if (!w) abort();
    auto& writer = **w;
    auto must = [](hq::Status s) {
      if (!s) abort();
    };
    must(writer.task_start({1, 0, 0}, 10));
    must(writer.data({1, 0, 0}, Channel::kStdout, "lost instance\n"));
    must(writer.task_start({1, 0, 1}, 11));
    must(writer.task_start({1, 1, 0}, 12));
    must(writer.data({1, 0, 1}, Channel::kStdout, "hello "));
    must(writer.data({1, 1, 0}, Channel::kStderr, "warning: something\n"));
    must(writer.data({1, 0, 1}, Channel::kStdout, "world\n"));
    must(writer.task_end({1, 0, 1}, true, 0, 20));
    must(writer.task_end({1, 1, 0}, false, 2, 21));
    must(writer.task_start({2, 7, 0}, 30));
    must(writer.data({2, 7, 0}, Channel::kStdout, std::string(100, 'x')));
    must(writer.close());
  }
  hq::stream::ReaderOptions options;
  options.save_index_min_bytes = 0;
  if (!StreamReader::open(dir, options)) abort();
  Sample s;
  for (const auto& e : hq::fs::directory_iterator(dir)) {
    if (e.path().extension() == ".hqs") s.stream = slurp(e.path());
    if (e.path().extension() == ".hqx") s.index = slurp(e.path());
  }
  hq::fs::remove_all(dir);
  if (s.stream.empty() || s.index.empty()) abort();
  return s;
}

std::vector<uint8_t> patched(const std::vector<uint8_t>& base, const uint8_t* data, size_t size) {
  std::vector<uint8_t> out = base;
  if (size == 0) return out;
  if (data[0] & 1) out.resize(out.size() * (data[0] >> 1) / 127);
  for (size_t i = 1; i + 3 <= size && !out.empty(); i += 3) {
    out[(size_t{data[i]} | size_t{data[i + 1]} << 8) % out.size()] = data[i + 2];
  }
  return out;
}

// Everything a command would do with a reader.
void exercise(const StreamReader& reader) {
  auto sink = [](std::string_view bytes) {
    volatile size_t n = bytes.size();
    (void)n;
    return hq::Status::ok();
  };
  (void)reader.summary();
  for (const auto& job : reader.jobs()) {
    for (const auto& task : reader.tasks(job.id)) {
      (void)reader.task(task.job, task.task);
      reader.read(task, Channel::kStdout, sink).ignore();
      reader.read(task, Channel::kStderr, sink).ignore();
    }
  }
  reader
      .for_each_chunk(std::nullopt, std::nullopt,
                      [&](const hq::stream::Chunk& c) { return sink(c.bytes); })
      .ignore();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Sample sample = make_sample();
  if (size == 0) return 0;
  std::vector<uint8_t> stream, index;
  switch (data[0] % 3) {
    case 0:
      stream.assign(data + 1, data + size);
      break;
    case 1:
      stream = sample.stream;
      index = patched(sample.index, data + 1, size - 1);
      break;
    default:
      stream = patched(sample.stream, data + 1, size - 1);
      index = sample.index;
      break;
  }
  auto reader = StreamReader::open_bytes({{"fuzz.hqs", stream, index}});
  if (reader) exercise(**reader);
  return 0;
}
