// The outgoing side: async_connect (lookup, connect, TLS handshake, Hello) and the CLI's
// blocking SyncClient built on it.
#include <deque>
#include <optional>
#include <utility>
#include <vector>

#include <capnp/message.h>
#include <fmt/format.h>
#include <kj/exception.h>

#include "net/connection.h"
#include "net/connection_detail.h"
#include "net/tls.h"

namespace hq::net {

using namespace detail;

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
