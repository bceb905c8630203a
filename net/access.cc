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

namespace hq::net {
namespace {

std::string random_uid() {
  static const char kAlphabet[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
  unsigned char bytes[6];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) throw std::runtime_error("RAND_bytes failed");
  std::string uid;
  for (unsigned char b : bytes) uid += kAlphabet[b % (sizeof(kAlphabet) - 1)];
  return uid;
}

}  // namespace

AccessRecord new_access_record(std::string host) {
  AccessRecord r;
  r.server_uid = random_uid();
  r.host = std::move(host);
  r.client_key = random_key();
  r.worker_key = random_key();
  return r;
}

Status write_access_file(const fs::path& path, const AccessRecord& r) {
  nlohmann::json j = {
      {"version", kAccessFileVersion},
      {"server_uid", r.server_uid},
      {"host", r.host},
      {"client_port", r.client_port},
      {"worker_port", r.worker_port},
      {"client_key", key_to_hex(r.client_key)},
      {"worker_key", key_to_hex(r.worker_key)},
      {"pid", r.pid},
      {"start_time", r.start_time},
  };
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

Result<AccessRecord> read_access_file(const fs::path& path) {
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
    int version = j.at("version").get<int>();
    if (version != kAccessFileVersion) {
      return Error{fmt::format("access file '{}' has format version {}, this hq reads version {}",
                               path.string(), version, kAccessFileVersion)};
    }
    AccessRecord r;
    r.server_uid = j.at("server_uid").get<std::string>();
    r.host = j.at("host").get<std::string>();
    r.client_port = j.at("client_port").get<uint16_t>();
    r.worker_port = j.at("worker_port").get<uint16_t>();
    auto client_key = key_from_hex(j.at("client_key").get<std::string>());
    if (!client_key) return bad("client_key: " + client_key.message());
    auto worker_key = key_from_hex(j.at("worker_key").get<std::string>());
    if (!worker_key) return bad("worker_key: " + worker_key.message());
    r.client_key = *client_key;
    r.worker_key = *worker_key;
    r.pid = j.value("pid", 0);
    r.start_time = j.value("start_time", int64_t{0});
    return r;
  } catch (const nlohmann::json::exception& e) {
    return bad(e.what());
  }
}

}  // namespace hq::net
