// BatchSystem and find_allocation over a recording CommandRunner: which commands run, how
// many, and how their failures come back. The real SLURM is driven by
// tests/integration/test_alloc_batch.py.

#include <stdlib.h>

#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <gtest/gtest.h>

#include "alloc/batch_system.h"

namespace hq::alloc {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

class RecordingRunner final : public CommandRunner {
 public:
  std::vector<std::vector<std::string>> commands;
  std::deque<Result<CommandOutput>> answers;

  Result<CommandOutput> run(const std::vector<std::string>& argv) override {
    commands.push_back(argv);
    if (answers.empty()) return Error{"no answer recorded for " + argv[0]};
    auto a = answers.front();
    answers.pop_front();
    return a;
  }
};

class TempDir {
 public:
  TempDir() {
    std::string p = (fs::temp_directory_path() / "hq-alloc-test-XXXXXX").string();
    path = mkdtemp(p.data());
  }
  ~TempDir() { fs::remove_all(path); }
  fs::path path;
};

AllocationSpec spec_in(const fs::path& dir) {
  AllocationSpec s;
  s.time_limit = 10min;
  s.hq_binary = "/bin/hq";
  s.server_dir = "/srv";
  s.log_dir = (dir / "alloc" / "1").string();
  return s;
}

TEST(AllocBatchSystem, SubmitWritesTheScriptAndReturnsTheId) {
  TempDir dir;
  RecordingRunner runner;
  runner.answers.push_back(CommandOutput{0, "17\n", ""});
  BatchSystem slurm(make_backend(ManagerKind::kSlurm), runner);
  AllocationSpec spec = spec_in(dir.path);
  auto id = slurm.submit(spec);
  ASSERT_TRUE(id) << id.message();
  EXPECT_EQ(*id, "17");
  ASSERT_EQ(runner.commands.size(), 1u);
  std::string script = spec.log_dir + "/hq-alloc.sh";
  EXPECT_EQ(runner.commands[0].back(), script);
  std::ifstream in(script);
  std::stringstream text;
  text << in.rdbuf();
  EXPECT_EQ(text.str(), slurm.backend().batch_script(spec));
  EXPECT_TRUE((fs::status(script).permissions() & fs::perms::owner_exec) != fs::perms::none);
}

TEST(AllocBatchSystem, SubmitRefusesASpecWithoutTimeLimit) {
  TempDir dir;
  RecordingRunner runner;
  BatchSystem slurm(make_backend(ManagerKind::kSlurm), runner);
  AllocationSpec spec = spec_in(dir.path);
  spec.time_limit = 0ms;
  auto id = slurm.submit(spec);
  ASSERT_FALSE(id);
  EXPECT_EQ(id.message(), "an allocation needs a positive --time-limit");
  EXPECT_TRUE(runner.commands.empty());
}

TEST(AllocBatchSystem, QueryRunsOneCommandForManyAllocationsAndNoneForNone) {
  RecordingRunner runner;
  runner.answers.push_back(CommandOutput{0, "1|RUNNING|None\n2|PENDING|Resources\n", ""});
  BatchSystem slurm(make_backend(ManagerKind::kSlurm), runner);
  auto none = slurm.query({});
  ASSERT_TRUE(none);
  EXPECT_TRUE(runner.commands.empty());
  auto states = slurm.query({"1", "2", "3"});
  ASSERT_TRUE(states) << states.message();
  EXPECT_EQ(runner.commands.size(), 1u);
  EXPECT_EQ(states->size(), 2u);
  EXPECT_EQ(states->at("2").detail, "PENDING (Resources)");
}

TEST(AllocBatchSystem, ARunnerFailureIsTheQuerysError) {
  RecordingRunner runner;
  runner.answers.push_back(Error{"cannot run squeue: No such file or directory"});
  BatchSystem slurm(make_backend(ManagerKind::kSlurm), runner);
  auto states = slurm.query({"1"});
  ASSERT_FALSE(states);
  EXPECT_EQ(states.message(), "cannot run squeue: No such file or directory");
}

TEST(AllocBatchSystem, DryRunSubmitsHeldThenCancelsAndLeavesNoFiles) {
  RecordingRunner runner;
  runner.answers.push_back(CommandOutput{0, "9\n", ""});
  runner.answers.push_back(CommandOutput{0, "", ""});
  BatchSystem slurm(make_backend(ManagerKind::kSlurm), runner);
  TempDir dir;
  Status st = slurm.dry_run(spec_in(dir.path));
  ASSERT_TRUE(st) << st.message();
  ASSERT_EQ(runner.commands.size(), 2u);
  const auto& submit = runner.commands[0];
  EXPECT_NE(std::find(submit.begin(), submit.end(), "--hold"), submit.end());
  std::vector<std::string> cancel{"scancel", "9"};
  EXPECT_EQ(runner.commands[1], cancel);
  EXPECT_FALSE(fs::exists(fs::path(submit.back()).parent_path())) << "temporary dir left";
}

TEST(AllocBatchSystem, DryRunShowsTheBatchSystemsError) {
  RecordingRunner runner;
  runner.answers.push_back(
      CommandOutput{1, "", "sbatch: error: Batch job submission failed: Invalid account\n"});
  BatchSystem slurm(make_backend(ManagerKind::kSlurm), runner);
  TempDir dir;
  Status st = slurm.dry_run(spec_in(dir.path));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.message(),
            "sbatch failed (exit 1): sbatch: error: Batch job submission failed: Invalid account");
  EXPECT_EQ(runner.commands.size(), 1u) << "nothing to cancel";
}

