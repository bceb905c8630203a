#pragma once
// TLS 1.3 contexts authenticated by a pre-shared key (no certificates). Private to net/ and its
// tests; everyone else goes through net/connection.h.

#include <memory>
#include <string>

#include <asio/ssl.hpp>

#include "common/result.h"
#include "net/connection.h"

namespace hq::net {

// OpenSSL sets itself up on its first use: by default it reads the system's openssl.cnf and
// registers a cleanup to run at exit. hq's TLS is pinned (TLS 1.3, one suite, an external PSK),
// so nothing in that file applies to it, and the cleanup frees only what the exit frees anyway;
// for a short command such as `hq submit` the two were a tenth of its run (docs/benchmarks.md).
// Nor does it fill the legacy tables of every cipher and digest by name (which OpenSSL 3 then
// copies into its name map, a quarter of the first SSL_CTX_new): hq fetches what it uses from
// the provider.
// Called before any other use of OpenSSL; only the first call does anything.
void set_up_openssl();

// An asio::ssl::context for one side of connections of one role, holding its key. The SSL_CTX
// points at the key stored here, so this object must outlive every handshake started with
// ssl(); after a handshake the stream no longer needs it (no tickets, no renegotiation in 1.3).
class PskContext {
 public:
  enum class Side { kConnect, kAccept };

  // Connecting side: offers identity role_name(role) with `key`. Accepting side: accepts that
  // identity only (any other identity finds no key and the handshake fails).
  static Result<std::shared_ptr<PskContext>> create(Side side, wire::Role role, const Key& key);

  struct Secret {
    wire::Role role;
    Key key;
  };

  PskContext(const PskContext&) = delete;
  PskContext& operator=(const PskContext&) = delete;
  ~PskContext();

  asio::ssl::context& ssl() { return ssl_; }

 private:
  struct Token {};

 public:
  PskContext(Token, Side side, wire::Role role, const Key& key);

 private:
  asio::ssl::context ssl_;
  Secret secret_;
};

// A one-line description of a TLS or socket error, with OpenSSL's reason when there is one.
std::string describe_error(const asio::error_code& ec);

}  // namespace hq::net
