#include "worker/process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace hq::worker {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// How long a test waits for something that should happen at once before failing.
constexpr auto kDeadline = 30s;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// A pipe whose write end the children inherit (it is not close-on-exec), so a child can say
// "ready" (or send a pid) once its signal traps are installed. Children spawned while it is open
// inherit it too; close_write() after the spawn keeps EOF detection working.
class ReadyPipe {
 public:
  ReadyPipe() {
    int fds[2];
    EXPECT_EQ(::pipe2(fds, O_CLOEXEC), 0);
    read_ = fds[0];
    write_ = fds[1];
    EXPECT_EQ(::fcntl(write_, F_SETFD, 0), 0);
  }
  ~ReadyPipe() {
    close_write();
    ::close(read_);
  }
  // The write end as a path: given as a child's stdout path, the runner opens it for the child
  // (a child inherits no descriptor but 0, 1 and 2).
  std::string path() const { return "/proc/self/fd/" + std::to_string(write_); }
  void close_write() {
    if (write_ >= 0) ::close(write_);
    write_ = -1;
  }
  // One line from the child, or "" on EOF or after the deadline.
  std::string read_line() {
    std::string line;
    auto end = Clock::now() + kDeadline;
    while (Clock::now() < end) {
      pollfd p{read_, POLLIN, 0};
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(end - Clock::now());
      if (::poll(&p, 1, static_cast<int>(left.count()) + 1) <= 0) continue;
      char c;
      ssize_t n = ::read(read_, &c, 1);
      if (n <= 0 || c == '\n') return line;
      line.push_back(c);
    }
    return line;
  }

 private:
  int read_ = -1;
  int write_ = -1;
};

SpawnSpec command(std::vector<std::string> argv) {
  SpawnSpec spec;
  spec.argv = std::move(argv);
  return spec;
}

ExitStatus exited(int code) {
  ExitStatus status;
  status.code = code;
  return status;
}

class ProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    static int counter = 0;
    dir_ = fs::temp_directory_path() /
           ("hq-process-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    runner_.reset();
    fs::remove_all(dir_);
  }

  // Runs the event loop until `done()` holds; false if the deadline passed first.
  bool run_until(const std::function<bool()>& done) {
    if (io_.stopped()) io_.restart();  // it stops whenever it runs out of work
    auto guard = asio::make_work_guard(io_);
    auto end = Clock::now() + kDeadline;
    while (!done()) {
      if (Clock::now() >= end) return false;
      io_.run_one_until(end);
    }
    return true;
  }

  // Spawns `spec`, expecting success; the exit lands in `*exit`.
  pid_t start(const SpawnSpec& spec, std::optional<ExitStatus>* exit) {
    auto pid = runner_->spawn(spec, [exit](ExitStatus status) {
      EXPECT_FALSE(exit->has_value()) << "exit reported twice";
      *exit = status;
    });
    EXPECT_TRUE(pid.is_ok()) << pid.message();
    return pid.is_ok() ? *pid : -1;
  }

  ExitStatus run(const SpawnSpec& spec) {
    std::optional<ExitStatus> exit;
    start(spec, &exit);
    EXPECT_TRUE(run_until([&] { return exit.has_value(); })) << "child did not exit in time";
    return exit.value_or(exited(-1));
  }

  static SpawnSpec shell(std::string script) { return command({"sh", "-c", std::move(script)}); }

  asio::io_context io_;
  std::optional<ProcessRunner> runner_{std::in_place, io_};
  fs::path dir_;
};

TEST_F(ProcessTest, ReportsExitCodes) {
  ExitStatus ok = run(command({"true"}));
  EXPECT_TRUE(ok.success());
  EXPECT_FALSE(ok.signaled);
  EXPECT_EQ(ok.code, 0);

  ExitStatus failed = run(shell("exit 42"));
  EXPECT_FALSE(failed.success());
  EXPECT_FALSE(failed.signaled);
  EXPECT_EQ(failed.code, 42);
  EXPECT_EQ(runner_->running(), 0u);
}

