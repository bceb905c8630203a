#include "net/connection.h"

#include <algorithm>
#include <cstring>
#include <list>
#include <optional>
#include <unordered_map>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include "net/tls.h"

namespace hq::net {

namespace {

constexpr auto kHandshakeTimeout = std::chrono::seconds(10);
// How long close() waits for the peer to answer our close_notify before dropping the socket.
constexpr auto kShutdownTimeout = std::chrono::seconds(5);
// Queued messages are merged into writes of about this size (fewer TLS records and syscalls).
constexpr size_t kCoalesceBytes = 256 * 1024;
// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);
// Handshakes in flight (accepted, not yet authenticated) per listener and per source address:
// each costs a descriptor and about 90 KiB. Beyond either cap the oldest one is dropped, so a
// flood of silent connections cannot starve the descriptors and memory of real peers.
constexpr size_t kMaxPendingHandshakes = 1024;
constexpr size_t kMaxPendingPerSource = 64;

using asio::ip::tcp;

const char* role_word(wire::Role role) {
  switch (role) {
    case wire::Role::CLIENT:
      return "client";
    case wire::Role::WORKER:
      return "worker";
  }
  return "peer of unknown role";
}

std::string endpoint_string(const tcp::endpoint& endpoint) {
  const asio::ip::address address = endpoint.address();
  if (address.is_v6()) return fmt::format("[{}]:{}", address.to_string(), endpoint.port());
  return fmt::format("{}:{}", address.to_string(), endpoint.port());
}

std::string remote_of(tcp::socket& socket) {
  asio::error_code ec;
  tcp::endpoint endpoint = socket.remote_endpoint(ec);
  return ec ? std::string("unknown peer") : endpoint_string(endpoint);
}

std::string exception_text(const kj::Exception& e) { return e.getDescription().cStr(); }

}  // namespace

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

// --- Listener -----------------------------------------------------------------------------------

namespace {

// Shared by the Listener, its accept loop and the handshakes in flight, so none of them dangles
// when the Listener goes away first.
class Accepting;

struct ListenerState {
  ListenerState(asio::io_context& io, wire::Role role, std::shared_ptr<PskContext> tls,
                std::string server_uid)
      : acceptor(io),
        retry_timer(io),
        role(role),
        tls(std::move(tls)),
        server_uid(std::move(server_uid)) {}

  // Registers a new handshake, dropping the oldest ones beyond the caps. Returns its place.
  std::list<Accepting*>::iterator admit(Accepting* accepting, const std::string& source);
  void leave(std::list<Accepting*>::iterator place, const std::string& source);

  tcp::acceptor acceptor;
  asio::steady_timer retry_timer;
  wire::Role role;
  std::shared_ptr<PskContext> tls;
  std::string server_uid;
  Listener::AcceptHandler on_accept;
  std::chrono::milliseconds handshake_timeout = kHandshakeTimeout;
  bool stopped = false;
  // Handshakes in flight, oldest first, and how many per source address.
  std::list<Accepting*> pending;
  std::unordered_map<std::string, size_t> per_source;
  size_t max_pending = kMaxPendingHandshakes;
  size_t max_per_source = kMaxPendingPerSource;
  uint64_t evicted = 0;  // since the last warning about it
  std::chrono::steady_clock::time_point evict_logged{};
};

// One accepted socket until its Hello is answered: TLS handshake, read Hello, reply.
class Accepting : public std::enable_shared_from_this<Accepting> {
 public:
  Accepting(std::shared_ptr<ListenerState> state, tcp::socket socket)
      : state_(std::move(state)),
        remote_(remote_of(socket)),
        source_(source_of(socket)),
        stream_(std::make_unique<TlsStream>(std::move(socket), state_->tls->ssl())),
        timer_(stream_->get_executor()) {}
  ~Accepting() { leave(); }

  void start() {
    place_ = state_->admit(this, source_);
    admitted_ = true;
    if (done_) return;  // dropped at once: the caps leave no room at all
    timer_.expires_after(state_->handshake_timeout);
    timer_.async_wait([self = shared_from_this()](const asio::error_code& ec) {
      if (!ec) self->drop("timed out waiting for the TLS handshake and Hello");
    });
    stream_->async_handshake(
        asio::ssl::stream_base::server,
        [self = shared_from_this()](const asio::error_code& ec) { self->on_tls(ec); });
  }

  const std::string& source() const { return source_; }
  // Ends the handshake now, quietly: a newer one needs its place.
  void evict() { close_now(); }

