// StreamWriter: buffered appends of records to a stream file of its own.

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <random>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/time.h"
#include "output-stream/crc32c.h"
#include "output-stream/format.h"
#include "output-stream/stream.h"

namespace hq::stream {
namespace {

constexpr size_t kMinBufferBytes = 4096;
constexpr int kNameAttempts = 16;
// Room for one record message beyond the buffer size, so that the buffer never reallocates.
constexpr size_t kRecordSlackBytes = 256;

std::string local_hostname() {
  std::array<char, 256> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0) return "";
  return name.data();
}

// Writes every byte of `parts`, resuming after short writes and EINTR. Returns errno or 0.
int write_all(int fd, std::span<iovec> parts) {
  size_t first = 0;
  while (first < parts.size()) {
    ssize_t n = ::writev(fd, parts.data() + first, static_cast<int>(parts.size() - first));
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    auto left = static_cast<size_t>(n);
    while (first < parts.size() && left >= parts[first].iov_len) left -= parts[first++].iov_len;
    if (first < parts.size()) {
      parts[first].iov_base = static_cast<uint8_t*>(parts[first].iov_base) + left;
      parts[first].iov_len -= left;
    }
  }
  return 0;
}

}  // namespace

// Invariants: the file holds `written` bytes, all whole records after the header; `buffer` holds
// whole records not yet written. `error` is sticky.
struct StreamWriter::Impl {
  fs::path path;
  int fd = -1;
  WriterOptions options;
  std::vector<uint8_t> buffer;
  uint64_t written = 0;
  uint64_t syncs = 0;
  std::string error;

  ~Impl() {
    if (fd >= 0) ::close(fd);
  }

  Status check() const { return error.empty() ? Status::ok() : Status::error(error); }

  // Writes the buffer, then `payload` and its padding. On failure cuts the file back to its
  // last whole record and breaks the writer.
  Status write_out(std::span<const uint8_t> payload = {}) {
    static constexpr uint8_t kZeros[8] = {};
    std::array<iovec, 3> parts;
    size_t n = 0;
    if (!buffer.empty()) parts[n++] = {buffer.data(), buffer.size()};
    if (!payload.empty()) {
      parts[n++] = {const_cast<uint8_t*>(payload.data()), payload.size()};
      const size_t pad = padded(payload.size()) - payload.size();
      if (pad) parts[n++] = {const_cast<uint8_t*>(kZeros), pad};
    }
    const uint64_t total = buffer.size() + padded(payload.size());
    buffer.clear();
    if (n == 0) return Status::ok();
    if (int err = write_all(fd, std::span(parts.data(), n))) {
      error = fmt::format("cannot write stream file '{}': {}", path.string(), std::strerror(err));
      if (::ftruncate(fd, static_cast<off_t>(written)) != 0) {
        error += fmt::format(" (its last record may be torn: {})", std::strerror(errno));
      }
      return Status::error(error);
    }
    written += total;
    return Status::ok();
  }

  Status append(const Record& record, std::span<const uint8_t> payload = {}) {
    if (auto s = check(); !s) return s;
    append_record_message(record, buffer);
    if (buffer.size() + padded(payload.size()) <= options.buffer_bytes) {
      buffer.insert(buffer.end(), payload.begin(), payload.end());
      buffer.resize(buffer.size() + padded(payload.size()) - payload.size(), 0);
      return Status::ok();
    }
    // The payload goes straight from the caller's memory, behind what is buffered.
    return write_out(payload);
  }
};

StreamWriter::StreamWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

StreamWriter::~StreamWriter() {
  if (impl_->fd < 0) return;
  if (Status s = impl_->write_out(); !s) spdlog::warn("{}", s.message());
}

