#include "output-stream/format.h"

#include <array>
#include <cstring>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <fmt/format.h>
#include <kj/array.h>
#include <kj/exception.h>
#include <kj/io.h>

#include "output-stream/stream.capnp.h"

namespace hq::stream {
namespace {

constexpr size_t kWordBytes = sizeof(capnp::word);

uint32_t load_le32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

void store_le32(uint8_t* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<uint8_t>(v >> (8 * i));
}

std::span<const uint8_t> magic() {
  auto m = schema::STREAM_MAGIC.get();
  return {m.begin(), m.size()};
}

// Appends what capnp::writeMessage writes to a byte vector.
class AppendStream final : public kj::OutputStream {
 public:
  explicit AppendStream(std::vector<uint8_t>& out) : out_(out) {}
  void write(const void* buffer, size_t size) override {
    const auto* p = static_cast<const uint8_t*>(buffer);
    out_.insert(out_.end(), p, p + size);
  }

 private:
  std::vector<uint8_t>& out_;
};

capnp::ReaderOptions reader_options() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 2 * kMaxMessageWords;
  options.nestingLimit = 8;
  return options;
}

// A framed message at `offset`, copied to word-aligned memory (file bytes need not be aligned).
struct Framed {
  ParseStatus status = ParseStatus::kBad;
  std::string reason;
  size_t words = 0;
  std::array<capnp::word, 32> small;
  kj::Array<capnp::word> large;
  kj::ArrayPtr<const capnp::word> message() const {
    return words <= small.size() ? kj::arrayPtr(small.data(), words)
                                 : kj::arrayPtr(large.begin(), words);
  }
};

// Checks the segment table at `offset` and that the whole message is present, bounding sizes
// before anything is allocated.
void read_framed(std::span<const uint8_t> file, uint64_t offset, Framed& out) {
  const uint64_t available = offset <= file.size() ? file.size() - offset : 0;
  if (available < kWordBytes) {
    out.status = ParseStatus::kTorn;
    out.reason =
        fmt::format("truncated message: {} of at least {} bytes present", available, kWordBytes);
    return;
  }
  const uint8_t* head = file.data() + offset;
  const uint64_t segments = uint64_t{load_le32(head)} + 1;
  if (segments > kMaxSegments) {
    out.status = ParseStatus::kBad;
    out.reason = fmt::format("malformed message: {} segments announced (at most {})", segments,
                             kMaxSegments);
    return;
  }
  const size_t table_words = segments / 2 + 1;
  if (available < table_words * kWordBytes) {
    out.status = ParseStatus::kTorn;
    out.reason = fmt::format("truncated message: {} of at least {} bytes present", available,
                             table_words * kWordBytes);
    return;
  }
  std::array<capnp::word, kMaxSegments / 2 + 1> table;
  std::memcpy(static_cast<void*>(table.data()), head, table_words * kWordBytes);
  const size_t words =
      capnp::expectedSizeInWordsFromPrefix(kj::arrayPtr(table.data(), table_words));
  if (words > kMaxMessageWords) {
    out.status = ParseStatus::kBad;
    out.reason = fmt::format("malformed message: {} bytes announced (at most {})",
                             words * kWordBytes, kMaxMessageWords * kWordBytes);
    return;
  }
  if (available < words * kWordBytes) {
    out.status = ParseStatus::kTorn;
    out.reason =
        fmt::format("truncated message: {} of {} bytes present", available, words * kWordBytes);
    return;
  }
  out.words = words;
  void* dest = out.small.data();
  if (words > out.small.size()) {
    out.large = kj::heapArray<capnp::word>(words);
    dest = out.large.begin();
  }
  std::memcpy(dest, head, words * kWordBytes);
  out.status = ParseStatus::kOk;
}

}  // namespace

const char* channel_name(Channel channel) {
  return channel == Channel::kStdout ? "stdout" : "stderr";
}

Result<Channel> parse_channel(std::string_view text) {
  if (text == "stdout") return Channel::kStdout;
  if (text == "stderr") return Channel::kStderr;
  return Error{fmt::format("unknown channel '{}' (use stdout or stderr)", text)};
}

std::vector<uint8_t> encode_file_header(const FileHeader& header) {
  std::vector<uint8_t> out(kPrefixBytes, 0);
  auto m = magic();
  std::memcpy(out.data(), m.data(), m.size());
  store_le32(out.data() + m.size(), kFormatVersion);
  capnp::MallocMessageBuilder builder(64);
  auto root = builder.initRoot<schema::StreamHeader>();
  root.setServerUid(header.server_uid);
  root.setWorkerId(header.worker);
  root.setFileId(header.file_id);
  root.setCreatedMs(header.created_ms);
  root.setPid(header.pid);
  root.setHostname(header.hostname);
  AppendStream stream(out);
  capnp::writeMessage(stream, builder);
  return out;
}

