#include "net/access.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <random>

#include <fmt/format.h>
#include <openssl/rand.h>
#include <nlohmann/json.hpp>

#include "net/tls.h"

namespace hq::net {
namespace {

std::string random_uid() {
  static const char kAlphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  unsigned char bytes[6];
  set_up_openssl();
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) throw std::runtime_error("RAND_bytes failed");
  std::string uid;
  for (unsigned char b : bytes) uid += kAlphabet[b % (sizeof(kAlphabet) - 1)];
  return uid;
}

}  // namespace

AccessRecord new_access_record(std::string client_host, std::string worker_host) {
  AccessRecord r;
  r.version = HQ_VERSION;
  r.server_uid = random_uid();
  r.client = AccessEndpoint{std::move(client_host), 0, random_key()};
  r.worker = AccessEndpoint{std::move(worker_host), 0, random_key()};
  return r;
}

Status write_access_file(const fs::path& path, const AccessRecord& r) {
  auto section = [](const AccessEndpoint& e) {
    return nlohmann::ordered_json{
        {"host", e.host}, {"port", e.port}, {"secret_key", key_to_hex(e.key)}};
  };
  nlohmann::ordered_json j = {{"version", HQ_VERSION}, {"server_uid", r.server_uid}};
  if (r.client) j["client"] = section(*r.client);
  if (r.worker) j["worker"] = section(*r.worker);
  // hq's own: which process serves it, since when (absent from a generated file).
  if (r.pid != 0) j["pid"] = r.pid;
  if (r.start_time != 0) j["start_time"] = r.start_time;
  std::string text = j.dump(2) + "\n";
  fs::path tmp = path;
  tmp += ".tmp";
  // A fresh file, never one (or a link) left there: whoever planted it could read the keys.
  if (::unlink(tmp.c_str()) != 0 && errno != ENOENT) {
    return Status::error(
        fmt::format("cannot remove the old '{}': {}", tmp.string(), std::strerror(errno)));
  }
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) {
    return Status::error(
        fmt::format("cannot write access file '{}': {}", tmp.string(), std::strerror(errno)));
  }
  bool ok = ::fchmod(fd, 0600) == 0;  // whatever the umask
  ok = ok && ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ok = ::fsync(fd) == 0 && ok;
  ::close(fd);
  if (!ok || ::rename(tmp.c_str(), path.c_str()) != 0) {
    return Status::error(
        fmt::format("cannot write access file '{}': {}", path.string(), std::strerror(errno)));
  }
  return Status::ok();
}

Result<AccessRecord> read_access_file(const fs::path& path, AccessUse use) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) {
      return Error{fmt::format(
          "no access file at '{}': is a server running? (start one with `hq server start`, or "
          "point to its directory with --server-dir or HQ_SERVER_DIR)",
          path.string())};
    }
    return Error{
        fmt::format("cannot read access file '{}': {}", path.string(), std::strerror(errno))};
  }
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return Error{
        fmt::format("cannot read access file '{}': {}", path.string(), std::strerror(err))};
  }
  // Like ssh with a private key: keys that others could read are not trusted (nor used).
  if ((st.st_mode & 077) != 0) {
    ::close(fd);
    return Error{fmt::format(
        "access file '{}' is readable by group or others (mode {:04o}): whoever can read it "
        "can use the server; make it private with `chmod 600 {}`",
        path.string(), st.st_mode & 07777, path.string())};
  }
  std::string text;
  char buffer[4096];
  for (;;) {
    ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      return Error{
          fmt::format("cannot read access file '{}': {}", path.string(), std::strerror(err))};
    }
    if (n == 0) break;
    text.append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  auto bad = [&](const std::string& what) {
    return Error{fmt::format("malformed access file '{}': {}", path.string(), what)};
  };
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("not a JSON object");
  try {
    const auto version = j.find("version");
    if (version != j.end() && version->is_number_integer()) {
      return Error{fmt::format(
          "access file '{}' is in hq's old flat layout (version {}); this hq reads "
          "HyperQueue's layout (\"client\" and \"worker\" sections): start the server again "
          "to rewrite it, or make a new one with `hq server generate-access`",
          path.string(), version->get<int64_t>())};
    }
    if (version == j.end() || !version->is_string()) return bad("no \"version\" string");
    AccessRecord r;
    r.version = version->get<std::string>();
    r.server_uid = j.at("server_uid").get<std::string>();
    auto section = [&](const char* name) -> Result<std::optional<AccessEndpoint>> {
      auto it = j.find(name);
      if (it == j.end()) return std::optional<AccessEndpoint>{};
      if (!it->is_object()) return bad(fmt::format("\"{}\" is not an object", name));
      AccessEndpoint e;
      e.host = it->at("host").get<std::string>();
      e.port = it->at("port").get<uint16_t>();
      auto key = key_from_hex(it->at("secret_key").get<std::string>());
      if (!key) return bad(fmt::format("{}.secret_key: {}", name, key.message()));
      e.key = *key;
      return std::optional<AccessEndpoint>(std::move(e));
    };
    auto client = section("client");
    if (!client) return client.error();
    auto worker = section("worker");
    if (!worker) return worker.error();
    r.client = std::move(*client);
    r.worker = std::move(*worker);
    if (!r.client && !r.worker) return bad("neither a \"client\" nor a \"worker\" section");
    // What the file lacks, for whom, and what it holds instead.
    auto missing = [&](const char* name, const char* who) {
      const char* held = r.client ? "client" : "worker";
      return Error{fmt::format(
          "access file '{}' has no \"{}\" section, which {} needs: it holds only the {} half "
          "(as written by `hq server generate-access --{}-file`); use the {} half or the whole "
          "file",
          path.string(), name, who, held, held, name)};
    };
    const bool server = use == AccessUse::kServer;
    if ((server || use == AccessUse::kClient) && !r.client) {
      return missing("client", server ? "a server" : "a client command");
    }
    if ((server || use == AccessUse::kWorker) && !r.worker) {
      return missing("worker", server ? "a server" : "a worker");
    }
    r.pid = j.value("pid", 0);
    r.start_time = j.value("start_time", int64_t{0});
    return r;
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
}

}  // namespace hq::net
