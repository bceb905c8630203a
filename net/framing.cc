#include "net/framing.h"

#include <array>
#include <cstring>
#include <string>

#include <capnp/serialize.h>
#include <fmt/format.h>

namespace hq::net {

namespace {

constexpr size_t kWordBytes = sizeof(capnp::word);
// FlatArrayMessageReader allocates one slice per segment: bound the count before it does.
constexpr uint64_t kMaxSegments = 512;

constexpr size_t kMaxTableWords = kMaxSegments / 2 + 1;

uint32_t load_le32(const uint8_t* p) {
  return uint32_t{p[0]} | uint32_t{p[1]} << 8 | uint32_t{p[2]} << 16 | uint32_t{p[3]} << 24;
}

// Words in the segment table of a frame announcing `segments` (<= kMaxSegments): 4 bytes of
// count plus 4 per segment, padded to a word.
size_t table_words(uint64_t segments) { return segments / 2 + 1; }

// The message size Cap'n Proto derives from the first `words` words of a frame (exact once the
// whole table is there, a lower bound before). `words` <= kMaxTableWords.
size_t size_from_prefix(const uint8_t* head, size_t words) {
  // expectedSizeInWordsFromPrefix reads aligned words; socket bytes have no alignment.
  std::array<capnp::word, kMaxTableWords> prefix;
  std::memcpy(static_cast<void*>(prefix.data()), head, words * kWordBytes);
  return capnp::expectedSizeInWordsFromPrefix(kj::arrayPtr(prefix.data(), words));
}

}  // namespace

capnp::ReaderOptions untrusted_reader_options() {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = kMaxMessageBytes / kWordBytes;
  options.nestingLimit = 64;
  return options;
}

kj::Array<capnp::word> encode(capnp::MessageBuilder& message) {
  return capnp::messageToFlatArray(message);
}

Message::Message(kj::Array<capnp::word> words)
    : words_(std::move(words)),
      reader_(std::make_unique<capnp::FlatArrayMessageReader>(words_.asPtr(),
                                                              untrusted_reader_options())) {}

// Invariants: buffer_[consumed_, scan_) holds complete, validated messages not yet returned;
// buffer_[scan_, end) is the start of the next one, whose total size is needed_words_ once its
// whole segment table has arrived (0 before). error_ is sticky.
Status FrameDecoder::feed(const void* data, size_t size) {
  if (!error_.empty()) return Status::error(error_);
  if (consumed_ > 0) {
    buffer_.erase(buffer_.begin(), buffer_.begin() + static_cast<ptrdiff_t>(consumed_));
    scan_ -= consumed_;
    consumed_ = 0;
  }
  const auto* bytes = static_cast<const uint8_t*>(data);
  buffer_.insert(buffer_.end(), bytes, bytes + size);

  for (;;) {
    const size_t available = buffer_.size() - scan_;
    if (needed_words_ == 0) {
      if (available < kWordBytes) break;
      const uint8_t* head = buffer_.data() + scan_;
      const uint64_t segments = uint64_t{load_le32(head)} + 1;
      if (segments > kMaxSegments) {
        error_ = fmt::format("malformed frame: {} segments announced (at most {})", segments,
                             kMaxSegments);
        return Status::error(error_);
      }
      const size_t table = table_words(segments);
      const size_t prefix_words = std::min(available / kWordBytes, table);
      const size_t words = size_from_prefix(head, prefix_words);
      // A partial table already gives a lower bound: refuse as soon as it is too large.
      if (words > kMaxMessageBytes / kWordBytes) {
        error_ = fmt::format("message of at least {} bytes exceeds the limit of {} bytes",
                             words * kWordBytes, kMaxMessageBytes);
        return Status::error(error_);
      }
      if (prefix_words < table) break;
      needed_words_ = words;
    }
    if (available < needed_words_ * kWordBytes) break;
    scan_ += needed_words_ * kWordBytes;
    needed_words_ = 0;
  }
  return Status::ok();
}

std::optional<Message> FrameDecoder::next() {
  if (consumed_ == scan_) return std::nullopt;
  // The segment table at consumed_ was validated and is complete, so the size is exact.
  const uint8_t* head = buffer_.data() + consumed_;
  const size_t words = size_from_prefix(head, table_words(uint64_t{load_le32(head)} + 1));

  auto message = kj::heapArray<capnp::word>(words);
  std::memcpy(message.begin(), head, words * kWordBytes);
  consumed_ += words * kWordBytes;
  if (consumed_ == buffer_.size()) {
    buffer_.clear();
    consumed_ = scan_ = 0;
  }
  return Message(std::move(message));
}

size_t FrameDecoder::buffered() const { return buffer_.size() - consumed_; }

}  // namespace hq::net