HeaderParse parse_file_header(std::span<const uint8_t> file) {
  static_assert(schema::FORMAT_VERSION == kFormatVersion);
  HeaderParse h;
  auto m = magic();
  const size_t have = std::min(file.size(), m.size());
  if (have > 0 && std::memcmp(file.data(), m.data(), have) != 0) {
    h.reason = "not an hq stream file (bad magic)";
    return h;
  }
  if (file.size() < kPrefixBytes) {
    h.status = ParseStatus::kTorn;
    h.reason = fmt::format("truncated header: {} of {} bytes of the fixed prefix present",
                           file.size(), kPrefixBytes);
    return h;
  }
  const uint32_t version = load_le32(file.data() + m.size());
  if (version != kFormatVersion) {
    h.reason =
        fmt::format("stream format version {}, this hq reads version {}", version, kFormatVersion);
    return h;
  }
  // From here on failures are damage of this file, not a reason to refuse the directory.
  h.end = kPrefixBytes;
  Framed framed;
  read_framed(file, kPrefixBytes, framed);
  if (framed.status != ParseStatus::kOk) {
    h.status = framed.status;
    h.reason = "header: " + framed.reason;
    return h;
  }
  try {
    capnp::FlatArrayMessageReader reader(framed.message(), reader_options());
    auto root = reader.getRoot<schema::StreamHeader>();
    auto uid = root.getServerUid();
    if (uid.size() > kMaxServerUidBytes) {
      h.reason = fmt::format("header: server UID of {} bytes (at most {})", uid.size(),
                             kMaxServerUidBytes);
      return h;
    }
    h.header.server_uid = std::string(uid.cStr(), uid.size());
    h.header.worker = root.getWorkerId();
    h.header.file_id = root.getFileId();
    h.header.created_ms = root.getCreatedMs();
    h.header.pid = root.getPid();
    auto host = root.getHostname();
    h.header.hostname = std::string(host.cStr(), std::min<size_t>(host.size(), 1024));
  } catch (const kj::Exception& e) {
    h.reason = fmt::format("malformed header: {}", e.getDescription().cStr());
    return h;
  }
  h.status = ParseStatus::kOk;
  h.end = kPrefixBytes + framed.words * kWordBytes;
  return h;
}

void append_record_message(const Record& record, std::vector<uint8_t>& out) {
  // A record is a handful of words: build it in a zeroed scratch segment, no allocation.
  std::array<capnp::word, 16> scratch{};
  capnp::MallocMessageBuilder builder(kj::arrayPtr(scratch.data(), scratch.size()));
  auto root = builder.initRoot<schema::Record>();
  root.setJob(record.key.job);
  root.setTask(record.key.task);
  root.setInstance(record.key.instance);
  root.setTimeMs(record.time_ms);
  switch (record.kind) {
    case RecordKind::kStart:
      root.setStart();
      break;
    case RecordKind::kData: {
      auto data = root.initData();
      data.setChannel(static_cast<uint8_t>(record.channel));
      data.setSize(record.size);
      data.setCrc32c(record.crc);
      break;
    }
    case RecordKind::kEnd: {
      auto end = root.initEnd();
      end.setOk(record.ok);
      end.setExitCode(record.exit_code);
      break;
    }
  }
  AppendStream stream(out);
  capnp::writeMessage(stream, builder);
}

RecordParse parse_record(std::span<const uint8_t> file, uint64_t offset) {
  RecordParse r;
  if (offset % kWordBytes != 0) {
    r.reason = fmt::format("record at unaligned offset {}", offset);
    return r;
  }
  Framed framed;
  read_framed(file, offset, framed);
  if (framed.status != ParseStatus::kOk) {
    r.status = framed.status;
    r.reason = framed.reason;
    return r;
  }
  const uint64_t message_end = offset + framed.words * kWordBytes;
  Record& rec = r.record;
  try {
    capnp::FlatArrayMessageReader reader(framed.message(), reader_options());
    auto root = reader.getRoot<schema::Record>();
    rec.key = TaskKey{root.getJob(), root.getTask(), root.getInstance()};
    rec.time_ms = root.getTimeMs();
    switch (root.which()) {
      case schema::Record::START:
        rec.kind = RecordKind::kStart;
        break;
      case schema::Record::DATA: {
        auto data = root.getData();
        rec.kind = RecordKind::kData;
        const uint8_t channel = data.getChannel();
        if (channel >= kChannels) {
          r.reason = fmt::format("data record with unknown channel {}", channel);
          return r;
        }
        rec.channel = static_cast<Channel>(channel);
        rec.size = data.getSize();
        rec.crc = data.getCrc32c();
        break;
      }
      case schema::Record::END: {
        auto end = root.getEnd();
        rec.kind = RecordKind::kEnd;
        rec.ok = end.getOk();
        rec.exit_code = end.getExitCode();
        break;
      }
      default:
        r.reason = fmt::format("record of unknown kind {}", static_cast<unsigned>(root.which()));
        return r;
    }
  } catch (const kj::Exception& e) {
    r.reason = fmt::format("malformed record: {}", e.getDescription().cStr());
    return r;
  }
  r.next_offset = message_end;
  if (rec.kind == RecordKind::kData) {
    if (rec.size > kMaxPayloadBytes) {
      r.reason = fmt::format("data record of {} bytes (at most {})", rec.size, kMaxPayloadBytes);
      return r;
    }
    const uint64_t available = file.size() - message_end;
    if (available < padded(rec.size)) {
      r.status = ParseStatus::kTorn;
      r.reason = fmt::format("truncated data record: {} of {} payload bytes present", available,
                             padded(rec.size));
      return r;
    }
    r.payload_offset = message_end;
    r.next_offset = message_end + padded(rec.size);
  }
  r.status = ParseStatus::kOk;
  return r;
}

}  // namespace hq::stream
