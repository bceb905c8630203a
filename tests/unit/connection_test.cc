#include "net/connection.h"

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <capnp/any.h>
#include <gtest/gtest.h>

#include "net/tls.h"

namespace hq::net {
namespace {

using asio::ip::tcp;

// Safety net only: every test finishes by running out of work long before this.
constexpr auto kDeadline = std::chrono::seconds(30);
const char* kServerUid = "uid-under-test";

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

void send_worker_info(Connection& connection, uint32_t value) {
  capnp::MallocMessageBuilder builder;
  builder.initRoot<wire::ClientRequest>().setWorkerInfo(value);
  connection.send(builder);
}

void reply_submitted(Connection& connection, uint32_t value) {
  capnp::MallocMessageBuilder builder;
  builder.initRoot<wire::ClientResponse>().setSubmitted(value);
  connection.send(builder);
}

// Answers workerInfo(n) with submitted(n + 1000); anything that is not a ClientRequest throws
// inside the handler.
void echo(Connection& connection, Message& message) {
  auto request = message.root<wire::ClientRequest>();
  if (request.which() != wire::ClientRequest::WORKER_INFO) {
    throw std::runtime_error("unexpected request");
  }
  reply_submitted(connection, request.getWorkerInfo() + 1000);
}

// A Listener serving `echo` on its own io_context thread, recording how connections end.
class EchoServer {
 public:
  EchoServer(wire::Role role, const Key& key) {
    auto bound = Listener::bind(io_, "127.0.0.1", 0, role, key, kServerUid);
    if (!bound) throw std::runtime_error(bound.message());
    listener_ = std::move(*bound);
    listener_->start([this](std::shared_ptr<Connection> connection) {
      ++accepted_;
      std::weak_ptr<Connection> weak = connection;
      connections_.push_back(connection);
      connection->start(
          [weak](Message& message) {
            if (auto self = weak.lock()) echo(*self, message);
          },
          [this](const std::string& reason) {
            std::lock_guard lock(mutex_);
            close_reasons_.push_back(reason);
            changed_.notify_all();
          });
    });
    thread_ = std::thread([this] { io_.run(); });
  }

  ~EchoServer() {
    asio::post(io_, [this] {
      listener_->stop();
      for (auto& connection : connections_) connection->close();
    });
    thread_.join();
  }

  uint16_t port() const { return listener_->port(); }

  // Waits until a connection has closed with a reason containing `needle` and returns it.
  std::string wait_for_close(const std::string& needle) {
    std::unique_lock lock(mutex_);
    std::string found;
    bool ok = changed_.wait_for(lock, kDeadline, [&] {
      for (const auto& reason : close_reasons_) {
        if (contains(reason, needle)) {
          found = reason;
          return true;
        }
      }
      return false;
    });
    EXPECT_TRUE(ok) << "no connection closed with \"" << needle << "\"";
    return found;
  }

  // Only read after the server thread has stopped or through the io_context.
  int accepted() {
    std::promise<int> count;
    asio::post(io_, [&] { count.set_value(accepted_); });
    return count.get_future().get();
  }

 private:
  asio::io_context io_;
  std::unique_ptr<Listener> listener_;
  std::vector<std::shared_ptr<Connection>> connections_;  // io thread only
  int accepted_ = 0;                                      // io thread only
  std::mutex mutex_;
  std::condition_variable changed_;
  std::vector<std::string> close_reasons_;
  std::thread thread_;
};

// A blocking TLS peer that speaks raw bytes, to play a misbehaving client.
class RawPeer {
 public:
  RawPeer(uint16_t port, wire::Role role, const Key& key)
      : tls_(*PskContext::create(PskContext::Side::kConnect, role, key)),
        stream_(io_, tls_->ssl()) {
    stream_.next_layer().connect({asio::ip::make_address("127.0.0.1"), port});
    stream_.handshake(asio::ssl::stream_base::client);
  }

