#pragma once
// Starting a program in a child process the way glibc's posix_spawn does it (the child shares the
// worker's memory until its exec, and the caller waits until the exec has happened or failed),
// on a stack that is kept from one start to the next.
//
// posix_spawn maps a new stack for every child and unmaps it when the child has gone to its
// exec. The unmap must flush the TLB of every CPU the child ran on: an interrupt to the other
// CPUs, answered by them, which cost a third of the worker's own time per `/bin/true` task
// (docs/benchmarks.md, session 12). Private to worker/: ProcessRunner is its only user.

#include <sched.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>

namespace hq::worker {

// What the child is to run, and how it is set up first. Everything it points to must stay
// valid during Spawner::start().
struct ChildSetup {
  const char* program = nullptr;  // looked up in the worker's PATH when it holds no '/'
  char* const* argv = nullptr;    // null-terminated
  char* const* envp = nullptr;    // null-terminated
  // Descriptors to install as the child's standard input, output and error, each above 2; -1:
  // /dev/null. Two entries may be the same descriptor.
  int stdio[3] = {-1, -1, -1};
  const char* cwd = nullptr;  // null: the worker's own
  // CPUs the child may run on from its first instruction; null: the worker's affinity.
  const cpu_set_t* affinity = nullptr;
  size_t affinity_bytes = 0;
};

// The steps the child takes before its exec, in this order: the one that failed is reported.
enum class ChildStep : uint8_t {
  kStart,        // clone itself (in the worker)
  kGroup,        // setpgid: a process group of its own, led by the child
  kAffinity,     // sched_setaffinity
  kDescriptors,  // installing 0, 1 and 2, closing every other descriptor
  kDirectory,    // chdir into `cwd`
  kSignals,      // default dispositions, empty signal mask
  kExec,         // execve of each candidate path
};

struct SpawnOutcome {
  pid_t pid = -1;
  int pidfd = -1;  // close-on-exec; owned by the caller
  int error = 0;   // an errno value; 0: the child runs the program
  ChildStep failed = ChildStep::kStart;
  bool ok() const { return error == 0; }
};

// Not thread-safe: one Spawner per thread that starts children (the stack is shared by the
// starts, which is sound only because the caller is suspended while the child uses it).
class Spawner {
 public:
  // Throws std::system_error when the stack or /dev/null cannot be had.
  Spawner();
  ~Spawner();
  Spawner(const Spawner&) = delete;
  Spawner& operator=(const Spawner&) = delete;

  // Starts the child in a new process group, with default signal dispositions, an empty signal
  // mask and no descriptor but 0, 1 and 2, running `setup.program`. PATH lookup follows
  // posix_spawnp: candidates in PATH order, the first that execs wins; EACCES is reported when
  // some candidate gave it and none ran; there is no shell fallback for ENOEXEC. On failure the
  // child has been reaped and no descriptor is left open.
  SpawnOutcome start(const ChildSetup& setup);

 private:
  void* stack_ = nullptr;  // the mapping, a guard page at its low end
  size_t stack_bytes_ = 0;
  int dev_null_ = -1;      // /dev/null, read-write, above 2
  unsigned fd_limit_ = 0;  // for kernels without close_range: close every descriptor below it
};

}  // namespace hq::worker
