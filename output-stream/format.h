#pragma once
// The stream file layout (docs/stream-format.md): limits, and the encoders and decoders
// of the file header and of records. Private to output-stream/. Decoders take untrusted bytes:
// they bound every size, never read outside the span, and turn Cap'n Proto's exceptions into a
// reason.

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/ids.h"
#include "common/paths.h"
#include "output-stream/stream.h"

namespace hq::stream {

// Magic (8 bytes), format version (LE UInt32), reserved (4 zero bytes).
inline constexpr size_t kPrefixBytes = 16;
inline constexpr uint32_t kFormatVersion = 1;
// Readers refuse larger payloads; writers split data into records of kWriterChunkBytes.
inline constexpr uint32_t kMaxPayloadBytes = 16u << 20;
inline constexpr uint32_t kWriterChunkBytes = 1u << 20;
// Bounds on one framed header or record message (they are a few words long).
inline constexpr size_t kMaxMessageWords = 4096;
inline constexpr uint32_t kMaxSegments = 64;
inline constexpr size_t kMaxServerUidBytes = 256;

// File names (stream_file_name, is_stream_file_name, stream_index_path) are in common/paths.h.

// `n` rounded up to a multiple of 8: payloads are padded so that every message is word-aligned.
inline uint64_t padded(uint64_t n) { return (n + 7) & ~uint64_t{7}; }

struct FileHeader {
  std::string server_uid;
  WorkerId worker = 0;
  uint64_t file_id = 0;
  int64_t created_ms = 0;
  uint32_t pid = 0;
  std::string hostname;
};

// The fixed prefix and the framed header message: the first bytes of a stream file.
std::vector<uint8_t> encode_file_header(const FileHeader& header);

enum class ParseStatus {
  kOk,
  kTorn,  // the bytes end before the structure does (a crash, or a writer still at work)
  kBad,   // the bytes are not what a writer writes
};

struct HeaderParse {
  ParseStatus status = ParseStatus::kBad;
  FileHeader header;
  uint64_t end = 0;  // offset of the first record
  std::string reason;
};

// Parses the start of a file. kBad with "bad magic" or "format version" in the reason means the
// file is not one this reader may read at all.
HeaderParse parse_file_header(std::span<const uint8_t> file);
inline bool is_fatal_header(const HeaderParse& h) {
  return h.status == ParseStatus::kBad && h.end == 0;
}

enum class RecordKind : uint8_t { kStart = 1, kData = 2, kEnd = 3 };

struct Record {
  RecordKind kind = RecordKind::kStart;
  TaskKey key;
  int64_t time_ms = 0;
  // kData:
  Channel channel = Channel::kStdout;
  uint32_t size = 0;
  uint32_t crc = 0;
  // kEnd:
  bool ok = false;
  int32_t exit_code = 0;
};

// Appends the framed message of `record` to `out` (for data, the payload and padding follow).
void append_record_message(const Record& record, std::vector<uint8_t>& out);

struct RecordParse {
  ParseStatus status = ParseStatus::kBad;
  Record record;
  uint64_t payload_offset = 0;  // kData: where the payload starts
  uint64_t next_offset = 0;     // where the next record starts
  std::string reason;
};

// Parses the record at `offset` (a multiple of 8) of `file`, checking that its payload and padding
// are present, without reading the payload.
RecordParse parse_record(std::span<const uint8_t> file, uint64_t offset);

}  // namespace hq::stream
