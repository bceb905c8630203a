// Listener: accepts connections of one role and admits those that finish the TLS handshake and
// the Hello exchange in time, within caps on handshakes in flight.
#include <list>
#include <optional>
#include <unordered_map>
#include <utility>

#include <capnp/message.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <spdlog/spdlog.h>

#include "net/connection.h"
#include "net/connection_detail.h"
#include "net/tls.h"

namespace hq::net {

namespace {

// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
constexpr auto kAcceptRetryDelay = std::chrono::milliseconds(100);
// Handshakes in flight (accepted, not yet authenticated) per listener and per source address:
// each costs a descriptor and about 90 KiB. Beyond either cap the oldest one is dropped, so a
// flood of silent connections cannot starve the descriptors and memory of real peers.
constexpr size_t kMaxPendingHandshakes = 1024;
constexpr size_t kMaxPendingPerSource = 64;

}  // namespace

using namespace detail;

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

}  // namespace hq::net
