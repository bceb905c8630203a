#include "worker/reaper.h"

#include <dirent.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "worker/process.h"

namespace hq::worker {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// How long a test waits for something that should happen at once before failing.
constexpr auto kDeadline = 30s;

// Processes of group `pgid` that have not exited (zombies are dead: they only wait to be reaped
// by whoever inherited them).
std::vector<pid_t> live_members(pid_t pgid) {
  std::vector<pid_t> members;
  DIR* proc = ::opendir("/proc");
  if (proc == nullptr) return members;
  while (dirent* entry = ::readdir(proc)) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (*end != '\0' || pid <= 0) continue;
    std::ifstream in(fs::path("/proc") / entry->d_name / "stat");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t paren = text.rfind(')');
    if (paren == std::string::npos) continue;
    std::istringstream fields(text.substr(paren + 1));
    char state = 0;
    long ppid = 0, group = 0;
    fields >> state >> ppid >> group;
    if (group == pgid && state != 'Z' && state != 'X') members.push_back(static_cast<pid_t>(pid));
  }
  ::closedir(proc);
  return members;
}

// Polls until group `pgid` has no live member; false at the deadline.
bool wait_group_gone(pid_t pgid) {
  auto end = Clock::now() + kDeadline;
  while (!live_members(pgid).empty()) {
    if (Clock::now() >= end) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

// Waits until `path` holds a whole line; returns it.
std::string wait_line(const fs::path& path) {
  auto end = Clock::now() + kDeadline;
  while (Clock::now() < end) {
    std::string text = read_file(path);
    if (!text.empty() && text.back() == '\n') return text.substr(0, text.size() - 1);
    std::this_thread::sleep_for(10ms);
  }
  return "";
}

class ReaperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hq-reaper-test-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override {
    for (pid_t pgid : groups_) {
      ::kill(-pgid, SIGKILL);
      ::waitpid(pgid, nullptr, WNOHANG);  // those that are this process's children
    }
    fs::remove_all(dir_);
  }

  // Forks an "owner" (a stand-in worker) that starts a reaper and runs `script` through a
  // ProcessRunner using it; with `leader_exits`, the owner also waits for the task's first
  // process to exit (its background child lingers in the group). The owner then says the group
  // id through a pipe and waits to be killed. Returns (owner pid, task group).
  std::pair<pid_t, pid_t> start_owner(const std::string& script, bool leader_exits) {
    int fds[2];
    EXPECT_EQ(::pipe(fds), 0);
    pid_t owner = ::fork();
    if (owner == 0) {
      ::close(fds[0]);
      auto reaper = TaskReaper::start();
      if (!reaper) ::_exit(10);
      asio::io_context io;
      ProcessRunner runner(io, Millis(1000), reaper->get());
      SpawnSpec spec;
      spec.argv = {"sh", "-c", script};
      bool exited = false;
      auto pid = runner.spawn(spec, [&exited](ExitStatus) { exited = true; });
      if (!pid) ::_exit(11);
      if (leader_exits) {
        auto guard = asio::make_work_guard(io);
        while (!exited) io.run_one();
      }
      pid_t pgid = *pid;
      if (::write(fds[1], &pgid, sizeof(pgid)) != sizeof(pgid)) ::_exit(12);
      for (;;) ::pause();
    }
    ::close(fds[1]);
    pid_t pgid = 0;
    EXPECT_EQ(::read(fds[0], &pgid, sizeof(pgid)), static_cast<ssize_t>(sizeof(pgid)));
    ::close(fds[0]);
    groups_.push_back(pgid);
    return {owner, pgid};
  }

  static void kill_owner(pid_t owner) {
    ASSERT_EQ(::kill(owner, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(owner, &status, 0), owner);
    ASSERT_TRUE(WIFSIGNALED(status)) << "the owner exited by itself: " << status;
  }

  fs::path dir_;
  std::vector<pid_t> groups_;  // killed at the end whatever happens
};

TEST_F(ReaperTest, TaskGroupDiesWithAKilledOwner) {
  fs::path child_file = dir_ / "child";
  auto [owner, pgid] =
      start_owner("sleep 300 & echo $! > " + child_file.string() + "; wait", false);
  std::string child = wait_line(child_file);
  ASSERT_FALSE(child.empty()) << "the task did not start its child";
  std::vector<pid_t> members = live_members(pgid);
  ASSERT_EQ(members.size(), 2u) << "the task and its child, in the task's group";

  kill_owner(owner);
  EXPECT_TRUE(wait_group_gone(pgid)) << "the task's group outlived its owner";
}

TEST_F(ReaperTest, GroupOutlivingItsLeaderStaysRegistered) {
  fs::path child_file = dir_ / "child";
  auto [owner, pgid] = start_owner("sleep 300 & echo $! > " + child_file.string(), true);
  ASSERT_FALSE(wait_line(child_file).empty());
  ASSERT_EQ(live_members(pgid).size(), 1u) << "the leader exited, its child lingers";

  kill_owner(owner);
  EXPECT_TRUE(wait_group_gone(pgid)) << "the lingering child outlived the owner";
}

TEST_F(ReaperTest, ClosingTheReaperKillsRegisteredGroupsAndSparesRemovedOnes) {
  auto spawn_group = [&]() {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::setpgid(0, 0);
      ::execlp("sleep", "sleep", "300", static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::setpgid(pid, pid);  // either side may win the race; both ask for the same
    groups_.push_back(pid);
    return pid;
  };
  pid_t kept = spawn_group();
  pid_t removed = spawn_group();
  {
    auto reaper = TaskReaper::start();
    ASSERT_TRUE(reaper) << reaper.message();
    ASSERT_TRUE((*reaper)->add(kept));
    ASSERT_TRUE((*reaper)->add(removed));
    ASSERT_TRUE((*reaper)->remove(removed));
  }  // the destructor closes the socket and waits for the reaper to exit
  int status = 0;
  ASSERT_EQ(::waitpid(kept, &status, 0), kept);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
  EXPECT_EQ(::waitpid(removed, &status, WNOHANG), 0) << "a removed group was killed";
}

TEST_F(ReaperTest, AddFailsOnceTheReaperIsGone) {
  auto reaper = TaskReaper::start();
  ASSERT_TRUE(reaper) << reaper.message();
  ASSERT_EQ(::kill((*reaper)->pid(), SIGKILL), 0);
  // The socket reports the death once the reaper has exited; until then sends may succeed.
  auto end = Clock::now() + kDeadline;
  Status st = Status::ok();
  constexpr pid_t kNoSuchGroup = 0x7ffffff0;  // never a real group, should a message get through
  while (Clock::now() < end && (st = (*reaper)->add(kNoSuchGroup))) {
    std::this_thread::sleep_for(10ms);
  }
  ASSERT_FALSE(st);
  EXPECT_NE(st.message().find("task reaper"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace hq::worker
