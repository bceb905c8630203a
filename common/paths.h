#pragma once
// Every path hq builds lives here: the server directory and what it holds.

#include <filesystem>
#include <optional>
#include <string>

namespace hq {

namespace fs = std::filesystem;

// The server directory: `--server-dir`, else $HQ_SERVER_DIR, else ~/.hq-server.
fs::path resolve_server_dir(const std::optional<std::string>& flag);

// access.json: host, ports, server UID and the two keys. Mode 0600.
fs::path access_file_path(const fs::path& server_dir);
// Held with flock() by the live server; a second server on the directory fails to take it.
fs::path lock_file_path(const fs::path& server_dir);
// The server's log when started in the background by tools.
fs::path server_log_path(const fs::path& server_dir);
// The journal's RocksDB directory (issue: the journal).
fs::path journal_dir_path(const fs::path& server_dir);

}  // namespace hq