  void send_hello(uint32_t version, wire::Role role) {
    capnp::MallocMessageBuilder builder;
    auto hello = builder.initRoot<wire::Hello>();
    hello.setVersion(version);
    hello.setRole(role);
    write(encode(builder));
  }

  void write(const kj::Array<capnp::word>& words) {
    auto bytes = words.asBytes();
    write_bytes(bytes.begin(), bytes.size());
  }
  void write_bytes(const void* data, size_t size) {
    asio::write(stream_, asio::buffer(data, size));
  }

  Message read_message() {
    for (;;) {
      if (auto message = decoder_.next()) return std::move(*message);
      std::array<uint8_t, 4096> buffer;
      size_t n = stream_.read_some(asio::buffer(buffer));
      if (!decoder_.feed(buffer.data(), n)) throw std::runtime_error("bad frame from server");
    }
  }

  // Reads until the server ends the connection; returns how it ended.
  asio::error_code read_until_closed() {
    std::array<uint8_t, 4096> buffer;
    asio::error_code ec;
    while (!ec) stream_.read_some(asio::buffer(buffer), ec);
    return ec;
  }

 private:
  asio::io_context io_;
  std::shared_ptr<PskContext> tls_;
  TlsStream stream_;
  FrameDecoder decoder_;
};

struct Keys {
  Key client = random_key();
  Key worker = random_key();
};

// --- Keys ---------------------------------------------------------------------------------------

TEST(KeyTest, HexRoundTrip) {
  Key key = random_key();
  EXPECT_NE(key, random_key());
  std::string hex = key_to_hex(key);
  EXPECT_EQ(hex.size(), 64u);
  auto back = key_from_hex(hex);
  ASSERT_TRUE(back) << back.message();
  EXPECT_EQ(*back, key);
  for (char& c : hex) c = static_cast<char>(std::toupper(c));
  auto upper = key_from_hex(hex);
  ASSERT_TRUE(upper);
  EXPECT_EQ(*upper, key);
}

TEST(KeyTest, BadHexIsRejectedWithAReason) {
  auto short_key = key_from_hex("abcd");
  ASSERT_FALSE(short_key);
  EXPECT_TRUE(contains(short_key.message(), "64 hex digits")) << short_key.message();
  std::string bad(64, 'a');
  bad[10] = 'g';
  auto not_hex = key_from_hex(bad);
  ASSERT_FALSE(not_hex);
  EXPECT_TRUE(contains(not_hex.message(), "'g' at position 10")) << not_hex.message();
}

TEST(KeyTest, RoleNames) {
  EXPECT_STREQ(role_name(wire::Role::CLIENT), "hq-client");
  EXPECT_STREQ(role_name(wire::Role::WORKER), "hq-worker");
}

// --- Async connections on one io_context --------------------------------------------------------

TEST(ConnectionTest, AsyncExchangeBothWays) {
  Keys keys;
  asio::io_context io;
  auto listener = Listener::bind(io, "127.0.0.1", 0, wire::Role::CLIENT, keys.client, kServerUid);
  ASSERT_TRUE(listener) << listener.message();
  std::string server_close = "not closed";
  int accepted = 0;
  (*listener)->start([&](std::shared_ptr<Connection> connection) {
    ++accepted;
    std::weak_ptr<Connection> weak = connection;
    connection->start(
        [weak](Message& message) {
          if (auto self = weak.lock()) echo(*self, message);
        },
        [&](const std::string& reason) {
          server_close = reason;
          (*listener)->stop();
        });
    // Unasked, right after the HelloReply: arrives first, possibly in the same read.
    reply_submitted(*connection, 1);
  });

  constexpr uint32_t kRequests = 100;
  std::vector<uint32_t> received;
  std::string client_close = "not closed";
  int client_closes = 0;
  std::string server_uid;
  std::shared_ptr<Connection> client;
  async_connect(io, "127.0.0.1", (*listener)->port(), wire::Role::CLIENT, keys.client,
                [&](Result<Connected> connected) {
                  ASSERT_TRUE(connected) << connected.message();
                  server_uid = connected->server_uid;
                  client = connected->connection;
                  EXPECT_TRUE(client->is_open());
                  EXPECT_TRUE(contains(client->remote_address(), "127.0.0.1:"));
                  client->start(
                      [&](Message& message) {
                        received.push_back(message.root<wire::ClientResponse>().getSubmitted());
                        if (received.size() == kRequests + 1) client->close();
                      },
                      [&](const std::string& reason) {
                        client_close = reason;
                        ++client_closes;
                      });
                  for (uint32_t i = 0; i < kRequests; ++i) send_worker_info(*client, i);
                });
  io.run_for(kDeadline);

  EXPECT_EQ(server_uid, kServerUid);
  EXPECT_EQ(accepted, 1);
  ASSERT_EQ(received.size(), kRequests + 1);
  EXPECT_EQ(received[0], 1u);
  for (uint32_t i = 0; i < kRequests; ++i) EXPECT_EQ(received[i + 1], i + 1000);
  EXPECT_EQ(client_close, "");
  EXPECT_EQ(client_closes, 1);
  EXPECT_EQ(server_close, "");
  ASSERT_TRUE(client);
  EXPECT_FALSE(client->is_open());
  send_worker_info(*client, 5);  // after close: a no-op, not a crash
}

TEST(ConnectionTest, CloseFlushesQueuedMessages) {
  Keys keys;
  asio::io_context io;
  auto listener = Listener::bind(io, "127.0.0.1", 0, wire::Role::WORKER, keys.worker, kServerUid);
  ASSERT_TRUE(listener) << listener.message();
  constexpr uint32_t kMessages = 3000;
  std::string server_close = "not closed";
  (*listener)->start([&](std::shared_ptr<Connection> connection) {
    (*listener)->stop();
    connection->start([](Message&) {}, [&](const std::string& reason) { server_close = reason; });
    // About 3 MB queued at once, then close: all of it must still arrive, in order.
    for (uint32_t i = 0; i < kMessages; ++i) {
      capnp::MallocMessageBuilder builder;
      auto failure = builder.initRoot<wire::ToWorker>().initCancel(64);
      failure[0].setJob(i);
      connection->send(builder);
    }
    connection->close();
    EXPECT_FALSE(connection->is_open());
    send_worker_info(*connection, 1);  // ignored: the connection is closing
  });

  std::vector<uint32_t> received;
  bool well_formed = true;
  std::string client_close = "not closed";
  std::shared_ptr<Connection> client;
  async_connect(io, "127.0.0.1", (*listener)->port(), wire::Role::WORKER, keys.worker,
                [&](Result<Connected> connected) {
                  ASSERT_TRUE(connected) << connected.message();
                  client = connected->connection;
                  client->start(
                      [&](Message& message) {
                        auto to_worker = message.root<wire::ToWorker>();
                        if (to_worker.which() != wire::ToWorker::CANCEL) {
                          well_formed = false;
                          return;
                        }
                        received.push_back(to_worker.getCancel()[0].getJob());
                      },
                      [&](const std::string& reason) { client_close = reason; });
                });
  io.run_for(kDeadline);

  EXPECT_TRUE(well_formed);
  ASSERT_EQ(received.size(), kMessages);
  for (uint32_t i = 0; i < kMessages; ++i) ASSERT_EQ(received[i], i);
  EXPECT_EQ(client_close, "");
  EXPECT_EQ(server_close, "");
}

// Runs async_connect against a listener of `listener_role` and returns the connect error; the
// listener must never deliver a connection.
std::string refused_connect(wire::Role listener_role, const Key& listener_key,
                            wire::Role connect_role, const Key& connect_key) {
  asio::io_context io;
  auto listener = Listener::bind(io, "127.0.0.1", 0, listener_role, listener_key, kServerUid);
  EXPECT_TRUE(listener) << listener.message();
  int accepted = 0;
  (*listener)->start([&](std::shared_ptr<Connection>) { ++accepted; });
  std::string error = "connected";
  const uint16_t port = (*listener)->port();
  async_connect(io, "127.0.0.1", port, connect_role, connect_key, [&](Result<Connected> connected) {
    if (!connected) error = connected.message();
    (*listener)->stop();
  });
  io.run_for(kDeadline);
  EXPECT_EQ(accepted, 0);
  EXPECT_TRUE(contains(error, "127.0.0.1:" + std::to_string(port))) << error;
  return error;
}

TEST(ConnectionTest, WrongKeyIsRefused) {
  Keys keys;
  std::string error =
      refused_connect(wire::Role::CLIENT, keys.client, wire::Role::CLIENT, random_key());
  EXPECT_TRUE(contains(error, "TLS handshake")) << error;
  EXPECT_TRUE(contains(error, "wrong key")) << error;
}

TEST(ConnectionTest, WorkerIdentityIsRefusedOnTheClientPort) {
  Keys keys;
  // The worker's own key, and even the client key: the identity hq-worker has no key here.
  std::string with_worker_key =
      refused_connect(wire::Role::CLIENT, keys.client, wire::Role::WORKER, keys.worker);
  EXPECT_TRUE(contains(with_worker_key, "TLS handshake")) << with_worker_key;
  std::string with_client_key =
      refused_connect(wire::Role::CLIENT, keys.client, wire::Role::WORKER, keys.client);
  EXPECT_TRUE(contains(with_client_key, "TLS handshake")) << with_client_key;
}

TEST(ConnectionTest, ConnectionRefusedNamesTheAddress) {
  asio::io_context io;
  // Bind a port, then free it, so nothing listens there.
  tcp::acceptor probe(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const uint16_t port = probe.local_endpoint().port();
  probe.close();
  std::string error;
  async_connect(io, "127.0.0.1", port, wire::Role::CLIENT, random_key(),
                [&](Result<Connected> connected) {
                  ASSERT_FALSE(connected);
                  error = connected.message();
                });
  io.run_for(kDeadline);
  EXPECT_TRUE(contains(error, "cannot connect to 127.0.0.1:" + std::to_string(port))) << error;
}

TEST(ConnectionTest, SilentPeerIsDroppedAfterTheHandshakeTimeout) {
  Keys keys;
  asio::io_context io;
  auto listener = Listener::bind(io, "127.0.0.1", 0, wire::Role::CLIENT, keys.client, kServerUid);
  ASSERT_TRUE(listener) << listener.message();
  (*listener)->set_handshake_timeout(std::chrono::milliseconds(200));
  int accepted = 0;
  (*listener)->start([&](std::shared_ptr<Connection>) { ++accepted; });

  tcp::socket silent(io);
  silent.connect({asio::ip::make_address("127.0.0.1"), (*listener)->port()});
  std::array<uint8_t, 16> buffer;
  asio::error_code ended;
  bool done = false;
  silent.async_read_some(asio::buffer(buffer), [&](const asio::error_code& ec, size_t) {
    ended = ec;
    done = true;
    (*listener)->stop();
  });
  io.run_for(kDeadline);
  EXPECT_TRUE(done);
  EXPECT_EQ(ended, asio::error::eof);
  EXPECT_EQ(accepted, 0);
}

// Silent connections beyond the per-address cap are dropped oldest first, so a flood of them
// never keeps a real client out, and never holds more than the cap of descriptors.
TEST(ConnectionTest, SilentFloodIsCappedAndARealClientStillConnects) {
  Keys keys;
  asio::io_context io;
  auto listener = Listener::bind(io, "127.0.0.1", 0, wire::Role::CLIENT, keys.client, kServerUid);
  ASSERT_TRUE(listener) << listener.message();
  (*listener)->set_handshake_limits(8, 4);
  int accepted = 0;
  std::vector<std::shared_ptr<Connection>> connections;
  (*listener)->start([&](std::shared_ptr<Connection> c) {
    ++accepted;
    connections.push_back(c);
  });

  constexpr int kSilent = 10;
  std::vector<std::unique_ptr<tcp::socket>> silent;
  std::vector<std::array<uint8_t, 16>> buffers(kSilent);
  int dropped = 0;
  bool connected = false;
  auto check_done = [&] {
    if (connected && dropped >= kSilent - 4 + 1) io.stop();
  };
  for (int i = 0; i < kSilent; ++i) {
    silent.push_back(std::make_unique<tcp::socket>(io));
    silent.back()->connect({asio::ip::make_address("127.0.0.1"), (*listener)->port()});
    silent.back()->async_read_some(asio::buffer(buffers[i]),
                                   [&](const asio::error_code& ec, size_t) {
                                     if (ec) ++dropped;
                                     check_done();
                                   });
  }
  std::string error;
  async_connect(io, "127.0.0.1", (*listener)->port(), wire::Role::CLIENT, keys.client,
                [&](Result<Connected> r) {
                  if (!r) error = r.message();
                  connected = r.is_ok();
                  if (r) connections.push_back(r->connection);
                  check_done();
                });
  io.run_for(kDeadline);
  EXPECT_TRUE(connected) << error;
  EXPECT_EQ(accepted, 1);
  // 10 silent ones over a cap of 4, and one more for the client's place.
  EXPECT_EQ(dropped, kSilent - 4 + 1);
}

// A peer that stops reading is dropped once what waits for it passes the write queue limit,
// instead of being buffered for without bound.
TEST(ConnectionTest, PeerThatDoesNotReadIsDropped) {
  Keys keys;
  asio::io_context io;
  auto listener = Listener::bind(io, "127.0.0.1", 0, wire::Role::CLIENT, keys.client, kServerUid);
  ASSERT_TRUE(listener) << listener.message();
  std::string reason;
  bool closed = false;
  std::shared_ptr<Connection> server_side;
  asio::steady_timer pace(io);
  uint64_t sent = 0;
  std::function<void()> send_more = [&] {
    if (closed) return;
    capnp::MallocMessageBuilder builder;
    builder.initRoot<wire::ClientResponse>().setError(std::string(256 * 1024, 'x'));
    server_side->send(builder);
    ++sent;
    pace.expires_after(std::chrono::milliseconds(1));
    pace.async_wait([&](const asio::error_code& ec) {
      if (!ec) send_more();
    });
  };
  (*listener)->start([&](std::shared_ptr<Connection> c) {
    server_side = c;
    c->set_write_queue_limit(4u << 20);
    c->start([](Message&) {},
             [&](const std::string& why) {
               reason = why;
               closed = true;
               pace.cancel();
               (*listener)->stop();
               io.stop();
             });
    send_more();
  });
  // The peer connects, then never reads again.
  std::shared_ptr<Connection> peer;
  async_connect(io, "127.0.0.1", (*listener)->port(), wire::Role::CLIENT, keys.client,
                [&](Result<Connected> r) {
                  ASSERT_TRUE(r) << r.message();
                  peer = r->connection;
                });
  io.run_for(kDeadline);
  EXPECT_TRUE(closed);
  EXPECT_TRUE(contains(reason, "does not read")) << reason;
  // More than the limit was offered before the drop: the kernel's buffers took some of it.
  EXPECT_GT(sent * 256 * 1024, 4u << 20);
}

// --- Against a server thread ------------------------------------------------------------------

TEST(SyncClientTest, CallsAndClosesCleanly) {
  Keys keys;
  EchoServer server(wire::Role::CLIENT, keys.client);
  {
    auto client = SyncClient::connect("127.0.0.1", server.port(), wire::Role::CLIENT, keys.client);
    ASSERT_TRUE(client) << client.message();
    EXPECT_EQ((*client)->server_uid(), kServerUid);
    for (uint32_t i = 0; i < 20; ++i) {
      capnp::MallocMessageBuilder request;
      request.initRoot<wire::ClientRequest>().setWorkerInfo(i);
      auto reply = (*client)->call(request);
      ASSERT_TRUE(reply) << reply.message();
      EXPECT_EQ(reply->root<wire::ClientResponse>().getSubmitted(), i + 1000);
    }
  }
  // The client's destructor closed the connection in order: the server saw no error.
  EXPECT_EQ(server.wait_for_close(""), "");
  EXPECT_EQ(server.accepted(), 1);
}

// Threads of this process now: read until two readings agree (a thread joined a moment ago
// may still be listed).
size_t thread_count() {
  auto read = [] {
    size_t n = 0;
    for ([[maybe_unused]] const auto& entry :
         std::filesystem::directory_iterator("/proc/self/task")) {
      ++n;
    }
    return n;
  };
  size_t last = read();
  for (size_t now = read(); now != last; now = read()) last = now;
  return last;
}

// Whether "localhost" names 127.0.0.1 here, where the test listeners are.
bool localhost_is_ipv4_loopback() {
  asio::io_context io;
  tcp::resolver resolver(io);
  asio::error_code ec;
  auto results = resolver.resolve("localhost", "0", ec);
  if (ec) return false;
  for (const auto& entry : results) {
    if (entry.endpoint().address() == asio::ip::make_address("127.0.0.1")) return true;
  }
  return false;
}

TEST(SyncClientTest, LooksUpANameWithoutALookupThread) {
  if (!localhost_is_ipv4_loopback()) GTEST_SKIP() << "localhost is not 127.0.0.1 here";
  Keys keys;
  EchoServer server(wire::Role::CLIENT, keys.client);
  const size_t before = thread_count();
  {
    // "localhost" is a name (looked up, to ::1 and 127.0.0.1 or one of them); the listener is
    // on 127.0.0.1 only, so the connect goes through every address the lookup gave.
    auto client = SyncClient::connect("localhost", server.port(), wire::Role::CLIENT, keys.client);
    ASSERT_TRUE(client) << client.message();
    capnp::MallocMessageBuilder request;
    request.initRoot<wire::ClientRequest>().setWorkerInfo(7);
    auto reply = (*client)->call(request);
    ASSERT_TRUE(reply) << reply.message();
    EXPECT_EQ(reply->root<wire::ClientResponse>().getSubmitted(), 1007u);
    // asio's asynchronous lookup would have left its thread running while the client lives.
    EXPECT_EQ(thread_count(), before);
  }
  EXPECT_EQ(server.wait_for_close(""), "");
}

TEST(ConnectionTest, AnAddressNeedsNoLookupAndANameIsLookedUp) {
  if (!localhost_is_ipv4_loopback()) GTEST_SKIP() << "localhost is not 127.0.0.1 here";
  Keys keys;
  asio::io_context io;
  auto listener = Listener::bind(io, "127.0.0.1", 0, wire::Role::CLIENT, keys.client, kServerUid);
  ASSERT_TRUE(listener) << listener.message();
  std::vector<std::shared_ptr<Connection>> accepted;
  (*listener)->start([&](std::shared_ptr<Connection> c) { accepted.push_back(std::move(c)); });
  const size_t before = thread_count();
  std::vector<std::string> outcomes;
  auto connect = [&](const std::string& host, auto then) {
    async_connect(io, host, (*listener)->port(), wire::Role::CLIENT, keys.client,
                  [&outcomes, then](Result<Connected> connected) {
                    outcomes.push_back(connected ? "connected" : connected.message());
                    if (connected) connected->connection->close();
                    then();
                  });
  };
  size_t threads_after_address = 0;
  connect("127.0.0.1", [&] {
    threads_after_address = thread_count();
    connect("localhost", [&] {
      (*listener)->stop();
      for (auto& c : accepted) c->close();
    });
  });
  io.run_for(kDeadline);
  EXPECT_EQ(outcomes, (std::vector<std::string>{"connected", "connected"}));
  EXPECT_EQ(threads_after_address, before);
}

TEST(SyncClientTest, WrongKeyIsAnError) {
  Keys keys;
  EchoServer server(wire::Role::CLIENT, keys.client);
  auto client = SyncClient::connect("127.0.0.1", server.port(), wire::Role::CLIENT, keys.worker);
  ASSERT_FALSE(client);
  EXPECT_TRUE(contains(client.message(), "TLS handshake with 127.0.0.1:")) << client.message();
  EXPECT_EQ(server.accepted(), 0);
}

TEST(HandshakeTest, WrongVersionIsRefusedNamingBothVersions) {
  Keys keys;
  EchoServer server(wire::Role::CLIENT, keys.client);
  RawPeer peer(server.port(), wire::Role::CLIENT, keys.client);
  peer.send_hello(wire::PROTOCOL_VERSION + 1, wire::Role::CLIENT);
  Message message = peer.read_message();
  auto reply = message.root<wire::HelloReply>();
  EXPECT_FALSE(reply.getOk());
  const std::string error = reply.getError();
  EXPECT_TRUE(contains(error, "client speaks " + std::to_string(wire::PROTOCOL_VERSION + 1)))
      << error;
  EXPECT_TRUE(contains(error, "server speaks " + std::to_string(wire::PROTOCOL_VERSION))) << error;
  EXPECT_EQ(reply.getVersion(), wire::PROTOCOL_VERSION);
  EXPECT_EQ(std::string(reply.getServerUid().cStr()), "");
  // The server closes in order after the refusal.
  EXPECT_EQ(peer.read_until_closed(), asio::error::eof);
  EXPECT_EQ(server.accepted(), 0);
}

TEST(HandshakeTest, WrongRoleInHelloIsRefusedNamingBothRoles) {
  Keys keys;
  EchoServer server(wire::Role::CLIENT, keys.client);
  RawPeer peer(server.port(), wire::Role::CLIENT, keys.client);
  peer.send_hello(wire::PROTOCOL_VERSION, wire::Role::WORKER);
  Message message = peer.read_message();
  auto reply = message.root<wire::HelloReply>();
  EXPECT_FALSE(reply.getOk());
  const std::string error = reply.getError();
  EXPECT_TRUE(contains(error, "a worker connected to the server's client port")) << error;
  EXPECT_EQ(peer.read_until_closed(), asio::error::eof);
  EXPECT_EQ(server.accepted(), 0);
}

TEST(HandshakeTest, RefusalBecomesTheConnectError) {
  // A fake server that refuses every Hello with its own text.
  Key key = random_key();
  asio::io_context io;
  tcp::acceptor acceptor(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  const uint16_t port = acceptor.local_endpoint().port();
  std::thread fake([&] {
    auto tls = PskContext::create(PskContext::Side::kAccept, wire::Role::WORKER, key);
    TlsStream stream(acceptor.accept(), (*tls)->ssl());
    stream.handshake(asio::ssl::stream_base::server);
    FrameDecoder decoder;
    std::optional<Message> hello;
    while (!hello) {
      std::array<uint8_t, 1024> buffer;
      size_t n = stream.read_some(asio::buffer(buffer));
      EXPECT_TRUE(decoder.feed(buffer.data(), n));
      hello = decoder.next();
    }
    EXPECT_EQ(hello->root<wire::Hello>().getRole(), wire::Role::WORKER);
    EXPECT_EQ(hello->root<wire::Hello>().getVersion(), wire::PROTOCOL_VERSION);
    capnp::MallocMessageBuilder builder;
    auto reply = builder.initRoot<wire::HelloReply>();
    reply.setOk(false);
    reply.setError("protocol version mismatch: worker speaks 1, server speaks 9");
    reply.setVersion(9);
    auto words = encode(builder);
    asio::write(stream, asio::buffer(words.asBytes().begin(), words.asBytes().size()));
    asio::error_code ignored;
    std::array<uint8_t, 64> buffer;
    stream.read_some(asio::buffer(buffer), ignored);  // until the client hangs up
  });
  auto client = SyncClient::connect("127.0.0.1", port, wire::Role::WORKER, key);
  fake.join();
  ASSERT_FALSE(client);
  EXPECT_TRUE(contains(client.message(),
                       "refused the connection: protocol version mismatch: "
                       "worker speaks 1, server speaks 9"))
      << client.message();
}

TEST(HandshakeTest, MalformedFrameDisconnectsOnlyThatPeer) {
  Keys keys;
  EchoServer server(wire::Role::CLIENT, keys.client);
  auto good = SyncClient::connect("127.0.0.1", server.port(), wire::Role::CLIENT, keys.client);
  ASSERT_TRUE(good) << good.message();

  RawPeer bad(server.port(), wire::Role::CLIENT, keys.client);
  bad.send_hello(wire::PROTOCOL_VERSION, wire::Role::CLIENT);
  Message message = bad.read_message();
  ASSERT_TRUE(message.root<wire::HelloReply>().getOk());
  // A segment table announcing 32 GiB.
  const uint32_t header[2] = {0, 0xffffffffu};
  bad.write_bytes(header, sizeof(header));
  EXPECT_NE(bad.read_until_closed(), asio::error_code());
  EXPECT_TRUE(contains(server.wait_for_close("exceeds the limit"), "bytes"));

  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setWorkerInfo(5);
  auto reply = (*good)->call(request);
  ASSERT_TRUE(reply) << reply.message();
  EXPECT_EQ(reply->root<wire::ClientResponse>().getSubmitted(), 1005u);
}

TEST(HandshakeTest, MalformedMessageDisconnectsOnlyThatPeer) {
  Keys keys;
  EchoServer server(wire::Role::CLIENT, keys.client);
  auto good = SyncClient::connect("127.0.0.1", server.port(), wire::Role::CLIENT, keys.client);
  ASSERT_TRUE(good) << good.message();
  auto bad = SyncClient::connect("127.0.0.1", server.port(), wire::Role::CLIENT, keys.client);
  ASSERT_TRUE(bad) << bad.message();

  // Well framed, but the root is a list where a ClientRequest struct is expected: reading it in
  // the server's handler throws.
  capnp::MallocMessageBuilder garbage;
  garbage.initRoot<capnp::AnyPointer>().initAs<capnp::List<uint32_t>>(3);
  auto refused = (*bad)->call(garbage);
  ASSERT_FALSE(refused);
  EXPECT_TRUE(contains(refused.message(), "connection to the server lost")) << refused.message();
  EXPECT_TRUE(contains(server.wait_for_close("malformed message"), "struct pointer"));

  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setWorkerInfo(6);
  auto reply = (*good)->call(request);
  ASSERT_TRUE(reply) << reply.message();
  EXPECT_EQ(reply->root<wire::ClientResponse>().getSubmitted(), 1006u);
}

TEST(HandshakeTest, PlaintextPeerIsDropped) {
  Keys keys;
  EchoServer server(wire::Role::CLIENT, keys.client);
  asio::io_context io;
  tcp::socket socket(io);
  socket.connect({asio::ip::make_address("127.0.0.1"), server.port()});
  const std::string request = "GET / HTTP/1.0\r\n\r\n";
  asio::write(socket, asio::buffer(request));
  std::array<uint8_t, 4096> buffer;
  asio::error_code ec;
  size_t total = 0;
  while (!ec) total += socket.read_some(asio::buffer(buffer), ec);
  // At most a TLS alert comes back; never anything of the protocol.
  EXPECT_LT(total, 64u);
  EXPECT_EQ(server.accepted(), 0);
}

}  // namespace
}  // namespace hq::net
