#pragma once
// The task reaper: a small process forked by the worker at start that kills the process groups
// of the worker's tasks when the worker dies, however it dies (kill -9 included).
//
// The worker tells the reaper each task's process group as the task starts, and when the group
// is gone, over a socket pair; when its end of the socket reaches end-of-file (the worker exited,
// crashed or was killed: the kernel closes the socket in every case), or when it is orphaned, the
// reaper sends SIGKILL to every group still registered and exits. One small message per task
// start and per group end; no process per task.

#include <sys/types.h>

#include <memory>

#include "common/result.h"

namespace hq::worker {

class TaskReaper {
 public:
  // Forks the reaper. Call it while the process has one thread (before the event loop, hwloc
  // and the TLS library start any): the child runs code of this process, not a new program.
  static Result<std::unique_ptr<TaskReaper>> start();
  // Closes the socket, so the reaper kills what is still registered and exits, and reaps it.
  ~TaskReaper();
  TaskReaper(const TaskReaper&) = delete;
  TaskReaper& operator=(const TaskReaper&) = delete;

  // `pgid` is a group of a task now: killed if the worker dies before remove(pgid). Fails when
  // the reaper is gone (then nothing protects the tasks: the caller must not run the task).
  Status add(pid_t pgid);
  // The group is gone (its leader reaped and no member left): the id may be reused by others.
  Status remove(pid_t pgid);
  pid_t pid() const { return pid_; }

 private:
  TaskReaper(pid_t pid, int fd) : pid_(pid), fd_(fd) {}
  Status send(char op, pid_t pgid);

  pid_t pid_;
  int fd_;
};

}  // namespace hq::worker
