#include "common/paths.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

#include <fmt/format.h>

namespace hq {

fs::path resolve_server_dir(const std::optional<std::string>& flag) {
  if (flag && !flag->empty()) return fs::absolute(*flag);
  if (const char* env = std::getenv("HQ_SERVER_DIR"); env && *env) return fs::absolute(env);
  const char* home = std::getenv("HOME");
  return fs::path(home && *home ? home : ".") / ".hq-server";
}

fs::path access_file_path(const fs::path& server_dir) { return server_dir / "access.json"; }
fs::path lock_file_path(const fs::path& server_dir) { return server_dir / "server.lock"; }
fs::path server_log_path(const fs::path& server_dir) { return server_dir / "server.log"; }
fs::path journal_dir_path(const fs::path& server_dir) { return server_dir / "journal"; }

fs::path alloc_dir_path(const fs::path& server_dir, uint32_t queue, uint32_t n) {
  return server_dir / "alloc" / std::to_string(queue) / std::to_string(n);
}

std::string stream_file_name(std::string_view server_uid, WorkerId worker, uint32_t pid,
                             uint32_t random) {
  std::string uid(server_uid);
  for (char& c : uid) {
    bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!plain) c = '_';
  }
  return fmt::format("{}-{}-{}-{:08x}{}", uid, worker, pid, random, kStreamExtension);
}

bool is_stream_file_name(const fs::path& path) {
  std::string name = path.filename().string();
  return name.size() > kStreamExtension.size() && name.ends_with(kStreamExtension) &&
         name[0] != '.';
}

fs::path stream_index_path(const fs::path& stream_file) {
  fs::path p = stream_file;
  p.replace_extension(std::string(kStreamIndexExtension));
  return p;
}

Status create_private_directories(const fs::path& dir) {
  fs::path path;
  for (const fs::path& part : dir.lexically_normal()) {
    if (part.empty()) continue;  // after a trailing slash
    path /= part;
    if (::mkdir(path.c_str(), 0700) == 0) {
      // The umask may have taken bits away; the mode is 0700 exactly.
      if (::chmod(path.c_str(), 0700) != 0) {
        return Status::error(fmt::format("{}: {}", path.string(), std::strerror(errno)));
      }
    } else if (errno != EEXIST) {
      return Status::error(fmt::format("{}: {}", path.string(), std::strerror(errno)));
    }
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return Status::error(fmt::format("{}: {}", dir.string(), std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) return Status::error(fmt::format("{}: Not a directory", dir.string()));
  return Status::ok();
}

}  // namespace hq
