#pragma once
// Cap'n Proto standard stream framing for bytes that arrive in pieces from a socket. Bytes from a
// socket are untrusted: sizes are bounded and every reader gets traversal and nesting limits.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>

#include "common/result.h"

namespace hq::net {

// The largest message a peer may send (framing included).
inline constexpr size_t kMaxMessageBytes = 64u << 20;

// Limits for every reader of bytes that came from outside the process.
capnp::ReaderOptions untrusted_reader_options();

// The framed bytes of `message`, ready to write to a socket.
kj::Array<capnp::word> encode(capnp::MessageBuilder& message);

// One complete message. Owns its words; reading fields may throw kj::Exception on malformed
// content, so callers read it inside a boundary that catches (Connection does).
class Message {
 public:
  explicit Message(kj::Array<capnp::word> words);
  template <typename T>
  typename T::Reader root() {
    return reader_->getRoot<T>();
  }
  size_t size_in_bytes() const { return words_.size() * sizeof(capnp::word); }

 private:
  kj::Array<capnp::word> words_;
  std::unique_ptr<capnp::FlatArrayMessageReader> reader_;
};

// Splits a byte stream into messages. Not thread-safe; one per connection.
class FrameDecoder {
 public:
  // Appends bytes read from the peer. Fails (and the connection should be dropped) when the
  // segment table is malformed or announces more than kMaxMessageBytes.
  Status feed(const void* data, size_t size);
  // The next complete message, if one has fully arrived. Messages come out in arrival order.
  std::optional<Message> next();
  // Bytes received but not yet returned as a message.
  size_t buffered() const;

 private:
  std::vector<uint8_t> buffer_;
  size_t consumed_ = 0;
  size_t scan_ = 0;          // end of the complete messages in buffer_
  size_t needed_words_ = 0;  // 0: not known yet
  std::string error_;        // set by the first failed feed(); later feeds fail with it
};

}  // namespace hq::net