TEST_F(ProcessTest, ReportsDeathBySignal) {
  ExitStatus status = run(shell("kill -SEGV $$"));
  EXPECT_TRUE(status.signaled);
  EXPECT_EQ(status.signal, SIGSEGV);
  EXPECT_EQ(describe_exit(status), "Program terminated. Received signal 11 (SIGSEGV)");
}

TEST_F(ProcessTest, CapturesStdoutAndStderr) {
  SpawnSpec spec = shell("echo out; echo err >&2");
  spec.stdout_path = (dir_ / "a" / "b" / "out.txt").string();
  spec.stderr_path = (dir_ / "c" / "err.txt").string();
  EXPECT_TRUE(run(spec).success());
  EXPECT_EQ(read_file(spec.stdout_path), "out\n");
  EXPECT_EQ(read_file(spec.stderr_path), "err\n");
}

TEST_F(ProcessTest, ChildInheritsNoOtherDescriptors) {
  // A descriptor without close-on-exec, like a socket the worker holds, must not leak into tasks.
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  SpawnSpec spec = shell("for fd in " + std::to_string(fds[0]) + " " + std::to_string(fds[1]) +
                         "; do [ -e /proc/$$/fd/$fd ] && echo leaked $fd; done; true");
  spec.stdout_path = (dir_ / "out.txt").string();
  EXPECT_TRUE(run(spec).success());
  ::close(fds[0]);
  ::close(fds[1]);
  EXPECT_EQ(read_file(spec.stdout_path), "");
}

TEST_F(ProcessTest, TruncatesExistingOutput) {
  fs::path out = dir_ / "out.txt";
  std::ofstream(out) << "previous content that is longer\n";
  SpawnSpec spec = shell("echo new");
  spec.stdout_path = out.string();
  EXPECT_TRUE(run(spec).success());
  EXPECT_EQ(read_file(out), "new\n");
}

TEST_F(ProcessTest, SamePathSharesOneFile) {
  SpawnSpec spec = shell("echo one; echo two >&2; echo three");
  spec.stdout_path = (dir_ / "both.txt").string();
  spec.stderr_path = spec.stdout_path;
  EXPECT_TRUE(run(spec).success());
  EXPECT_EQ(read_file(spec.stdout_path), "one\ntwo\nthree\n");
}

TEST_F(ProcessTest, EmptyPathsMeanDevNullAndStdinIsDevNull) {
  // `cat` ends at once because stdin is /dev/null; its output goes nowhere.
  EXPECT_TRUE(run(shell("cat; echo x; echo y >&2")).success());

  SpawnSpec spec = shell("cat; echo done");
  spec.stdout_path = (dir_ / "out.txt").string();
  EXPECT_TRUE(run(spec).success());
  EXPECT_EQ(read_file(spec.stdout_path), "done\n");
}

TEST_F(ProcessTest, PassesAndOverridesEnvironment) {
  ASSERT_EQ(::setenv("HQ_PROCESS_TEST_KEEP", "inherited", 1), 0);
  ASSERT_EQ(::setenv("HQ_PROCESS_TEST_OVERRIDE", "old", 1), 0);
  SpawnSpec spec = shell(
      "printf '%s|%s|%s|%s' \"$HQ_PROCESS_TEST_KEEP\" \"$HQ_PROCESS_TEST_OVERRIDE\" "
      "\"$HQ_PROCESS_TEST_NEW\" \"$(env | grep -c '^HQ_PROCESS_TEST_OVERRIDE=')\"");
  spec.env = {{"HQ_PROCESS_TEST_OVERRIDE", "new"}, {"HQ_PROCESS_TEST_NEW", "a b=c"}};
  spec.stdout_path = (dir_ / "env.txt").string();
  EXPECT_TRUE(run(spec).success());
  EXPECT_EQ(read_file(spec.stdout_path), "inherited|new|a b=c|1");
  ::unsetenv("HQ_PROCESS_TEST_KEEP");
  ::unsetenv("HQ_PROCESS_TEST_OVERRIDE");
}

TEST_F(ProcessTest, RejectsInvalidEnvironmentName) {
  SpawnSpec spec = command({"true"});
  spec.env = {{"A=B", "x"}};
  auto pid = runner_->spawn(spec, [](ExitStatus) { ADD_FAILURE() << "must not run"; });
  ASSERT_FALSE(pid.is_ok());
  EXPECT_EQ(pid.message(), "invalid environment variable name 'A=B' for 'true'");
}