TEST(AllocBatchSystem, DryRunSaysWhenTheTestAllocationStays) {
  RecordingRunner runner;
  runner.answers.push_back(CommandOutput{0, "9\n", ""});
  runner.answers.push_back(CommandOutput{1, "", "scancel: error: Access/permission denied\n"});
  BatchSystem slurm(make_backend(ManagerKind::kSlurm), runner);
  TempDir dir;
  Status st = slurm.dry_run(spec_in(dir.path));
  ASSERT_FALSE(st);
  EXPECT_EQ(st.message(),
            "the test allocation 9 was submitted but could not be removed: scancel failed (exit "
            "1): scancel: error: Access/permission denied");
}

std::function<std::optional<std::string>(const char*)> env_of(
    std::map<std::string, std::string> vars) {
  return [vars](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

TEST(AllocFindAllocation, DetectsSlurmThenPbsThenNone) {
  RecordingRunner runner;
  runner.answers.push_back(CommandOutput{0, "59:58\n", ""});
  auto slurm =
      find_allocation("detect", env_of({{"SLURM_JOB_ID", "12"}, {"PBS_JOBID", "3.s"}}), runner);
  ASSERT_TRUE(slurm) << slurm.message();
  ASSERT_TRUE(slurm->has_value());
  EXPECT_EQ((*slurm)->kind, ManagerKind::kSlurm);
  EXPECT_EQ((*slurm)->id, "12");
  EXPECT_EQ((*slurm)->remaining, 59min + 58s);
  std::vector<std::string> squeue{"squeue", "--noheader", "--jobs=12", "--format=%L"};
  EXPECT_EQ(runner.commands.at(0), squeue);

  runner.answers.push_back(
      CommandOutput{0, R"({"Jobs":{"3.s":{"Resource_List":{"walltime":"01:00:00"}}}})", ""});
  auto pbs = find_allocation("detect", env_of({{"PBS_JOBID", "3.s"}}), runner);
  ASSERT_TRUE(pbs) << pbs.message();
  EXPECT_EQ((*pbs)->kind, ManagerKind::kPbs);
  EXPECT_EQ((*pbs)->remaining, 1h);

  auto none = find_allocation("detect", env_of({}), runner);
  ASSERT_TRUE(none);
  EXPECT_FALSE(none->has_value());
  auto off = find_allocation("none", env_of({{"SLURM_JOB_ID", "12"}}), runner);
  ASSERT_TRUE(off);
  EXPECT_FALSE(off->has_value());
  EXPECT_EQ(runner.commands.size(), 2u);
}

TEST(AllocFindAllocation, ANamedManagerMustBeThere) {
  RecordingRunner runner;
  auto missing = find_allocation("slurm", env_of({{"PBS_JOBID", "3.s"}}), runner);
  ASSERT_FALSE(missing);
  EXPECT_EQ(missing.message(),
            "--manager slurm: SLURM_JOB_ID is not set (is this worker inside a slurm job?)");
  auto bad = find_allocation("lsf", env_of({}), runner);
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.message(), "invalid --manager 'lsf': expected slurm, pbs, none or detect");
  runner.answers.push_back(
      CommandOutput{1, "", "slurm_load_jobs error: Invalid job id specified\n"});
  auto unknown = find_allocation("slurm", env_of({{"SLURM_JOB_ID", "999"}}), runner);
  ASSERT_FALSE(unknown);
  EXPECT_EQ(unknown.message(),
            "cannot read the remaining time of allocation 999: squeue failed (exit 1): "
            "slurm_load_jobs error: Invalid job id specified");
}

}  // namespace
}  // namespace hq::alloc
