#pragma once
// Running the batch system's commands: an interface, so that the allocation logic can be tested
// with recorded outputs, and the real thing (posix_spawnp with pipes), made in main().

#include <string>
#include <vector>

#include "alloc/backend.h"
#include "common/result.h"
#include "common/time.h"

namespace hq::alloc {

class CommandRunner {
 public:
  virtual ~CommandRunner() = default;
  // Runs `argv` (argv[0] looked up on PATH) to its end with stdin from /dev/null and returns its
  // exit code and outputs; an error when it cannot be started or outlives the timeout (it is
  // killed then).
  virtual Result<CommandOutput> run(const std::vector<std::string>& argv) = 0;
};

// Blocks the calling thread while the command runs.
class ProcessRunner final : public CommandRunner {
 public:
  explicit ProcessRunner(Millis timeout = Millis{60'000}) : timeout_(timeout) {}
  Result<CommandOutput> run(const std::vector<std::string>& argv) override;

 private:
  Millis timeout_;
};

}  // namespace hq::alloc