TEST_F(ProcessTest, CreatesAndUsesWorkingDirectory) {
  fs::path cwd = dir_ / "x" / "y" / "z";
  SpawnSpec spec = shell("pwd; echo hi > relative.txt");
  spec.cwd = cwd.string();
  spec.stdout_path = (dir_ / "pwd.txt").string();
  EXPECT_TRUE(run(spec).success());
  EXPECT_EQ(read_file(spec.stdout_path), fs::canonical(cwd).string() + "\n");
  EXPECT_EQ(read_file(cwd / "relative.txt"), "hi\n");
}

TEST_F(ProcessTest, RelativeOutputPathsAreResolvedInTheWorkingDirectory) {
  SpawnSpec spec = shell("echo out; echo err >&2");
  spec.cwd = (dir_ / "work").string();
  spec.stdout_path = "logs/out.txt";
  spec.stderr_path = "logs/err.txt";
  EXPECT_TRUE(run(spec).success());
  EXPECT_EQ(read_file(dir_ / "work" / "logs" / "out.txt"), "out\n");
  EXPECT_EQ(read_file(dir_ / "work" / "logs" / "err.txt"), "err\n");
}

TEST_F(ProcessTest, MissingProgramIsAnErrorNamingIt) {
  auto pid = runner_->spawn(command({"nonexistent-prog"}),
                            [](ExitStatus) { ADD_FAILURE() << "must not run"; });
  ASSERT_FALSE(pid.is_ok());
  EXPECT_EQ(pid.message(), "cannot start 'nonexistent-prog': No such file or directory");
  EXPECT_EQ(runner_->running(), 0u);

  auto empty = runner_->spawn(SpawnSpec{}, [](ExitStatus) {});
  ASSERT_FALSE(empty.is_ok());
  EXPECT_EQ(empty.message(), "cannot start a task with an empty command");
}

TEST_F(ProcessTest, NonExecutableScriptRunsThroughItsShebang) {
  // Mode 0600 and a '#!' line with one argument: run as "/bin/sh -e ./script.sh ARGS".
  fs::create_directories(dir_ / "work");
  fs::path script = dir_ / "work" / "script.sh";
  std::ofstream(script) << "#!/bin/sh -e\necho \"$0|$1|$2\"\nfalse\necho not reached\n";
  fs::permissions(script, fs::perms::owner_read | fs::perms::owner_write);
  SpawnSpec spec = command({"./script.sh", "a b", "c"});
  spec.cwd = (dir_ / "work").string();  // the relative path is the child's
  spec.stdout_path = (dir_ / "out.txt").string();
  ExitStatus status = run(spec);
  EXPECT_EQ(status.code, 1);  // -e took effect: `false` ended it
  EXPECT_EQ(read_file(dir_ / "out.txt"), "./script.sh|a b|c\n");
}

TEST_F(ProcessTest, NonExecutableFileWithoutShebangIsAnErrorNamingIt) {
  fs::path data = dir_ / "data.txt";
  std::ofstream(data) << "just data\n";
  fs::permissions(data, fs::perms::owner_read | fs::perms::owner_write);
  auto pid = runner_->spawn(command({data.string()}), [](ExitStatus) { ADD_FAILURE(); });
  ASSERT_FALSE(pid.is_ok());
  EXPECT_EQ(pid.message(),
            "cannot start '" + data.string() +
                "': Permission denied: the file is not executable and has no '#!' line naming an "
                "interpreter (make it executable with chmod +x, or start it with a line such as "
                "#!/bin/bash)");
  // A shebang naming an interpreter that does not exist.
  fs::path script = dir_ / "script.sh";
  std::ofstream(script) << "#!/nonexistent/shell\n";
  fs::permissions(script, fs::perms::owner_read | fs::perms::owner_write);
  pid = runner_->spawn(command({script.string()}), [](ExitStatus) { ADD_FAILURE(); });
  ASSERT_FALSE(pid.is_ok());
  EXPECT_EQ(pid.message(), "cannot start '" + script.string() +
                               "' through its interpreter '/nonexistent/shell': No such file or "
                               "directory");
  // A directory is not a program either.
  pid = runner_->spawn(command({dir_.string()}), [](ExitStatus) { ADD_FAILURE(); });
  ASSERT_FALSE(pid.is_ok());
  EXPECT_EQ(pid.message(), "cannot start '" + dir_.string() + "': Permission denied");
  EXPECT_EQ(runner_->running(), 0u);
}

