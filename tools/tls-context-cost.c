/* How long OpenSSL's first SSL_CTX_new takes in a fresh process, and a second one, against the
   same static libcrypto/libssl as the `hq` binary (docs/benchmarks.md, session 11). Not part of
   the CMake build; build and run it by hand:

     cc -O2 tools/tls-context-cost.c -o /tmp/tls-context-cost \
        -Wl,-Bstatic -lssl -lcrypto -Wl,-Bdynamic -lpthread
     for i in 1 2 3; do /tmp/tls-context-cost; done
*/
#include <openssl/ssl.h>
#include <stdio.h>
#include <time.h>

static double now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(void) {
  double start = now_ms();
  /* As hq's set_up_openssl(). */
  OPENSSL_init_crypto(OPENSSL_INIT_NO_ADD_ALL_CIPHERS | OPENSSL_INIT_NO_ADD_ALL_DIGESTS |
                          OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ATEXIT,
                      NULL);
  OPENSSL_init_ssl(OPENSSL_INIT_NO_LOAD_CONFIG | OPENSSL_INIT_NO_ATEXIT, NULL);
  double init = now_ms();
  SSL_CTX* first = SSL_CTX_new(TLS_client_method());
  double first_done = now_ms();
  SSL_CTX* second = SSL_CTX_new(TLS_client_method());
  double second_done = now_ms();
  if (first == NULL || second == NULL) return 1;
  printf("init %.3f ms, first SSL_CTX_new %.3f ms, second %.3f ms\n", init - start,
         first_done - init, second_done - first_done);
  SSL_CTX_free(first);
  SSL_CTX_free(second);
  return 0;
}