 private:
  void on_tls(const asio::error_code& ec) {
    if (done_) return;
    if (ec) {
      drop("TLS handshake failed (a peer without the right key?): " + describe_error(ec));
      return;
    }
    read_hello();
  }

  void read_hello() {
    stream_->async_read_some(asio::buffer(buffer_),
                             [self = shared_from_this()](const asio::error_code& ec, size_t bytes) {
                               self->on_hello_bytes(ec, bytes);
                             });
  }

  void on_hello_bytes(const asio::error_code& ec, size_t bytes) {
    if (done_) return;
    if (ec) {
      drop("connection lost before Hello: " + describe_error(ec));
      return;
    }
    if (Status fed = decoder_.feed(buffer_.data(), bytes); !fed) {
      drop("malformed Hello: " + fed.message());
      return;
    }
    uint32_t version = 0;
    wire::Role role = wire::Role::CLIENT;
    try {
      std::optional<Message> message = decoder_.next();
      if (!message) {
        read_hello();
        return;
      }
      auto hello = message->root<wire::Hello>();
      version = hello.getVersion();
      role = hello.getRole();
    } catch (const kj::Exception& e) {
      drop("malformed Hello: " + exception_text(e));
      return;
    }
    if (version != wire::PROTOCOL_VERSION) {
      reply(
          fmt::format("protocol version mismatch: {} speaks {}, server speaks {} (use the "
                      "same hq version on both sides)",
                      role_word(role), version, wire::PROTOCOL_VERSION));
    } else if (role != state_->role) {
      reply(fmt::format("role mismatch: a {} connected to the server's {} port", role_word(role),
                        role_word(state_->role)));
    } else {
      reply("");
    }
  }

 private:
  static std::string source_of(tcp::socket& socket) {
    asio::error_code ec;
    tcp::endpoint endpoint = socket.remote_endpoint(ec);
    return ec ? std::string() : endpoint.address().to_string();
  }
  void leave() {
    if (!admitted_) return;
    admitted_ = false;
    state_->leave(place_, source_);
  }

  // Answers the Hello; an empty `error` accepts the connection.
  void reply(const std::string& error) {
    done_ = true;
    leave();
    timer_.cancel();
    capnp::MallocMessageBuilder builder;
    auto answer = builder.initRoot<wire::HelloReply>();
    answer.setOk(error.empty());
    answer.setError(error);
    answer.setVersion(wire::PROTOCOL_VERSION);
    if (error.empty()) answer.setServerUid(state_->server_uid);
    auto connection = std::make_shared<Connection>(std::move(stream_), std::move(decoder_));
    connection->send(builder);
    if (!error.empty()) {
      spdlog::warn("refused {} connection from {}: {}", role_word(state_->role), remote_, error);
      connection->close();
    } else if (state_->stopped || !state_->on_accept) {
      connection->close();
    } else {
      state_->on_accept(std::move(connection));
    }
  }

  void drop(const std::string& reason) {
    if (!close_now()) return;
    spdlog::warn("dropped {} connection from {}: {}", role_word(state_->role), remote_, reason);
  }

  // Closes the socket and gives up the handshake's place; false when it had ended already.
  bool close_now() {
    if (done_) return false;
    done_ = true;
    leave();
    timer_.cancel();
    asio::error_code ignored;
    stream_->next_layer().close(ignored);
    return true;
  }