TEST_F(ProcessTest, UncreatableOutputOrDirectoryIsAnError) {
  // A regular file where a directory would have to be: fails even for root.
  fs::path blocker = dir_ / "file";
  std::ofstream(blocker) << "x";

  SpawnSpec out = command({"true"});
  out.stdout_path = (blocker / "sub" / "out.txt").string();
  auto r1 = runner_->spawn(out, [](ExitStatus) { ADD_FAILURE() << "must not run"; });
  ASSERT_FALSE(r1.is_ok());
  EXPECT_EQ(r1.message(), "cannot open stdout file '" + out.stdout_path + "': Not a directory");

  SpawnSpec err = command({"true"});
  err.stderr_path = dir_.string();  // a directory
  auto r2 = runner_->spawn(err, [](ExitStatus) { ADD_FAILURE() << "must not run"; });
  ASSERT_FALSE(r2.is_ok());
  EXPECT_EQ(r2.message(), "cannot open stderr file '" + dir_.string() + "': Is a directory");

  SpawnSpec cwd = command({"true"});
  cwd.cwd = (blocker / "work").string();
  auto r3 = runner_->spawn(cwd, [](ExitStatus) { ADD_FAILURE() << "must not run"; });
  ASSERT_FALSE(r3.is_ok());
  EXPECT_EQ(r3.message(), "cannot create working directory '" + cwd.cwd + "': Not a directory");
  EXPECT_EQ(runner_->running(), 0u);
}

TEST_F(ProcessTest, TerminateDeliversSigintToTheGroup) {
  ReadyPipe ready;
  // `wait` returns at once on a trapped signal; a foreground `sleep` would delay the trap.
  SpawnSpec spec = shell("trap 'exit 7' INT; echo ready; sleep 1000 & wait; exit 3");
  spec.stdout_path = ready.path();
  std::optional<ExitStatus> exit;
  pid_t pid = start(spec, &exit);
  ready.close_write();
  ASSERT_EQ(ready.read_line(), "ready");

  runner_->terminate(pid, 600s);  // exits long before an escalation
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
  EXPECT_FALSE(exit->signaled);
  EXPECT_EQ(exit->code, 7);
}

TEST_F(ProcessTest, TerminateEscalatesToSigkillAfterGrace) {
  ReadyPipe ready;
  SpawnSpec spec = shell("trap '' INT; echo ready; exec sleep 1000");
  spec.stdout_path = ready.path();
  std::optional<ExitStatus> exit;
  pid_t pid = start(spec, &exit);
  ready.close_write();
  ASSERT_EQ(ready.read_line(), "ready");

  auto begin = Clock::now();
  runner_->terminate(pid, 300ms);
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
  EXPECT_GE(Clock::now() - begin, 300ms);
  EXPECT_TRUE(exit->signaled);
  EXPECT_EQ(exit->signal, SIGKILL);
  EXPECT_EQ(describe_exit(*exit), "Program terminated. Received signal 9 (SIGKILL)");
}

