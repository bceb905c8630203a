#pragma once
// What every client command shares: the global options, the connection to the server, printing.

#include <memory>
#include <optional>
#include <string>

#include <capnp/message.h>

#include "common/paths.h"
#include "common/result.h"
#include "net/connection.h"
#include "net/protocol.capnp.h"

namespace hq::cli {

enum class OutputMode { kCli, kJson, kQuiet };

struct GlobalOptions {
  std::optional<std::string> server_dir;
  std::string output_mode = "cli";
  std::string log_level = "info";

  OutputMode mode() const;
  fs::path resolved_server_dir() const { return resolve_server_dir(server_dir); }
};

// A connection to the server of the chosen server directory, as a client.
class Client {
 public:
  static Result<Client> connect(const GlobalOptions& options);
  // Sends the request and returns the response; an error response becomes an Error with the
  // server's text.
  Result<net::Message> call(capnp::MessageBuilder& request);
  // The next message of a request answered by several (an error response as in call()).
  Result<net::Message> next();
  // The UID of the server, as its access file says.
  const std::string& server_uid() const { return server_uid_; }

 private:
  Client(std::unique_ptr<net::SyncClient> client, std::string server_uid)
      : client_(std::move(client)), server_uid_(std::move(server_uid)) {}
  std::shared_ptr<net::SyncClient> client_;
  std::string server_uid_;
};

// Thrown by commands to end with a message on stderr and the given exit code; caught in main().
struct CommandError {
  std::string message;
  int exit_code = 1;
};

// The value of a result, or a CommandError with `context: message`.
template <typename T>
T must(Result<T> r, const std::string& context = "") {
  if (!r) throw CommandError{context.empty() ? r.message() : context + ": " + r.message()};
  return std::move(r).value();
}

}  // namespace hq::cli
