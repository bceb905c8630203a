#include "worker/spawn.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

extern char** environ;

namespace hq::worker {
namespace {

namespace fs = std::filesystem;

// A child's command line and the storage behind it.
struct Command {
  explicit Command(std::vector<std::string> words) : words(std::move(words)) {
    for (auto& w : this->words) argv.push_back(w.data());
    argv.push_back(nullptr);
  }
  std::vector<std::string> words;
  std::vector<char*> argv;
};

int wait_exit_code(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

class SpawnTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hq-spawn-test-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    out_path_ = dir_ / "out";
    out_ = ::open(out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    ASSERT_GT(out_, 2);
    const char* path = std::getenv("PATH");
    saved_path_ = path != nullptr ? path : "";
  }
  void TearDown() override {
    ::close(out_);
    ::setenv("PATH", saved_path_.c_str(), 1);
    fs::remove_all(dir_);
  }

  ChildSetup setup_for(Command& command) {
    ChildSetup setup;
    setup.program = command.argv[0];
    setup.argv = command.argv.data();
    setup.envp = environ;
    setup.stdio[1] = out_;
    return setup;
  }

  // Runs `setup` to its end (its stdout into out_ unless it says otherwise); its exit code.
  int run(const ChildSetup& setup) {
    SpawnOutcome started = spawner_.start(setup);
    EXPECT_TRUE(started.ok()) << "step " << static_cast<int>(started.failed) << ": "
                              << std::strerror(started.error);
    if (!started.ok()) return -1;
    EXPECT_GE(started.pidfd, 0);
    EXPECT_EQ(::fcntl(started.pidfd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
    ::close(started.pidfd);
    return wait_exit_code(started.pid);
  }
  int run(Command& command) { return run(setup_for(command)); }

  std::string output() const {
    std::ifstream in(out_path_);
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

  static void write_script(const fs::path& path, const std::string& text, fs::perms perms) {
    std::ofstream(path) << text;
    fs::permissions(path, perms);
  }

  Spawner spawner_;
  fs::path dir_;
  fs::path out_path_;
  int out_ = -1;
  std::string saved_path_;
};

TEST_F(SpawnTest, RunsTheProgramWithItsArgumentsAndEnvironment) {
  Command command({"/bin/sh", "-c", "echo \"$0 $1 $HQ_SPAWN_TEST\"", "a", "b"});
  std::string variable = "HQ_SPAWN_TEST=value";
  char* envp[] = {variable.data(), nullptr};
  ChildSetup setup = setup_for(command);
  setup.envp = envp;
  EXPECT_EQ(run(setup), 0);
  EXPECT_EQ(output(), "a b value\n");
}

TEST_F(SpawnTest, ManyStartsLeaveNoDescriptorBehind) {
  // Each start's stack is the same one, and a failed start closes its pidfd.
  auto descriptors = [] {
    size_t n = 0;
    for ([[maybe_unused]] const auto& entry : fs::directory_iterator("/proc/self/fd")) ++n;
    return n;
  };
  Command command({"/bin/true"});
  Command missing({"/nonexistent-hq-program"});
  const size_t before = descriptors();
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(run(command), 0);
    SpawnOutcome failed = spawner_.start(setup_for(missing));
    ASSERT_EQ(failed.error, ENOENT);
  }
  EXPECT_EQ(descriptors(), before);
}

TEST_F(SpawnTest, ChildGetsOnlyItsStandardDescriptorsAndDevNullForTheMissingOnes) {
  int leaked = ::open("/dev/null", O_RDONLY);  // not close-on-exec
  ASSERT_GT(leaked, 2);
  Command command(
      {"/bin/sh", "-c", "ls /proc/self/fd | sort -n | tr '\\n' ' '; readlink /proc/self/fd/0"});
  EXPECT_EQ(run(command), 0);
  ::close(leaked);
  // 0, 1, 2 and the one ls opens to read the directory.
  EXPECT_EQ(output(), "0 1 2 3 /dev/null\n");
}

TEST_F(SpawnTest, RejectsStandardDescriptorsAsSources) {
  Command command({"/bin/true"});
  ChildSetup setup = setup_for(command);
  setup.stdio[2] = 1;
  SpawnOutcome started = spawner_.start(setup);
  EXPECT_FALSE(started.ok());
  EXPECT_EQ(started.error, EINVAL);
  EXPECT_EQ(started.failed, ChildStep::kDescriptors);
}

TEST_F(SpawnTest, ChildLeadsItsOwnGroupWithDefaultSignalsAndAnEmptyMask) {
  // The worker ignores one signal and blocks another; neither reaches the program.
  struct sigaction ignore {};
  struct sigaction before {};
  ignore.sa_handler = SIG_IGN;
  ASSERT_EQ(::sigaction(SIGUSR2, &ignore, &before), 0);
  sigset_t block;
  sigset_t mask_before;
  sigemptyset(&block);
  sigaddset(&block, SIGUSR1);
  ASSERT_EQ(::pthread_sigmask(SIG_BLOCK, &block, &mask_before), 0);
  Command command({"/bin/sh", "-c",
                   "grep -E '^(SigIgn|SigBlk)' /proc/self/status | tr -d '\\t'; "
                   "cut -d' ' -f5 /proc/$$/stat; echo $$"});
  EXPECT_EQ(run(command), 0);
  ::pthread_sigmask(SIG_SETMASK, &mask_before, nullptr);
  ::sigaction(SIGUSR2, &before, nullptr);
  std::istringstream lines(output());
  std::string blk, ign, pgid, pid;  // in the order of /proc/PID/status
  std::getline(lines, blk);
  std::getline(lines, ign);
  std::getline(lines, pgid);
  std::getline(lines, pid);
  EXPECT_EQ(ign, "SigIgn:0000000000000000");
  EXPECT_EQ(blk, "SigBlk:0000000000000000");
  EXPECT_EQ(pgid, pid);
}

TEST_F(SpawnTest, SearchesPathInOrderAndRemembersPermissionDenied) {
  fs::create_directories(dir_ / "a");
  fs::create_directories(dir_ / "b");
  fs::create_directories(dir_ / "c");
  write_script(dir_ / "a" / "tool", "#!/bin/sh\necho a\n", fs::perms::owner_read);
  write_script(dir_ / "b" / "tool", "#!/bin/sh\necho b\n", fs::perms::owner_all);
  write_script(dir_ / "c" / "tool", "#!/bin/sh\necho c\n", fs::perms::owner_all);
  Command command({"tool"});

  // A missing directory and a non-executable candidate are passed over.
  const std::string path = (dir_ / "missing").string() + ":" + (dir_ / "a").string() + ":" +
                           (dir_ / "b").string() + ":" + (dir_ / "c").string();
  ::setenv("PATH", path.c_str(), 1);
  EXPECT_EQ(run(command), 0);
  EXPECT_EQ(output(), "b\n");

  // Only a non-executable one: EACCES; none at all: ENOENT.
  ::setenv("PATH", ((dir_ / "missing").string() + ":" + (dir_ / "a").string()).c_str(), 1);
  SpawnOutcome denied = spawner_.start(setup_for(command));
  EXPECT_EQ(denied.error, EACCES);
  EXPECT_EQ(denied.failed, ChildStep::kExec);
  ::setenv("PATH", (dir_ / "missing").c_str(), 1);
  SpawnOutcome missing = spawner_.start(setup_for(command));
  EXPECT_EQ(missing.error, ENOENT);
  EXPECT_EQ(missing.failed, ChildStep::kExec);
  EXPECT_EQ(missing.pid, -1);
  EXPECT_EQ(missing.pidfd, -1);
}

TEST_F(SpawnTest, EmptyPathEntryIsTheWorkingDirectory) {
  write_script(dir_ / "here", "#!/bin/sh\necho here\n", fs::perms::owner_all);
  ::setenv("PATH", "/nonexistent-hq-dir:", 1);
  Command command({"here"});
  ChildSetup setup = setup_for(command);
  const std::string cwd = dir_.string();
  setup.cwd = cwd.c_str();
  EXPECT_EQ(run(setup), 0);
  EXPECT_EQ(output(), "here\n");
}

TEST_F(SpawnTest, NamesTheStepThatFailed) {
  Command command({"/bin/true"});
  ChildSetup setup = setup_for(command);
  const std::string cwd = (dir_ / "no-such-directory").string();
  setup.cwd = cwd.c_str();
  SpawnOutcome no_dir = spawner_.start(setup);
  EXPECT_EQ(no_dir.error, ENOENT);
  EXPECT_EQ(no_dir.failed, ChildStep::kDirectory);

  // A CPU this machine does not have.
  cpu_set_t* cpus = CPU_ALLOC(65536);
  const size_t bytes = CPU_ALLOC_SIZE(65536);
  CPU_ZERO_S(bytes, cpus);
  CPU_SET_S(65535, bytes, cpus);
  setup = setup_for(command);
  setup.affinity = cpus;
  setup.affinity_bytes = bytes;
  SpawnOutcome no_cpu = spawner_.start(setup);
  CPU_FREE(cpus);
  EXPECT_EQ(no_cpu.error, EINVAL);
  EXPECT_EQ(no_cpu.failed, ChildStep::kAffinity);
}

TEST_F(SpawnTest, ChildRunsOnlyOnTheCpusItWasGiven) {
  cpu_set_t mine;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(mine), &mine), 0);
  int first = -1;
  for (int cpu = 0; cpu < CPU_SETSIZE && first < 0; ++cpu) {
    if (CPU_ISSET(cpu, &mine)) first = cpu;
  }
  ASSERT_GE(first, 0);
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(first, &one);
  Command command({"/bin/sh", "-c", "grep '^Cpus_allowed_list' /proc/self/status | cut -f2"});
  ChildSetup setup = setup_for(command);
  setup.affinity = &one;
  setup.affinity_bytes = sizeof(one);
  EXPECT_EQ(run(setup), 0);
  EXPECT_EQ(output(), std::to_string(first) + "\n");
  // The worker's own affinity is untouched.
  cpu_set_t after;
  ASSERT_EQ(::sched_getaffinity(0, sizeof(after), &after), 0);
  EXPECT_TRUE(CPU_EQUAL(&mine, &after));
}

}  // namespace
}  // namespace hq::worker