Result<std::unique_ptr<StreamWriter>> StreamWriter::create(const fs::path& dir,
                                                           const std::string& server_uid,
                                                           WorkerId worker, WriterOptions options) {
  if (Status st = create_private_directories(dir); !st) {
    return Error{
        fmt::format("cannot create stream directory '{}': {}", dir.string(), st.message())};
  }
  auto impl = std::make_unique<Impl>();
  if (!options.clock) options.clock = unix_millis_now;
  options.buffer_bytes = std::max(options.buffer_bytes, kMinBufferBytes);
  impl->options = std::move(options);

  std::random_device random;
  FileHeader header;
  header.server_uid = server_uid;
  header.worker = worker;
  header.file_id = uint64_t{random()} << 32 | random();
  header.created_ms = unix_millis_now();
  header.pid = static_cast<uint32_t>(::getpid());
  header.hostname = local_hostname();
  for (int attempt = 0; attempt < kNameAttempts && impl->fd < 0; ++attempt) {
    impl->path = dir / stream_file_name(server_uid, worker, header.pid, random());
    // O_EXCL: never a file (or a link) that is already there.
    impl->fd = ::open(impl->path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (impl->fd < 0 && errno != EEXIST) {
      return Error{fmt::format("cannot create stream file '{}': {}", impl->path.string(),
                               std::strerror(errno))};
    }
  }
  // Output is private to its owner whatever the umask (which may have taken bits away).
  if (impl->fd >= 0 && ::fchmod(impl->fd, 0600) != 0) {
    Error e{fmt::format("cannot set the mode of stream file '{}': {}", impl->path.string(),
                        std::strerror(errno))};
    ::unlink(impl->path.c_str());
    return e;
  }
  if (impl->fd < 0) {
    return Error{
        fmt::format("cannot create a stream file in '{}': every name tried exists", dir.string())};
  }
  impl->buffer = encode_file_header(header);
  if (Status s = impl->write_out(); !s) {
    ::unlink(impl->path.c_str());
    return Error{s.message()};
  }
  impl->buffer.reserve(impl->options.buffer_bytes + kRecordSlackBytes);
  return std::unique_ptr<StreamWriter>(new StreamWriter(std::move(impl)));
}

Status StreamWriter::task_start(const TaskKey& key, int64_t time_ms) {
  Record r;
  r.kind = RecordKind::kStart;
  r.key = key;
  r.time_ms = time_ms;
  return impl_->append(r);
}

Status StreamWriter::data(const TaskKey& key, Channel channel, std::span<const uint8_t> bytes) {
  if (auto s = impl_->check(); !s) return s;
  const int64_t now = bytes.empty() ? 0 : impl_->options.clock();
  while (!bytes.empty()) {
    auto piece = bytes.first(std::min<size_t>(bytes.size(), kWriterChunkBytes));
    bytes = bytes.subspan(piece.size());
    Record r;
    r.kind = RecordKind::kData;
    r.key = key;
    r.time_ms = now;
    r.channel = channel;
    r.size = static_cast<uint32_t>(piece.size());
    r.crc = crc32c(piece);
    if (auto s = impl_->append(r, piece); !s) return s;
  }
  return Status::ok();
}

Status StreamWriter::task_end(const TaskKey& key, bool ok, int32_t exit_code, int64_t time_ms) {
  Record r;
  r.kind = RecordKind::kEnd;
  r.key = key;
  r.time_ms = time_ms;
  r.ok = ok;
  r.exit_code = exit_code;
  if (auto s = impl_->append(r); !s) return s;
  return impl_->write_out();
}

Status StreamWriter::flush() {
  if (auto s = impl_->check(); !s) return s;
  return impl_->write_out();
}

Status StreamWriter::sync() {
  if (auto s = impl_->check(); !s) return s;
  if (auto s = impl_->write_out(); !s) return s;
  int r;
  do {
    r = ::fdatasync(impl_->fd);
  } while (r != 0 && errno == EINTR);
  if (r != 0) {
    impl_->error =
        fmt::format("cannot sync stream file '{}': {}", impl_->path.string(), std::strerror(errno));
    return Status::error(impl_->error);
  }
  ++impl_->syncs;
  return Status::ok();
}

uint64_t StreamWriter::syncs() const { return impl_->syncs; }

Status StreamWriter::close() {
  if (auto s = impl_->check(); !s) return s;
  Status s = impl_->write_out();
  if (s && ::fsync(impl_->fd) != 0) {
    s = Status::error(fmt::format("cannot sync stream file '{}': {}", impl_->path.string(),
                                  std::strerror(errno)));
  }
  ::close(impl_->fd);
  impl_->fd = -1;
  impl_->error = s ? fmt::format("stream file '{}' is closed", impl_->path.string()) : s.message();
  return s;
}

const fs::path& StreamWriter::path() const { return impl_->path; }

uint64_t StreamWriter::size() const { return impl_->written + impl_->buffer.size(); }

}  // namespace hq::stream