  std::shared_ptr<ListenerState> state_;
  std::string remote_;
  std::string source_;  // the address without the port
  std::unique_ptr<TlsStream> stream_;
  asio::steady_timer timer_;
  FrameDecoder decoder_;
  std::array<uint8_t, 4096> buffer_;
  bool done_ = false;
  bool admitted_ = false;  // in state_->pending at place_
  std::list<Accepting*>::iterator place_;
};

std::list<Accepting*>::iterator ListenerState::admit(Accepting* accepting,
                                                     const std::string& source) {
  auto place = pending.insert(pending.end(), accepting);
  const size_t from_source = ++per_source[source];
  std::vector<Accepting*> victims;
  if (from_source > max_per_source) {
    // The oldest of the same source (the list is short: at most max_pending).
    size_t excess = from_source - max_per_source;
    for (Accepting* a : pending) {
      if (excess == 0) break;
      if (a->source() == source) {
        victims.push_back(a);
        --excess;
      }
    }
  }
  size_t over = pending.size() > max_pending ? pending.size() - max_pending : 0;
  for (auto it = pending.begin(); over > 0 && it != pending.end(); ++it) {
    if (std::find(victims.begin(), victims.end(), *it) == victims.end()) {
      victims.push_back(*it);
      --over;
    }
  }
  for (Accepting* victim : victims) victim->evict();
  evicted += victims.size();
  const auto now = std::chrono::steady_clock::now();
  if (evicted > 0 && now - evict_logged > std::chrono::seconds(10)) {
    spdlog::warn(
        "dropped {} unauthenticated {} connection(s): more than {} handshakes in flight ({} per "
        "address); the oldest go first",
        evicted, role_word(role), max_pending, max_per_source);
    evicted = 0;
    evict_logged = now;
  }
  return place;
}

void ListenerState::leave(std::list<Accepting*>::iterator place, const std::string& source) {
  pending.erase(place);
  auto it = per_source.find(source);
  if (it != per_source.end() && --it->second == 0) per_source.erase(it);
}

void accept_next(const std::shared_ptr<ListenerState>& state) {
  state->acceptor.async_accept([state](const asio::error_code& ec, tcp::socket socket) {
    if (state->stopped) return;
    if (ec) {
      spdlog::warn("accepting a {} connection failed: {}", role_word(state->role), ec.message());
      state->retry_timer.expires_after(kAcceptRetryDelay);
      state->retry_timer.async_wait([state](const asio::error_code& wait_ec) {
        if (!wait_ec && !state->stopped) accept_next(state);
      });
      return;
    }
    asio::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    std::make_shared<Accepting>(state, std::move(socket))->start();
    accept_next(state);
  });
}

}  // namespace

struct Listener::Impl {
  std::shared_ptr<ListenerState> state;
};

Listener::Listener(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Listener::~Listener() { stop(); }

Result<std::unique_ptr<Listener>> Listener::bind(asio::io_context& io, const std::string& host,
                                                 uint16_t port, wire::Role role, const Key& key,
                                                 std::string server_uid) {
  auto tls = PskContext::create(PskContext::Side::kAccept, role, key);
  if (!tls) return tls.error();
  const std::string where = fmt::format("{}:{}", host, port);
  asio::error_code ec;
  tcp::resolver resolver(io);
  auto endpoints = resolver.resolve(host, std::to_string(port), tcp::resolver::passive, ec);
  if (ec) return Error{fmt::format("cannot listen on {}: {}", where, ec.message())};

  auto state = std::make_shared<ListenerState>(io, role, std::move(*tls), std::move(server_uid));
  // The first address that works, as a server listening on a name would expect.
  ec = asio::error::host_not_found;
  for (const auto& entry : endpoints) {
    tcp::acceptor& acceptor = state->acceptor;
    asio::error_code ignored;
    acceptor.close(ignored);
    ec.clear();
    acceptor.open(entry.endpoint().protocol(), ec);
    if (!ec) acceptor.set_option(tcp::acceptor::reuse_address(true), ec);
    if (!ec) acceptor.bind(entry.endpoint(), ec);
    if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (!ec) break;
  }
  if (ec) return Error{fmt::format("cannot listen on {}: {}", where, ec.message())};
  return std::unique_ptr<Listener>(new Listener(std::make_unique<Impl>(Impl{std::move(state)})));
}

uint16_t Listener::port() const {
  asio::error_code ec;
  return impl_->state->acceptor.local_endpoint(ec).port();
}

void Listener::start(AcceptHandler on_accept) {
  impl_->state->on_accept = std::move(on_accept);
  accept_next(impl_->state);
}

void Listener::stop() {
  ListenerState& state = *impl_->state;
  if (state.stopped) return;
  state.stopped = true;
  asio::error_code ignored;
  state.acceptor.close(ignored);
  state.retry_timer.cancel();
  // stop() may run inside on_accept: release the handler later, not under its own feet.
  asio::post(state.acceptor.get_executor(), [state = impl_->state] { state->on_accept = nullptr; });
}

void Listener::set_handshake_timeout(std::chrono::milliseconds timeout) {
  impl_->state->handshake_timeout = timeout;
}

void Listener::set_handshake_limits(size_t in_flight, size_t per_source) {
  impl_->state->max_pending = std::max<size_t>(in_flight, 1);
  impl_->state->max_per_source = std::max<size_t>(per_source, 1);
}

// --- async_connect ------------------------------------------------------------------------------

namespace {

// One outgoing connection until the HelloReply: resolve, connect, TLS handshake, Hello.
class Connecting : public std::enable_shared_from_this<Connecting> {
 public:
  Connecting(asio::io_context& io, const std::string& host, uint16_t port, wire::Role role,
             Resolve resolve, std::shared_ptr<PskContext> tls,
             std::function<void(Result<Connected>)> done)
      : host_(host),
        port_(port),
        where_(fmt::format("{}:{}", host, port)),
        role_(role),
        resolve_(resolve),
        tls_(std::move(tls)),
        done_(std::move(done)),
        resolver_(io),
        stream_(std::make_unique<TlsStream>(io, tls_->ssl())),
        timer_(io) {}

  void start() {
    // An address needs no lookup; a name is looked up here when the caller may block (asio's
    // asynchronous lookup starts a thread, which costs a short-lived client more than the
    // lookup itself). The timeout starts after an inline lookup: its time is not the
    // handshake's.
    asio::error_code ec;
    const asio::ip::address address = asio::ip::make_address(host_, ec);
    if (!ec) {
      endpoints_.emplace_back(address, port_);
    } else if (resolve_ == Resolve::kInline) {
      auto results = resolver_.resolve(host_, std::to_string(port_), ec);
      endpoints_.assign(results.begin(), results.end());
    }
    timer_.expires_after(kHandshakeTimeout);
    timer_.async_wait([self = shared_from_this()](const asio::error_code& timer_ec) {
      if (!timer_ec) {
        self->finish(Error{fmt::format("timed out after {} s connecting to {}",
                                       kHandshakeTimeout.count(), self->where_)});
      }
    });
    if (!endpoints_.empty() || resolve_ == Resolve::kInline) {
      asio::post(resolver_.get_executor(), [self = shared_from_this(), ec] {
        self->on_resolved(self->endpoints_.empty() ? ec : asio::error_code());
      });
      return;
    }
    resolver_.async_resolve(host_, std::to_string(port_),
                            [self = shared_from_this()](const asio::error_code& resolve_ec,
                                                        tcp::resolver::results_type results) {
                              self->endpoints_.assign(results.begin(), results.end());
                              self->on_resolved(resolve_ec);
                            });
  }

 private:
  void on_resolved(const asio::error_code& ec) {
    if (finished_) return;
    if (ec || endpoints_.empty()) {
      finish(Error{fmt::format("cannot resolve {}: {}", host_, ec ? ec.message() : "no address")});
      return;
    }
    asio::async_connect(
        stream_->next_layer(), endpoints_,
        [self = shared_from_this()](const asio::error_code& connect_ec, const tcp::endpoint&) {
          self->on_connected(connect_ec);
        });
  }

  void on_connected(const asio::error_code& ec) {
    if (finished_) return;
    if (ec) {
      finish(Error{fmt::format("cannot connect to {}: {}", where_, ec.message())});
      return;
    }
    asio::error_code ignored;
    stream_->next_layer().set_option(tcp::no_delay(true), ignored);
    stream_->async_handshake(
        asio::ssl::stream_base::client,
        [self = shared_from_this()](const asio::error_code& tls_ec) { self->on_tls(tls_ec); });
  }

  void on_tls(const asio::error_code& ec) {
    if (finished_) return;
    if (ec) {
      finish(Error{fmt::format("TLS handshake with {} failed (wrong key in the access file?): {}",
                               where_, describe_error(ec))});
      return;
    }
    capnp::MallocMessageBuilder builder;
    auto hello = builder.initRoot<wire::Hello>();
    hello.setVersion(wire::PROTOCOL_VERSION);
    hello.setRole(role_);
    hello_ = encode(builder);
    const auto bytes = hello_.asBytes();
    asio::async_write(*stream_, asio::buffer(bytes.begin(), bytes.size()),
                      [self = shared_from_this()](const asio::error_code& write_ec, size_t) {
                        if (self->finished_) return;
                        if (write_ec) {
                          self->lost(write_ec);
                          return;
                        }
                        self->read_reply();
                      });
  }

  void read_reply() {
    stream_->async_read_some(asio::buffer(buffer_),
                             [self = shared_from_this()](const asio::error_code& ec, size_t bytes) {
                               self->on_reply_bytes(ec, bytes);
                             });
  }

  void on_reply_bytes(const asio::error_code& ec, size_t bytes) {
    if (finished_) return;
    if (ec) {
      lost(ec);
      return;
    }
    if (Status fed = decoder_.feed(buffer_.data(), bytes); !fed) {
      finish(Error{fmt::format("malformed HelloReply from {}: {}", where_, fed.message())});
      return;
    }
    bool ok = false;
    std::string error;
    std::string server_uid;
    try {
      std::optional<Message> message = decoder_.next();
      if (!message) {
        read_reply();
        return;
      }
      auto answer = message->root<wire::HelloReply>();
      ok = answer.getOk();
      error = answer.getError();
      server_uid = answer.getServerUid();
    } catch (const kj::Exception& e) {
      finish(Error{fmt::format("malformed HelloReply from {}: {}", where_, exception_text(e))});
      return;
    }
    if (!ok) {
      finish(Error{fmt::format("server at {} refused the connection: {}", where_, error)});
      return;
    }
    finish(Connected{std::make_shared<Connection>(std::move(stream_), std::move(decoder_)),
                     std::move(server_uid)});
  }

  void lost(const asio::error_code& ec) {
    finish(Error{
        fmt::format("connection to {} lost during the handshake: {}", where_, describe_error(ec))});
  }

  void finish(Result<Connected> result) {
    if (finished_) return;
    finished_ = true;
    timer_.cancel();
    if (!result) {
      resolver_.cancel();
      asio::error_code ignored;
      if (stream_) stream_->next_layer().close(ignored);
    }
    auto done = std::move(done_);
    done(std::move(result));
  }

  std::string host_;
  uint16_t port_;
  std::string where_;
  wire::Role role_;
  Resolve resolve_;
  std::shared_ptr<PskContext> tls_;
  std::function<void(Result<Connected>)> done_;
  tcp::resolver resolver_;
  std::vector<tcp::endpoint> endpoints_;
  std::unique_ptr<TlsStream> stream_;
  asio::steady_timer timer_;
  FrameDecoder decoder_;
  kj::Array<capnp::word> hello_;
  std::array<uint8_t, 4096> buffer_;
  bool finished_ = false;
};

}  // namespace

void async_connect(asio::io_context& io, const std::string& host, uint16_t port, wire::Role role,
                   const Key& key, std::function<void(Result<Connected>)> done, Resolve resolve) {
  auto tls = PskContext::create(PskContext::Side::kConnect, role, key);
  if (!tls) {
    asio::post(io, [done = std::move(done), error = tls.error()]() mutable { done(error); });
    return;
  }
  std::make_shared<Connecting>(io, host, port, role, resolve, std::move(*tls), std::move(done))
      ->start();
}

// --- SyncClient ---------------------------------------------------------------------------------

struct SyncClient::Impl {
  asio::io_context io;
  std::shared_ptr<Connection> connection;
  std::string server_uid;
  std::deque<Message> inbox;
  std::optional<std::string> closed;  // set once the connection ended, with its reason
};

SyncClient::SyncClient(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SyncClient::~SyncClient() {
  if (!impl_->closed) impl_->connection->close();
  // Until the close completes (bounded by the shutdown timeout) and no handler is left.
  impl_->io.restart();
  impl_->io.run();
}

Result<std::unique_ptr<SyncClient>> SyncClient::connect(const std::string& host, uint16_t port,
                                                        wire::Role role, const Key& key) {
  auto impl = std::make_unique<Impl>();
  std::optional<Result<Connected>> outcome;
  async_connect(
      impl->io, host, port, role, key,
      [&outcome](Result<Connected> result) { outcome.emplace(std::move(result)); },
      Resolve::kInline);
  impl->io.run();  // the handshake is the only work: run() returns once it is done
  if (!outcome) return Error{fmt::format("connecting to {}:{} did not complete", host, port)};
  if (!*outcome) return outcome->error();
  impl->connection = std::move((*outcome)->connection);
  impl->server_uid = std::move((*outcome)->server_uid);
  Impl* state = impl.get();
  impl->connection->start([state](Message& message) { state->inbox.push_back(std::move(message)); },
                          [state](const std::string& reason) {
                            state->closed = reason.empty() ? "closed by the server" : reason;
                          });
  return std::unique_ptr<SyncClient>(new SyncClient(std::move(impl)));
}

Result<Message> SyncClient::call(capnp::MessageBuilder& request) {
  if (!impl_->closed) impl_->connection->send(request);
  return next();
}

Result<Message> SyncClient::next() {
  Impl& impl = *impl_;
  impl.io.restart();
  while (impl.inbox.empty() && !impl.closed) {
    if (impl.io.run_one() == 0) break;
  }
  if (!impl.inbox.empty()) {
    Message message = std::move(impl.inbox.front());
    impl.inbox.pop_front();
    return message;
  }
  return Error{"connection to the server lost: " + impl.closed.value_or("no reply")};
}

const std::string& SyncClient::server_uid() const { return impl_->server_uid; }

}  // namespace hq::net
