#include "cli/client.h"

#include <fmt/format.h>

#include "net/access.h"

namespace hq::cli {

OutputMode GlobalOptions::mode() const {
  if (output_mode == "json") return OutputMode::kJson;
  if (output_mode == "quiet") return OutputMode::kQuiet;
  return OutputMode::kCli;
}

Result<Client> Client::connect(const GlobalOptions& options) {
  fs::path dir = options.resolved_server_dir();
  auto access = net::read_access_file(access_file_path(dir), net::AccessUse::kClient);
  if (!access) return access.error();
  const net::AccessEndpoint& server = *access->client;
  auto client = net::SyncClient::connect(server.host, server.port, wire::Role::CLIENT, server.key);
  if (!client) {
    return Error{fmt::format("cannot reach the server of '{}' at {}:{} (is it running?): {}",
                             dir.string(), server.host, server.port, client.message())};
  }
  return Client(std::move(*client), access->server_uid);
}

Result<net::Message> Client::call(capnp::MessageBuilder& request) {
  auto response = client_->call(request);
  if (!response) return Error{"lost the server: " + response.message()};
  auto root = response->root<wire::ClientResponse>();
  if (root.isError()) return Error{root.getError().cStr()};
  return response;
}

Result<net::Message> Client::next() {
  auto response = client_->next();
  if (!response) return Error{"lost the server: " + response.message()};
  auto root = response->root<wire::ClientResponse>();
  if (root.isError()) return Error{root.getError().cStr()};
  return response;
}

}  // namespace hq::cli
