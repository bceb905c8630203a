#pragma once
// Output streams: the stdout and stderr of many tasks in one directory instead of two files per
// task. Each writer (one per worker process and directory) appends to its own file; a reader
// treats the whole directory as one stream. The file format is in docs/stream-format.md.
//
// This is the folder's public face; everything else in output-stream/ is private to it.

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/ids.h"
#include "common/paths.h"
#include "common/result.h"

namespace hq::stream {

enum class Channel : uint8_t { kStdout = 0, kStderr = 1 };
inline constexpr size_t kChannels = 2;

// "stdout" or "stderr".
const char* channel_name(Channel channel);
// Parses "stdout" or "stderr".
Result<Channel> parse_channel(std::string_view text);

struct WriterOptions {
  // Records are gathered here and written with one write(2) when it fills, at flush() and at
  // every task_end().
  size_t buffer_bytes = 256 << 10;
  // Unix ms stamped on data records; unix_millis_now() when empty.
  std::function<int64_t()> clock;
};

// Appends the records of one worker process to a new file of a stream directory. Not
// thread-safe: one owner (the worker's event loop). Memory use is bounded by the buffer: a task's
// output is never held whole.
//
// After a failed write (disk full, I/O error) the writer is broken: that call and every later one
// return the same error, naming the file. The records written before the failure stay readable;
// the partly written tail is cut off when the file allows it (readers tolerate it otherwise).
class StreamWriter {
 public:
  // Creates `dir` when missing and a new file in it, named so that no two writers (other
  // workers, other server runs, this worker again) ever pick the same one. The header (magic,
  // format version, server UID, worker id) is written at once.
  static Result<std::unique_ptr<StreamWriter>> create(const fs::path& dir,
                                                      const std::string& server_uid,
                                                      WorkerId worker, WriterOptions options = {});
  ~StreamWriter();  // flushes; a failure is logged (call close() to see it)
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;

  // A task instance started at `time_ms` (Unix ms).
  Status task_start(const TaskKey& key, int64_t time_ms);
  // A piece of a task's output, as it arrives from the pipe. Empty pieces are dropped; large
  // ones are split into records of at most 1 MiB.
  Status data(const TaskKey& key, Channel channel, std::span<const uint8_t> bytes);
  Status data(const TaskKey& key, Channel channel, std::string_view bytes) {
    return data(
        key, channel,
        std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()));
  }
  // The task instance ended; writes the buffer so that its whole output is in the file.
  Status task_end(const TaskKey& key, bool ok, int32_t exit_code, int64_t time_ms);
  // Writes the buffer to the file (write(2), no fsync).
  Status flush();
  // Writes the buffer and waits until the file's data is on disk (fdatasync): what was appended
  // so far survives a crash of the machine. A failure breaks the writer.
  Status sync();
  // How many times sync() reached the disk (for tests: the worker reports a task's end only
  // after a sync).
  uint64_t syncs() const;
  // Flushes, fsyncs and closes the file. Later calls fail.
  Status close();

  const fs::path& path() const;
  // Bytes appended so far (written or buffered): the file's size after the next flush().
  uint64_t size() const;