TEST_F(ProcessTest, TerminateKillsTheWholeProcessGroup) {
  // This test process adopts orphans, so it can reap the grandchild and see how it died.
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
  ReadyPipe ready;
  // The grandchild ignores SIGINT (and says so once it does): only the group SIGKILL ends it.
  SpawnSpec spec = shell("sh -c 'trap \"\" INT; echo $$; exec sleep 1000' & wait; exit 3");
  spec.stdout_path = ready.path();
  std::optional<ExitStatus> exit;
  pid_t pid = start(spec, &exit);
  ready.close_write();
  std::string line = ready.read_line();
  ASSERT_FALSE(line.empty());
  pid_t grandchild = std::stoi(line);
  EXPECT_EQ(::getpgid(grandchild), pid);

  runner_->terminate(pid, 60s);
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
  EXPECT_TRUE(exit->signaled);
  EXPECT_EQ(exit->signal, SIGINT);

  // The grandchild was killed when its leader exited, not 60 s later.
  int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, grandchild, 0));
  ASSERT_GE(pidfd, 0);
  pollfd p{pidfd, POLLIN, 0};
  EXPECT_EQ(::poll(&p, 1, 10000), 1) << "grandchild still alive";
  ::close(pidfd);
  int status = 0;
  ASSERT_EQ(::waitpid(grandchild, &status, 0), grandchild);
  EXPECT_TRUE(WIFSIGNALED(status));
  EXPECT_EQ(WTERMSIG(status), SIGKILL);
  EXPECT_EQ(::kill(grandchild, 0), -1);
  ASSERT_EQ(::prctl(PR_SET_CHILD_SUBREAPER, 0), 0);
}

TEST_F(ProcessTest, TerminateAndKillAllIgnoreUnknownOrFinishedChildren) {
  std::optional<ExitStatus> exit;
  pid_t pid = start(command({"true"}), &exit);
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
  runner_->terminate(pid, 0ms);
  runner_->terminate(0x7ffffff0, 0ms);
  runner_->kill_all();
  EXPECT_EQ(runner_->running(), 0u);
}

TEST_F(ProcessTest, KillAllKillsEveryChild) {
  std::vector<std::optional<ExitStatus>> exits(5);
  for (auto& exit : exits) start(command({"sleep", "1000"}), &exit);
  EXPECT_EQ(runner_->running(), 5u);
  runner_->kill_all();
  ASSERT_TRUE(run_until([&] { return runner_->running() == 0; }));
  for (const auto& exit : exits) {
    ASSERT_TRUE(exit.has_value());
    EXPECT_TRUE(exit->signaled);
    EXPECT_EQ(exit->signal, SIGKILL);
  }
}

TEST_F(ProcessTest, ChildStartsWithDefaultSignalsAndEmptyMask) {
  // The worker ignores or blocks signals that a task must still receive.
  struct sigaction ignore {};
  struct sigaction old_int {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGINT, &ignore, &old_int), 0);
  sigset_t block;
  sigset_t old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGTERM);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &block, &old_mask), 0);

  std::optional<ExitStatus> by_int;
  std::optional<ExitStatus> by_term;
  pid_t a = start(command({"sleep", "1000"}), &by_int);
  pid_t b = start(command({"sleep", "1000"}), &by_term);
  ::sigaction(SIGINT, &old_int, nullptr);
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);

  // The spawn returns after the exec, so the dispositions are already the child's own.
  ASSERT_EQ(::kill(a, SIGINT), 0);
  ASSERT_EQ(::kill(b, SIGTERM), 0);
  ASSERT_TRUE(run_until([&] { return by_int && by_term; }));
  EXPECT_TRUE(by_int->signaled);
  EXPECT_EQ(by_int->signal, SIGINT);
  EXPECT_TRUE(by_term->signaled);
  EXPECT_EQ(by_term->signal, SIGTERM);
}

TEST_F(ProcessTest, EachChildIsItsOwnProcessGroup) {
  std::optional<ExitStatus> exit;
  pid_t pid = start(command({"sleep", "1000"}), &exit);
  EXPECT_EQ(::getpgid(pid), pid);
  EXPECT_NE(::getpgid(pid), ::getpgrp());
  runner_->kill_all();
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
}

TEST_F(ProcessTest, ManyConcurrentChildrenAreEachReportedOnce) {
  constexpr int kChildren = 200;
  std::map<pid_t, int> reports;
  std::vector<pid_t> pids;
  int done = 0;
  for (int i = 0; i < kChildren; ++i) {
    SpawnSpec spec = command({"sh", "-c", "exit " + std::to_string(i % 7)});
    auto pid = runner_->spawn(spec, [&reports, &done, i, &pids](ExitStatus status) {
      EXPECT_FALSE(status.signaled);
      EXPECT_EQ(status.code, i % 7);
      ++reports[pids[i]];
      ++done;
    });
    ASSERT_TRUE(pid.is_ok()) << pid.message();
    pids.push_back(*pid);
  }
  ASSERT_TRUE(run_until([&] { return done == kChildren; }));
  EXPECT_EQ(reports.size(), static_cast<size_t>(kChildren));
  for (const auto& [pid, count] : reports) EXPECT_EQ(count, 1) << "pid " << pid;
  EXPECT_EQ(runner_->running(), 0u);
  // Nothing more is reported later.
  io_.restart();
  io_.poll();
  EXPECT_EQ(done, kChildren);
}

