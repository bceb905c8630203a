#include "common/paths.h"

#include <cstdlib>

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

}  // namespace hq
