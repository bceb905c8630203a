#pragma once
// Authenticated, encrypted connections between hq processes: TLS 1.3 with a pre-shared key per
// role, then a Hello/HelloReply exchange carrying the protocol version and role, then framed
// Cap'n Proto messages (net/protocol.capnp) in both directions.
//
// Threading: every object here belongs to the thread that runs its io_context; handlers run on it.

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include <capnp/message.h>
#include <asio.hpp>
#include <asio/ssl.hpp>

#include "common/result.h"
#include "net/framing.h"
#include "net/protocol.capnp.h"

namespace hq::net {

// A 256-bit pre-shared key.
using Key = std::array<uint8_t, 32>;

Key random_key();
std::string key_to_hex(const Key& key);
Result<Key> key_from_hex(std::string_view hex);

// The PSK identity sent in the clear in the TLS handshake: "hq-client" or "hq-worker".
const char* role_name(wire::Role role);

using TlsStream = asio::ssl::stream<asio::ip::tcp::socket>;

// An established connection after the handshake. Owned by shared_ptr; handlers keep it alive.
class Connection : public std::enable_shared_from_this<Connection> {
 public:
  using MessageHandler = std::function<void(Message&)>;
  // `reason` is empty for an orderly close by either side.
  using CloseHandler = std::function<void(const std::string& reason)>;
  // A peer that does not read what it is sent is dropped once this much waits for it.
  static constexpr size_t kDefaultWriteQueueLimit = 256u << 20;

  Connection(std::unique_ptr<TlsStream> stream, FrameDecoder decoder);
  ~Connection();

  // Starts reading. `on_message` runs for each message; a kj::Exception or std::exception it
  // throws (malformed message) closes the connection with that reason. `on_close` runs once.
  // Call at most once; messages that arrived with the handshake are delivered first, from the
  // io_context (never from inside start()). Both handlers are released once on_close has run.
  void start(MessageHandler on_message, CloseHandler on_close);
  // Queues a message; messages go out in order. A no-op once close() was called or the
  // connection is closed.
  void send(capnp::MessageBuilder& message);
  // Queues a frame made earlier by net::encode (framing.h), e.g. a reply held back until the
  // journal has synced what it shows. A frame over kMaxMessageBytes (which the peer would refuse)
  // closes the connection instead, naming its size; so does one that brings the bytes waiting
  // to be written over the write queue limit (a peer that stops reading is dropped, not
  // buffered for without bound).
  void send_frame(kj::Array<capnp::word> frame);
  // Bytes that may wait to be written (default 256 MiB).
  void set_write_queue_limit(size_t bytes);
  // Sends what is queued, then closes. on_close runs with an empty reason. Messages that arrive
  // meanwhile are discarded.
  void close();
  bool is_open() const;
  std::string remote_address() const;

 private:
  void read_more();
  void on_read(const asio::error_code& ec, size_t bytes);
  void deliver();
  void write_next();
  void on_written(const asio::error_code& ec);
  void begin_shutdown();
  // Forgets the queued messages not yet being written.
  void drop_unsent();
  // Closes the socket now (or ends an orderly close) and runs on_close with `reason`.
  void fail(const std::string& reason);

  std::unique_ptr<TlsStream> stream_;
  FrameDecoder decoder_;
  std::array<uint8_t, 64 * 1024> read_buffer_;
  std::deque<kj::Array<capnp::word>> write_queue_;
  size_t queued_bytes_ = 0;  // of write_queue_
  size_t write_queue_limit_ = kDefaultWriteQueueLimit;
  MessageHandler on_message_;
  CloseHandler on_close_;
  bool writing_ = false;
  bool closing_ = false;
  bool closed_ = false;
  std::string remote_;
  asio::steady_timer shutdown_timer_;  // bounds the wait for the peer's close_notify
};

// Accepts connections of one role on one port. Each accepted socket does the TLS handshake with
// `key` (a peer with another key is dropped after the failed handshake and learns nothing), then
// must send a Hello with protocolVersion and `role`; a mismatch gets a HelloReply naming both
// versions or roles, then the socket is closed.
class Listener {
 public:
  using AcceptHandler = std::function<void(std::shared_ptr<Connection>)>;

  // Binds host:port (port 0 picks a free one).
  static Result<std::unique_ptr<Listener>> bind(asio::io_context& io, const std::string& host,
                                                uint16_t port, wire::Role role, const Key& key,
                                                std::string server_uid);
  // `io` must outlive the Listener.
  ~Listener();
  uint16_t port() const;
  // Accepts until stop(); `on_accept` gets each connection after a successful Hello, not yet
  // started (call Connection::start on it).
  void start(AcceptHandler on_accept);
  // Stops accepting; handshakes still in flight are closed instead of delivered.
  void stop();
  // How long an accepted socket may take for TLS and Hello before it is dropped (default 10 s).
  void set_handshake_timeout(std::chrono::milliseconds timeout);
  // How many accepted sockets may be in their handshake at once, in all and from one address
  // (defaults 1024 and 64); beyond either, the oldest (of that address) is dropped.
  void set_handshake_limits(size_t in_flight, size_t per_source);

 private:
  struct Impl;
  explicit Listener(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

struct Connected {
  std::shared_ptr<Connection> connection;
  std::string server_uid;
};

// How a host name is looked up (an address is used as it is): on asio's lookup thread, so that
// the event loop goes on meanwhile, or in the calling thread, for callers that wait anyway.
enum class Resolve { kAsync, kInline };

// Connects, does the TLS handshake and the Hello exchange; `done` gets the connection or an
// error that names the problem (refused, wrong key, version mismatch, timeout). `done` runs on
// `io`, never from inside async_connect; the connection is not started yet. The whole exchange
// is bounded by a 10 s timeout (an inline lookup is neither cut short by it nor counted in it).
void async_connect(asio::io_context& io, const std::string& host, uint16_t port, wire::Role role,
                   const Key& key, std::function<void(Result<Connected>)> done,
                   Resolve resolve = Resolve::kAsync);

// A blocking request/response client for the CLI, built on the same pieces.
class SyncClient {
 public:
  static Result<std::unique_ptr<SyncClient>> connect(const std::string& host, uint16_t port,
                                                     wire::Role role, const Key& key);
  // Closes the connection in order, waiting at most a few seconds for the server's answer.
  ~SyncClient();
  // Sends `request` and waits for the next message from the server (messages the server sent
  // unasked are returned first, in order). Fails once the connection is lost.
  Result<Message> call(capnp::MessageBuilder& request);
  // Waits for the next message from the server without sending anything (a request answered
  // by several messages). Fails once the connection is lost.
  Result<Message> next();
  const std::string& server_uid() const;

 private:
  struct Impl;
  explicit SyncClient(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hq::net