TEST_F(ProcessTest, ExitHandlerMaySpawnAgain) {
  int remaining = 5;
  int finished = 0;
  std::function<void()> next = [&] {
    auto pid = runner_->spawn(command({"true"}), [&](ExitStatus status) {
      EXPECT_TRUE(status.success());
      ++finished;
      if (--remaining > 0) next();
    });
    ASSERT_TRUE(pid.is_ok()) << pid.message();
  };
  next();
  ASSERT_TRUE(run_until([&] { return finished == 5; }));
  EXPECT_EQ(runner_->running(), 0u);
}

TEST_F(ProcessTest, OtherChildrenOfTheProcessAreUntouched) {
  pid_t own = ::fork();
  ASSERT_GE(own, 0);
  if (own == 0) ::_exit(5);
  // Reap the runner's child after our own has surely exited: the runner must not take it.
  int own_pidfd = static_cast<int>(::syscall(SYS_pidfd_open, own, 0));
  ASSERT_GE(own_pidfd, 0);
  pollfd p{own_pidfd, POLLIN, 0};
  ASSERT_EQ(::poll(&p, 1, 10000), 1);
  ::close(own_pidfd);

  EXPECT_TRUE(run(command({"true"})).success());
  int status = 0;
  ASSERT_EQ(::waitpid(own, &status, WNOHANG), own);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 5);
}

TEST_F(ProcessTest, DestructorKillsAndReapsChildren) {
  bool called = false;
  auto pid = runner_->spawn(command({"sleep", "1000"}), [&](ExitStatus) { called = true; });
  ASSERT_TRUE(pid.is_ok());
  runner_.reset();
  // Reaped: no zombie left behind, so the pid is gone.
  EXPECT_EQ(::waitpid(*pid, nullptr, WNOHANG), -1);
  EXPECT_EQ(errno, ECHILD);
  EXPECT_EQ(::kill(*pid, 0), -1);
  // Handlers still queued in the loop are harmless once the runner is gone.
  io_.restart();
  io_.poll();
  EXPECT_FALSE(called);
}

// What a child wrote to its captured channels, as handed to the OutputHandler.
struct Captured {
  std::string out, err;
  size_t largest_piece = 0;
  ProcessRunner::OutputHandler handler() {
    return [this](OutputChannel channel, std::span<const uint8_t> bytes) {
      largest_piece = std::max(largest_piece, bytes.size());
      (channel == OutputChannel::kStdout ? out : err)
          .append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    };
  }
};

TEST_F(ProcessTest, CapturedChannelsArriveInPiecesBeforeTheExit) {
  // 300 KB on stdout (more than a pipe holds), then lines on both channels.
  SpawnSpec spec = shell("head -c 300000 /dev/zero | tr '\\0' x; echo; echo err >&2; echo end");
  spec.capture_stdout = true;
  spec.capture_stderr = true;
  spec.stdout_path = (dir_ / "ignored.txt").string();
  Captured captured;
  std::optional<ExitStatus> exit;
  std::string out_at_exit, err_at_exit;
  auto pid = runner_->spawn(
      spec,
      [&](ExitStatus status) {
        exit = status;
        out_at_exit = captured.out;
        err_at_exit = captured.err;
      },
      captured.handler());
  ASSERT_TRUE(pid.is_ok()) << pid.message();
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
  EXPECT_TRUE(exit->success());
  EXPECT_EQ(out_at_exit, std::string(300000, 'x') + "\nend\n");
  EXPECT_EQ(err_at_exit, "err\n");
  EXPECT_LE(captured.largest_piece, ProcessRunner::kCaptureChunkBytes);
  EXPECT_FALSE(fs::exists(dir_ / "ignored.txt"));
  EXPECT_EQ(runner_->running(), 0u);
}

