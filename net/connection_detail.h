#pragma once
// What the pieces of net/ that make connections share (connection.cc, listener.cc, dial.cc):
// the handshake's time bound and the words that name peers in messages. Not for other parts.

#include <chrono>
#include <string>

#include <fmt/format.h>
#include <kj/exception.h>
#include <asio.hpp>

#include "net/protocol.capnp.h"

namespace hq::net::detail {

using asio::ip::tcp;

// From the TCP connect (or accept) to the HelloReply.
inline constexpr auto kHandshakeTimeout = std::chrono::seconds(10);

inline const char* role_word(wire::Role role) {
  switch (role) {
    case wire::Role::CLIENT:
      return "client";
    case wire::Role::WORKER:
      return "worker";
  }
  return "peer of unknown role";
}

inline std::string endpoint_string(const tcp::endpoint& endpoint) {
  const asio::ip::address address = endpoint.address();
  if (address.is_v6()) return fmt::format("[{}]:{}", address.to_string(), endpoint.port());
  return fmt::format("{}:{}", address.to_string(), endpoint.port());
}

inline std::string remote_of(tcp::socket& socket) {
  asio::error_code ec;
  tcp::endpoint endpoint = socket.remote_endpoint(ec);
  return ec ? std::string("unknown peer") : endpoint_string(endpoint);
}

inline std::string exception_text(const kj::Exception& e) { return e.getDescription().cStr(); }

}  // namespace hq::net::detail
