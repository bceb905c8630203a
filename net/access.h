#pragma once
// The access file (access.json, mode 0600, in the server directory): where the server listens
// and the two keys, one for clients and one for workers. Whoever can read it can use the server.

#include <cstdint>
#include <string>

#include "common/paths.h"
#include "common/result.h"
#include "net/connection.h"

namespace hq::net {

inline constexpr int kAccessFileVersion = 1;

struct AccessRecord {
  std::string server_uid;
  std::string host;
  uint16_t client_port = 0;
  uint16_t worker_port = 0;
  Key client_key{};
  Key worker_key{};
  int pid = 0;
  int64_t start_time = 0;  // Unix ms
};

// A fresh record with new random keys and a new server UID.
AccessRecord new_access_record(std::string host);

// Writes atomically (a new temporary file, never a link left there, then rename) with mode
// 0600 whatever the umask.
Status write_access_file(const fs::path& path, const AccessRecord& record);
// Fails with a message naming the file and the problem: missing ("no server is running ...?"),
// readable by group or others (refused, like ssh does with a private key, naming the
// `chmod 600 FILE` that fixes it), unreadable, malformed, or of another format version.
Result<AccessRecord> read_access_file(const fs::path& path);

}  // namespace hq::net
