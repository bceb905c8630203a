#pragma once
// The index of one stream file: which records belong to which task instance, found by scanning
// record headers and seeking over payloads, and kept in a sidecar file so that later readers
// skip the scan. Private to output-stream/; the sidecar layout is in docs/stream-format.md.

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/ids.h"
#include "common/result.h"
#include "output-stream/format.h"

namespace hq::stream {

// TaskEntry::flags
inline constexpr uint32_t kEntryStarted = 1;
inline constexpr uint32_t kEntryEnded = 2;
inline constexpr uint32_t kEntryOk = 4;

// One task instance in one file. Sidecars store it as is (native byte order).
struct TaskEntry {
  uint32_t job = 0;
  uint32_t task = 0;
  uint32_t instance = 0;
  uint32_t flags = 0;
  int64_t start_ms = 0;
  int64_t end_ms = 0;
  int32_t exit_code = 0;
  uint32_t reserved = 0;
  uint64_t first_chunk = 0;  // its chunks are [first_chunk, first_chunk + chunk_count)
  uint64_t chunk_count = 0;
  uint64_t bytes[kChannels] = {0, 0};
  TaskKey key() const { return {job, task, instance}; }
};
static_assert(sizeof(TaskEntry) == 72 && std::is_trivially_copyable_v<TaskEntry>);

// One data record. The chunks of a task instance are in file order.
struct ChunkEntry {
  uint64_t record_offset = 0;  // where the record's message starts
  uint32_t size = 0;           // payload bytes
  uint8_t channel = 0;
  uint8_t reserved[3] = {0, 0, 0};
  int64_t time_ms = 0;
};
static_assert(sizeof(ChunkEntry) == 24 && std::is_trivially_copyable_v<ChunkEntry>);

// Read-only entries, task entries sorted by (job, task, instance). Over bytes owned elsewhere (a
// BuiltIndex or a mapped sidecar), which need no alignment. Sidecar bytes are untrusted: callers
// check chunks_valid() before following an entry's chunks, and re-parse each record they read.
class IndexView {
 public:
  IndexView() = default;
  IndexView(std::span<const uint8_t> tasks, std::span<const uint8_t> chunks);

  size_t task_count() const { return tasks_.size() / sizeof(TaskEntry); }
  size_t chunk_count() const { return chunks_.size() / sizeof(ChunkEntry); }
  TaskEntry task(size_t i) const;
  ChunkEntry chunk(size_t i) const;
  bool chunks_valid(const TaskEntry& e) const;

  // Positions [first, last) of the entries of `job`, or of its `task`.
  std::pair<size_t, size_t> find(JobId job) const;
  std::pair<size_t, size_t> find(JobId job, TaskId task) const;

 private:
  // The first position whose (job, task) is not less than the given one.
  size_t lower_bound(JobId job, TaskId task) const;
  std::span<const uint8_t> tasks_;
  std::span<const uint8_t> chunks_;
};

struct BuiltIndex {
  std::vector<TaskEntry> tasks;
  std::vector<ChunkEntry> chunks;
  IndexView view() const;
};

// Gathers records in file order; finish() sorts them into an index.
class IndexBuilder {
 public:
  void add(const Record& record, uint64_t record_offset);
  // Every entry of an index of another part of the same file; parts are added in file order.
  void add(const IndexView& index);
  BuiltIndex finish() &&;

 private:
  // The slot of `key` in tasks_, added when new. An open-addressing table: a scan meets one new
  // key every few records, and node-based maps spent most of the scan allocating.
  uint32_t slot(const TaskKey& key);
  void grow();
  struct Cell {
    TaskKey key;
    uint32_t slot_plus_one = 0;  // 0: empty
  };
  std::vector<Cell> cells_;  // size a power of two, at most half full
  TaskKey last_key_;
  uint32_t last_slot_ = UINT32_MAX;
  std::vector<TaskEntry> tasks_;                         // in first-seen order
  std::vector<std::pair<uint32_t, ChunkEntry>> chunks_;  // (slot, chunk), in file order
};

struct ScanResult {
  uint64_t end = 0;                   // offset after the last whole record
  uint64_t records = 0;               // whole records found
  std::optional<std::string> damage;  // why the record at `end` could not be read
};

// Parses the records of `file` from `offset` (a record boundary) to its end into `builder`,
// reading record headers only. Stops at the first torn or bad record.
ScanResult scan_records(std::span<const uint8_t> file, uint64_t offset, IndexBuilder& builder,
                        uint64_t& records_decoded);

// A sidecar: header, task entries, chunk entries.
std::vector<uint8_t> encode_index(const BuiltIndex& index, uint64_t file_id, uint64_t covered,
                                  uint64_t records);

struct IndexParse {
  IndexView view;
  uint64_t covered = 0;  // the sidecar describes the file's bytes [0, covered)
  uint64_t records = 0;
};

// Validates a sidecar against the stream file it claims to describe: its header, its size, the
// file id, and that the covered part is within a file of `file_size` bytes whose records start
// at `first_record`. An error means "ignore it and scan".
Result<IndexParse> parse_index(std::span<const uint8_t> bytes, uint64_t file_id,
                               uint64_t first_record, uint64_t file_size);

}  // namespace hq::stream
