#pragma once
// The access file (access.json, mode 0600, in the server directory), in HyperQueue's layout:
//   {"version": "<hq version>", "server_uid": "...",
//    "client": {"host": "...", "port": N, "secret_key": "<64 hex>"},
//    "worker": {"host": "...", "port": N, "secret_key": "<64 hex>"},
//    "pid": N, "start_time": <Unix ms>}
// Either section may be missing: `hq server generate-access --client-file/--worker-file` writes
// files with one half, for machines that must only submit or only serve. Whoever can read a
// section can use the server in that role.

#include <cstdint>
#include <optional>
#include <string>

#include "common/paths.h"
#include "common/result.h"
#include "net/connection.h"

namespace hq::net {

// One role's way in: where the server listens for it and the key of that role.
struct AccessEndpoint {
  std::string host;
  uint16_t port = 0;  // 0 only in a record not yet bound (a server picks any free port)
  Key key{};
};

struct AccessRecord {
  std::string version;  // of the hq that wrote the file; write_access_file() writes its own
  std::string server_uid;
  std::optional<AccessEndpoint> client;
  std::optional<AccessEndpoint> worker;
  int pid = 0;             // of the running server; 0 in a generated file
  int64_t start_time = 0;  // Unix ms; 0 in a generated file
};

// What the reader of an access file is about to do, and so which sections it must hold.
enum class AccessUse {
  kAny,     // only the server's identity (e.g. to name the server that holds a directory)
  kClient,  // a client command: the client section
  kWorker,  // a worker: the worker section
  kServer,  // `hq server start --access-file`: both
};

// A fresh record with both sections, new random keys (one per role) and a new server UID;
// ports 0.
AccessRecord new_access_record(std::string client_host, std::string worker_host);

// Writes the sections `record` holds, atomically (a new temporary file, never a link left
// there, then rename) with mode 0600 whatever the umask.
Status write_access_file(const fs::path& path, const AccessRecord& record);
// Fails with a message naming the file and the problem: missing ("no server is running ...?"),
// readable by group or others (refused, like ssh does with a private key, naming the
// `chmod 600 FILE` that fixes it), unreadable, malformed, in hq's old flat format, or without
// a section that `use` needs (naming the section).
Result<AccessRecord> read_access_file(const fs::path& path, AccessUse use);

}  // namespace hq::net
