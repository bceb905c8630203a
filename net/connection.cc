#include "net/connection.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include "net/connection_detail.h"
#include "net/tls.h"

namespace hq::net {

namespace {

// How long close() waits for the peer to answer our close_notify before dropping the socket.
constexpr auto kShutdownTimeout = std::chrono::seconds(5);
// Queued messages are merged into writes of about this size (fewer TLS records and syscalls).
constexpr size_t kCoalesceBytes = 256 * 1024;

}  // namespace

using namespace detail;

// --- Keys ---------------------------------------------------------------------------------------

Key random_key() {
  Key key;
  set_up_openssl();
  if (RAND_bytes(key.data(), static_cast<int>(key.size())) != 1) {
    throw std::runtime_error("OpenSSL's random generator failed");
  }
  return key;
}

std::string key_to_hex(const Key& key) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(key.size() * 2);
  for (uint8_t byte : key) {
    hex.push_back(kDigits[byte >> 4]);
    hex.push_back(kDigits[byte & 0xf]);
  }
  return hex;
}

Result<Key> key_from_hex(std::string_view hex) {
  Key key;
  if (hex.size() != key.size() * 2) {
    return Error{fmt::format("a key must be {} hex digits (256 bits), got {} characters",
                             key.size() * 2, hex.size())};
  }
  auto digit = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  for (size_t i = 0; i < hex.size(); ++i) {
    if (digit(hex[i]) < 0) {
      return Error{
          fmt::format("a key must be hex digits only, found '{}' at position {}", hex[i], i)};
    }
  }
  for (size_t i = 0; i < key.size(); ++i) {
    key[i] = static_cast<uint8_t>(digit(hex[2 * i]) << 4 | digit(hex[2 * i + 1]));
  }
  return key;
}

const char* role_name(wire::Role role) {
  switch (role) {
    case wire::Role::CLIENT:
      return "hq-client";
    case wire::Role::WORKER:
      return "hq-worker";
  }
  return "hq-unknown";
}

// --- Connection ---------------------------------------------------------------------------------
//
// States: open -> closing (close() called or the peer closed: no more sends, no more deliveries;
// queued writes drain, then TLS shutdown) -> closed (socket closed, on_close has run). fail()
// jumps to closed from anywhere. Every handler holds a shared_ptr to the connection and does
// nothing once closed_ is set.

Connection::Connection(std::unique_ptr<TlsStream> stream, FrameDecoder decoder)
    : stream_(std::move(stream)),
      decoder_(std::move(decoder)),
      remote_(remote_of(stream_->next_layer())),
      shutdown_timer_(stream_->get_executor()) {}

Connection::~Connection() = default;

void Connection::start(MessageHandler on_message, CloseHandler on_close) {
  on_message_ = std::move(on_message);
  on_close_ = std::move(on_close);
  asio::post(stream_->get_executor(), [self = shared_from_this()] {
    if (self->closing_) return;
    self->deliver();
    if (!self->closing_) self->read_more();
  });
}

void Connection::read_more() {
  stream_->async_read_some(asio::buffer(read_buffer_),
                           [self = shared_from_this()](const asio::error_code& ec, size_t bytes) {
                             self->on_read(ec, bytes);
                           });
}

void Connection::on_read(const asio::error_code& ec, size_t bytes) {
  if (closed_) return;
  if (ec) {
    if (closing_) return;  // our own shutdown is under way and ends the connection
    if (ec == asio::error::eof) {
      // Orderly close by the peer: it reads no more, so drop what is not yet being written.
      closing_ = true;
      drop_unsent();
      if (!writing_) begin_shutdown();
      return;
    }
    fail(describe_error(ec));
    return;
  }
  if (!closing_) {
    if (Status fed = decoder_.feed(read_buffer_.data(), bytes); !fed) {
      fail(fed.message());
      return;
    }
    deliver();
    if (closed_) return;
  }
  // While closing, keep reading (and discarding) so the peer's close_notify is seen and the
  // socket is never closed on unread data.
  read_more();
}

