// ProcessRunner: real processes, their outputs and exit codes, a missing program, a timeout.

#include <chrono>

#include <gtest/gtest.h>

#include "alloc/command.h"

namespace hq::alloc {
namespace {

using namespace std::chrono_literals;

TEST(AllocProcessRunner, CapturesBothOutputsAndTheExitCode) {
  ProcessRunner runner;
  auto r = runner.run({"sh", "-c", "echo out; echo err >&2; exit 3"});
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->out, "out\n");
  EXPECT_EQ(r->err, "err\n");
}

TEST(AllocProcessRunner, ReadsLargeOutputsOnBothChannelsWithoutBlocking) {
  ProcessRunner runner;
  // More than a pipe holds, on both channels at once.
  auto r = runner.run({"sh", "-c", "head -c 300000 /dev/zero; head -c 300000 /dev/zero >&2"});
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ(r->exit_code, 0);
  EXPECT_EQ(r->out.size(), 300000u);
  EXPECT_EQ(r->err.size(), 300000u);
}

TEST(AllocProcessRunner, StdinIsEmpty) {
  ProcessRunner runner;
  auto r = runner.run({"cat"});
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ(r->out, "");
}

TEST(AllocProcessRunner, AMissingProgramIsAClearError) {
  ProcessRunner runner;
  auto r = runner.run({"hq-no-such-sbatch"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.message(),
            "cannot run hq-no-such-sbatch: No such file or directory (is it installed and on "
            "PATH?)");
}

TEST(AllocProcessRunner, ASignalIsReportedAs128PlusIt) {
  ProcessRunner runner;
  auto r = runner.run({"sh", "-c", "kill -TERM $$"});
  ASSERT_TRUE(r) << r.message();
  EXPECT_EQ(r->exit_code, 128 + 15);
}

TEST(AllocProcessRunner, ACommandThatHangsIsKilledAtTheTimeout) {
  ProcessRunner runner(300ms);
  auto start = std::chrono::steady_clock::now();
  auto r = runner.run({"sleep", "60"});
  ASSERT_FALSE(r);
  EXPECT_EQ(r.message(), "sleep did not end within 300ms and was killed");
  EXPECT_LT(std::chrono::steady_clock::now() - start, 30s);
}

}  // namespace
}  // namespace hq::alloc