TEST_F(ProcessTest, CapturesOneChannelAndKeepsTheOtherInItsFile) {
  SpawnSpec spec = shell("echo out; echo err >&2");
  spec.stdout_path = (dir_ / "out.txt").string();
  spec.stderr_path = spec.stdout_path;  // would share the file if stderr were not captured
  spec.capture_stderr = true;
  Captured captured;
  std::optional<ExitStatus> exit;
  ASSERT_TRUE(runner_
                  ->spawn(
                      spec, [&](ExitStatus st) { exit = st; }, captured.handler())
                  .is_ok());
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
  EXPECT_EQ(read_file(dir_ / "out.txt"), "out\n");
  EXPECT_EQ(captured.out, "");
  EXPECT_EQ(captured.err, "err\n");
}

TEST_F(ProcessTest, DescendantHoldingTheCapturePipeDelaysTheExitByTheGraceOnly) {
  runner_.emplace(io_, 300ms);
  // The background sleep inherits stdout and outlives the child.
  SpawnSpec spec = shell("echo before; sleep 1000 & echo after; exit 5");
  spec.capture_stdout = true;
  Captured captured;
  std::optional<ExitStatus> exit;
  auto begin = Clock::now();
  auto pid = runner_->spawn(
      spec, [&](ExitStatus st) { exit = st; }, captured.handler());
  ASSERT_TRUE(pid.is_ok()) << pid.message();
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
  auto took = Clock::now() - begin;
  EXPECT_EQ(exit->code, 5);
  EXPECT_EQ(captured.out, "before\nafter\n");
  EXPECT_GE(took, 300ms);
  EXPECT_LT(took, 20s);
  // The sleep is still in the child's process group.
  EXPECT_EQ(::kill(-*pid, SIGKILL), 0);
}

TEST_F(ProcessTest, KilledChildWithCapturedOutputIsReported) {
  ReadyPipe ready;
  SpawnSpec spec = shell("echo partial; echo ready >&2; exec sleep 1000");
  spec.capture_stdout = true;
  spec.stderr_path = ready.path();
  Captured captured;
  std::optional<ExitStatus> exit;
  auto pid = runner_->spawn(
      spec, [&](ExitStatus st) { exit = st; }, captured.handler());
  ASSERT_TRUE(pid.is_ok()) << pid.message();
  ready.close_write();
  ASSERT_EQ(ready.read_line(), "ready");
  runner_->terminate(*pid, 0ms);
  ASSERT_TRUE(run_until([&] { return exit.has_value(); }));
  EXPECT_TRUE(exit->signaled);
  EXPECT_EQ(captured.out, "partial\n");
}

TEST(DescribeExitTest, Texts) {
  EXPECT_EQ(describe_exit(ExitStatus{}), "Program terminated with exit code 0");
  EXPECT_EQ(describe_exit(exited(3)), "Program terminated with exit code 3");
  auto by = [](int sig) {
    ExitStatus status;
    status.signaled = true;
    status.signal = sig;
    return describe_exit(status);
  };
  EXPECT_EQ(by(SIGKILL), "Program terminated. Received signal 9 (SIGKILL)");
  EXPECT_EQ(by(SIGTERM), "Program terminated. Received signal 15 (SIGTERM)");
  EXPECT_EQ(by(SIGINT), "Program terminated. Received signal 2 (SIGINT)");
  EXPECT_EQ(by(SIGSEGV), "Program terminated. Received signal 11 (SIGSEGV)");
  EXPECT_EQ(by(SIGABRT), "Program terminated. Received signal 6 (SIGABRT)");
  EXPECT_EQ(by(SIGBUS), "Program terminated. Received signal 7 (SIGBUS)");
  EXPECT_EQ(by(SIGRTMIN + 2), "Program terminated. Received signal " +
                                  std::to_string(SIGRTMIN + 2) + " (SIGRTMIN+2)");
  EXPECT_EQ(by(200), "Program terminated. Received signal 200");
}

}  // namespace
}  // namespace hq::worker
