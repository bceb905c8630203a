#pragma once
// Every path hq builds lives here: the server directory and what it holds, and the names of the
// files in an output stream directory.

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "common/ids.h"
#include "common/result.h"

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
// The batch scripts and outputs of allocation queue `queue`'s allocations, one directory each
// (`hq alloc`): alloc/<queue>/<n>.
fs::path alloc_dir_path(const fs::path& server_dir, uint32_t queue, uint32_t n);

// Files of an output stream directory (`hq submit --stream DIR`, docs/stream-format.md).
inline constexpr std::string_view kStreamExtension = ".hqs";
inline constexpr std::string_view kStreamIndexExtension = ".hqx";
// "<server_uid>-<worker>-<pid>-<8 hex digits>.hqs"; characters of the UID outside [A-Za-z0-9]
// become '_'. Writers create the file with O_EXCL and pick another `random` on a collision.
std::string stream_file_name(std::string_view server_uid, WorkerId worker, uint32_t pid,
                             uint32_t random);
// A stream file of a directory listing: "*.hqs", not hidden.
bool is_stream_file_name(const fs::path& path);
// The index sidecar of a stream file: the same name with ".hqx".
fs::path stream_index_path(const fs::path& stream_file);

// Creates `dir` and its missing parents, each one it creates with mode 0700 whatever the umask
// (directories that exist are left as they are). Fails, naming the path, when one cannot be
// created or `dir` exists as something else than a directory.
Status create_private_directories(const fs::path& dir);

}  // namespace hq