void Connection::deliver() {
  while (!closing_) {
    try {
      std::optional<Message> message = decoder_.next();
      if (!message) return;
      on_message_(*message);
    } catch (const kj::Exception& e) {
      fail("malformed message: " + exception_text(e));
      return;
    } catch (const std::exception& e) {
      fail(std::string("error handling a message: ") + e.what());
      return;
    }
  }
}

void Connection::send(capnp::MessageBuilder& message) {
  if (closing_ || closed_) return;
  send_frame(encode(message));
}

void Connection::send_frame(kj::Array<capnp::word> frame) {
  if (closing_ || closed_) return;
  const size_t bytes = frame.size() * sizeof(capnp::word);
  if (bytes > kMaxMessageBytes) {
    // The peer would refuse it and drop the connection: do so here, saying why.
    spdlog::error("a message of {} bytes for {} exceeds the {} byte limit", bytes, remote_,
                  kMaxMessageBytes);
    fail(fmt::format("an outgoing message of {} bytes exceeds the {} byte limit", bytes,
                     kMaxMessageBytes));
    return;
  }
  queued_bytes_ += bytes;
  if (queued_bytes_ > write_queue_limit_) {
    fail(fmt::format("the peer does not read what it is sent ({} bytes wait for it)",
                     queued_bytes_));
    return;
  }
  write_queue_.push_back(std::move(frame));
  if (!writing_) write_next();
}

void Connection::set_write_queue_limit(size_t bytes) { write_queue_limit_ = bytes; }

void Connection::drop_unsent() {
  // An in-flight write still reads the front buffer until its handler runs.
  while (write_queue_.size() > (writing_ ? 1u : 0u)) {
    queued_bytes_ -= write_queue_.back().size() * sizeof(capnp::word);
    write_queue_.pop_back();
  }
}

void Connection::write_next() {
  if (write_queue_.empty()) {
    writing_ = false;
    if (closing_ && !closed_) begin_shutdown();
    return;
  }
  size_t count = 0;
  size_t words = 0;
  for (const auto& queued : write_queue_) {
    if (count > 0 && (words + queued.size()) * sizeof(capnp::word) > kCoalesceBytes) break;
    words += queued.size();
    ++count;
  }
  if (count > 1) {
    auto merged = kj::heapArray<capnp::word>(words);
    capnp::word* out = merged.begin();
    for (size_t i = 0; i < count; ++i) {
      std::memcpy(out, write_queue_.front().begin(),
                  write_queue_.front().size() * sizeof(capnp::word));
      out += write_queue_.front().size();
      write_queue_.pop_front();
    }
    write_queue_.push_front(std::move(merged));
  }
  writing_ = true;
  const auto bytes = write_queue_.front().asBytes();
  asio::async_write(
      *stream_, asio::buffer(bytes.begin(), bytes.size()),
      [self = shared_from_this()](const asio::error_code& ec, size_t) { self->on_written(ec); });
}

void Connection::on_written(const asio::error_code& ec) {
  if (closed_) return;
  if (ec) {
    fail("write failed: " + describe_error(ec));
    return;
  }
  queued_bytes_ -= write_queue_.front().size() * sizeof(capnp::word);
  write_queue_.pop_front();
  write_next();
}

void Connection::close() {
  if (closing_ || closed_) return;
  closing_ = true;
  if (!writing_) begin_shutdown();
}

void Connection::begin_shutdown() {
  shutdown_timer_.expires_after(kShutdownTimeout);
  shutdown_timer_.async_wait([self = shared_from_this()](const asio::error_code& ec) {
    if (!ec) self->fail("");
  });
  // Sends close_notify and waits for the peer's; either way the connection ends here.
  stream_->async_shutdown([self = shared_from_this()](const asio::error_code&) { self->fail(""); });
}

void Connection::fail(const std::string& reason) {
  if (closed_) return;
  closed_ = true;
  closing_ = true;
  drop_unsent();
  shutdown_timer_.cancel();
  asio::error_code ignored;
  stream_->next_layer().close(ignored);
  CloseHandler on_close = std::move(on_close_);
  on_close_ = nullptr;
  on_message_ = nullptr;
  if (on_close) on_close(reason);
}

bool Connection::is_open() const { return !closing_ && !closed_; }

std::string Connection::remote_address() const { return remote_; }

}  // namespace hq::net