 private:
  struct Impl;
  explicit StreamWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct ReaderOptions {
  // Read only the files of this server. Required when the directory holds files of several.
  std::optional<std::string> server_uid;
  // Save what a scan learned as an index sidecar next to each stream file ("NAME.hqx") so that
  // later readers skip the scan. Best effort: an unwritable directory only costs time.
  bool save_index = true;
  // ...only when the scan had to cover at least this many bytes of a file.
  uint64_t save_index_min_bytes = 1 << 20;
};

// Where a file stops being readable: a torn (truncated) or garbage record and everything after it.
struct Damage {
  std::string file;
  uint64_t offset = 0;  // byte offset of the first lost byte
  std::string reason;
};

// The last instance of one task, as the stream knows it.
struct TaskInfo {
  JobId job = 0;
  TaskId task = 0;
  InstanceId instance = 0;
  bool started = false;   // its start record was seen
  bool finished = false;  // its end record was seen
  bool ok = false;        // as the end record says
  int32_t exit_code = 0;
  int64_t start_ms = 0;
  int64_t end_ms = 0;
  uint64_t bytes[kChannels] = {0, 0};  // stdout, stderr
  uint64_t chunks = 0;
  uint32_t superseded = 0;  // earlier instances in the stream, not served
  uint64_t superseded_bytes[kChannels] = {0, 0};
};

struct JobInfo {
  JobId id = 0;
  uint64_t tasks = 0;
  uint64_t finished = 0;
  uint64_t bytes[kChannels] = {0, 0};
};

struct Summary {
  std::string server_uid;
  uint64_t files = 0;
  uint64_t file_bytes = 0;
  uint64_t records = 0;
  uint64_t jobs = 0;
  uint64_t tasks = 0;
  uint64_t finished = 0;
  uint64_t open = 0;  // tasks whose last instance has no end record (still running, or lost)
  uint64_t bytes[kChannels] = {0, 0};
  uint64_t superseded_instances = 0;
  uint64_t superseded_bytes[kChannels] = {0, 0};
  std::vector<Damage> damage;
};

// One piece of output, as handed to StreamReader::for_each_chunk.
struct Chunk {
  TaskKey key;
  Channel channel = Channel::kStdout;
  int64_t time_ms = 0;
  std::string_view bytes;  // valid while the reader lives
  bool last = false;       // the last chunk of this task's channel
};

// What a reader has touched, for tests and diagnostics.
struct ReadStats {
  uint64_t records_decoded = 0;  // record headers parsed (scans and reads)
  uint64_t payload_bytes = 0;    // output bytes read
};

// A stream file already in memory (fuzzing, tests, archives). The spans must outlive the reader.
struct StreamBytes {
  std::string name;
  std::span<const uint8_t> bytes;
  std::span<const uint8_t> index;  // a sidecar's bytes, or empty
};

// Reads a stream directory: every "*.hqs" file in it, as one stream. Serves the last instance of
// each task. Finds a task's output through an index of record offsets (built by scanning record
// headers and seeking over payloads, or loaded from sidecars), so reading one task reads only
// that task's records. Never writes a stream file (only sidecars, see ReaderOptions). Not
// thread-safe. Files being appended to are read up to where they were when opened.
class StreamReader {
 public:
  // Fails when the directory cannot be read, when a file is not a stream file (bad magic) or has
  // a format version this reader does not know, naming the file, and when the files come from
  // several servers and options.server_uid does not choose one (the error names them).
  static Result<std::unique_ptr<StreamReader>> open(const fs::path& dir,
                                                    const ReaderOptions& options = {});
  static Result<std::unique_ptr<StreamReader>> open_bytes(std::vector<StreamBytes> files,
                                                          const ReaderOptions& options = {});
  ~StreamReader();
  StreamReader(const StreamReader&) = delete;
  StreamReader& operator=(const StreamReader&) = delete;

  // The server the files belong to; empty when there is no readable file.
  const std::string& server_uid() const;
  const std::vector<Damage>& damage() const;
  Summary summary() const;
  // Jobs in the stream, by id.
  std::vector<JobInfo> jobs() const;
  // The tasks of a job (last instances), by task id.
  std::vector<TaskInfo> tasks(JobId job) const;
  std::optional<TaskInfo> task(JobId job, TaskId task) const;

  // Hands `sink` the output of `task` on `channel`, in the order it was written. Fails, naming
  // the file and offset, when a record does not match the index or its bytes do not match their
  // checksum; or with the sink's own error.
  Status read(const TaskInfo& task, Channel channel,
              const std::function<Status(std::string_view)>& sink) const;
  // Every chunk of the last instances (of `job`, of `channel` when given): per file in file
  // order, files merged by time.
  Status for_each_chunk(std::optional<JobId> job, std::optional<Channel> channel,
                        const std::function<Status(const Chunk&)>& f) const;

  ReadStats stats() const;

 private:
  struct Impl;
  explicit StreamReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hq::stream
