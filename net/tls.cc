#include "net/tls.h"

#include <cstring>
#include <stdexcept>
#include <string_view>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>

namespace hq::net {

namespace {

// TLS_AES_256_GCM_SHA384. The PSK must name a suite whose hash the server's choice shares, and
// OpenSSL 3 prefers this one; both sides also pin it so nothing else can be negotiated.
constexpr unsigned char kCipherId[2] = {0x13, 0x02};
constexpr const char* kCipherName = "TLS_AES_256_GCM_SHA384";
constexpr const char* kCipherHash = "SHA2-384";

// Slot in each SSL_CTX that points at its PskContext::Secret. Asio keeps its own data in the
// SSL_CTX app data slot, so ours needs an index of its own. The index is process-wide; the
// secrets are not.
int secret_index() {
  static const int index = SSL_CTX_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

const PskContext::Secret* secret_of(SSL* ssl) {
  return static_cast<const PskContext::Secret*>(
      SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), secret_index()));
}

// A session carrying the external PSK, or null if OpenSSL cannot build one.
SSL_SESSION* psk_session(SSL* ssl, const Key& key) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kCipherId);
  if (cipher == nullptr) return nullptr;
  SSL_SESSION* session = SSL_SESSION_new();
  if (session == nullptr) return nullptr;
  if (SSL_SESSION_set1_master_key(session, key.data(), key.size()) != 1 ||
      SSL_SESSION_set_cipher(session, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(session, TLS1_3_VERSION) != 1) {
    SSL_SESSION_free(session);
    return nullptr;
  }
  return session;
}

// Client: offer the role's identity and key. Returns 0 (abort) only on internal failure.
int use_psk(SSL* ssl, const EVP_MD* md, const unsigned char** id, size_t* id_len,
            SSL_SESSION** session) {
  *session = nullptr;
  const PskContext::Secret* secret = secret_of(ssl);
  if (secret == nullptr) return 0;
  // After a HelloRetryRequest, md is the hash the server chose; a PSK of another hash is useless.
  // (By name: md is fetched from the provider, never the legacy object that
  // SSL_CIPHER_get_handshake_digest returns, and without the legacy tables that returns null.)
  if (md != nullptr && EVP_MD_is_a(md, kCipherHash) != 1) return 1;
  *session = psk_session(ssl, secret->key);
  if (*session == nullptr) return 0;
  const char* identity = role_name(secret->role);
  *id = reinterpret_cast<const unsigned char*>(identity);
  *id_len = std::strlen(identity);
  return 1;
}

// Server: only the listener's role identity has a key. An unknown identity gets no session, so
// the handshake fails (there is no certificate to fall back to).
int find_psk(SSL* ssl, const unsigned char* identity, size_t identity_len, SSL_SESSION** session) {
  *session = nullptr;
  const PskContext::Secret* secret = secret_of(ssl);
  if (secret == nullptr) return 0;
  std::string_view offered(reinterpret_cast<const char*>(identity), identity_len);
  if (offered != role_name(secret->role)) return 1;
  *session = psk_session(ssl, secret->key);
  return *session == nullptr ? 0 : 1;
}

// Returns the method it is given, so that the set-up runs in an initializer list.
asio::ssl::context::method set_up(asio::ssl::context::method method) {
  set_up_openssl();
  return method;
}

}  // namespace

void set_up_openssl() {
  static const int ok = [] {
    // First, so that libssl's own set-up cannot add the legacy tables: the "no" forms take the
    // places of the "add" ones, which then do nothing.
    OPENSSL_init_crypto(OPENSSL_INIT_NO_ADD_ALL_CIPHERS | OPENSSL_INIT_NO_ADD_ALL_DIGESTS |
                            OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ATEXIT,
                        nullptr);
    return OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ATEXIT, nullptr);
  }();
  (void)ok;  // a failure shows again, with its reason, where OpenSSL is used next
}

PskContext::PskContext(Token, Side side, wire::Role role, const Key& key)
    : ssl_(set_up(side == Side::kConnect ? asio::ssl::context::tls_client
                                         : asio::ssl::context::tls_server)),
      secret_{role, key} {
  SSL_CTX* ctx = ssl_.native_handle();
  auto check = [](int ok, const char* what) {
    if (ok != 1) {
      const char* reason = ERR_reason_error_string(ERR_peek_last_error());
      throw std::runtime_error(std::string("TLS setup failed in ") + what + ": " +
                               (reason != nullptr ? reason : "unknown OpenSSL error"));
    }
  };
  check(SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION), "min version");
  check(SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION), "max version");
  check(SSL_CTX_set_ciphersuites(ctx, kCipherName), "ciphersuites");
  check(SSL_CTX_set_ex_data(ctx, secret_index(), &secret_), "ex data");
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (side == Side::kConnect) {
    SSL_CTX_set_psk_use_session_callback(ctx, use_psk);
  } else {
    check(SSL_CTX_set_num_tickets(ctx, 0), "tickets");
    SSL_CTX_set_psk_find_session_callback(ctx, find_psk);
  }
}

PskContext::~PskContext() {
  SSL_CTX_set_ex_data(ssl_.native_handle(), secret_index(), nullptr);
  OPENSSL_cleanse(secret_.key.data(), secret_.key.size());
}

Result<std::shared_ptr<PskContext>> PskContext::create(Side side, wire::Role role, const Key& key) {
  try {
    return std::make_shared<PskContext>(Token{}, side, role, key);
  } catch (const std::exception& e) {
    return Error{e.what()};
  }
}

std::string describe_error(const asio::error_code& ec) {
  if (ec == asio::ssl::error::stream_truncated) {
    return "the peer closed the connection without a TLS close";
  }
  if (ec == asio::error::eof) return "the peer closed the connection";
  return ec.message();
}

}  // namespace hq::net
