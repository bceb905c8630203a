#pragma once
// Running task programs as child processes: each in its own process group, with its outputs
// redirected to files or captured through pipes, its exit and its output handled on the worker's
// event loop (no thread per task).

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <asio.hpp>

#include "common/result.h"
#include "common/time.h"

namespace hq::worker {

class TaskReaper;

struct SpawnSpec {
  std::vector<std::string> argv;  // argv[0] is looked up in PATH
  // Added to (and overriding) the worker's own environment.
  std::vector<std::pair<std::string, std::string>> env;
  std::string cwd;          // created (with parents) when missing; empty: the worker's cwd
  std::string stdout_path;  // created with parents, truncated; empty: /dev/null
  std::string stderr_path;  // the same; may equal stdout_path (then both share one file)
  // A captured channel goes through a pipe to the spawn's OutputHandler instead of to its path
  // (which is then ignored).
  bool capture_stdout = false;
  bool capture_stderr = false;
  // OS CPU numbers the child may run on (`--pin taskset`); empty: the worker's own affinity. The
  // child starts with it already set: no instruction of the program runs elsewhere.
  std::vector<uint32_t> cpu_affinity;
  // Given to the child on its standard input (read during spawn() only); null: /dev/null.
  const std::string* stdin_data = nullptr;
};

enum class OutputChannel : uint8_t { kStdout = 0, kStderr = 1 };

struct ExitStatus {
  bool signaled = false;
  int code = 0;    // exit code when !signaled
  int signal = 0;  // signal number when signaled
  bool success() const { return !signaled && code == 0; }
};

// "Program terminated with exit code 3" or "Program terminated. Received signal 9 (SIGKILL)"... the
// user-facing error text of a failed task.
std::string describe_exit(const ExitStatus& status);

// Owns the children it spawned. Lives on one io_context thread; callbacks run there.
class ProcessRunner {
 public:
  using ExitHandler = std::function<void(ExitStatus)>;
  // A piece of a captured channel, as read from its pipe (at most kCaptureChunkBytes). The bytes
  // are valid during the call only.
  using OutputHandler = std::function<void(OutputChannel, std::span<const uint8_t>)>;
  static constexpr size_t kCaptureChunkBytes = 64 << 10;

  // `drain_grace`: how long after a child's exit the runner keeps reading its captured pipes
  // while something else (a descendant that inherited them) holds them open.
  // `reaper` (when given; it must outlive the runner) is told each child's process group from
  // the moment its spawn returns until the group is gone (its leader reaped and no member left,
  // checked at the leader's exit and then every second), so that the groups die with this
  // process however it dies. A child whose group cannot be registered is killed, and its spawn
  // fails.
  explicit ProcessRunner(asio::io_context& io, Millis drain_grace = Millis(1000),
                         TaskReaper* reaper = nullptr);
  // Kills every remaining child's group with SIGKILL, and the groups outliving their leader.
  ~ProcessRunner();

  // Starts the program in a new process group. Fails with a message naming the cause when the
  // program cannot be started ("cannot start 'foo': No such file or directory"), or the cwd or an
  // output file cannot be created. `on_output` receives the captured channels' bytes, in order,
  // as they arrive. `on_exit` runs once, when the child has exited and been reaped and every
  // captured pipe has reached end-of-file; or, when a descendant still holds a pipe open,
  // `drain_grace` after the exit, once what was readable then has been handed to `on_output`
  // (the runner closes the pipes: later writes of the descendant fail with EPIPE).
  Result<pid_t> spawn(const SpawnSpec& spec, ExitHandler on_exit, OutputHandler on_output = {});
  // Sends SIGINT to the child's group, then SIGKILL after `grace` if the child has not exited.
  void terminate(pid_t pid, Millis grace);
  // Sends SIGKILL to every child's group now, and to the groups outliving their leader.
  void kill_all();
  // Children spawned whose ExitHandler has not run yet (exited ones still draining included).
  size_t running() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace hq::worker
