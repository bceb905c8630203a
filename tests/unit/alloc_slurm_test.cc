// SLURM backend: batch script and command lines, and parsing sbatch/squeue/scancel outputs
// (samples as SLURM 22.05 prints them, taken from tools/local-slurm).

#include <gtest/gtest.h>

#include "alloc/backend.h"

namespace hq::alloc {
namespace {

using namespace std::chrono_literals;

AllocationSpec sample_spec() {
  AllocationSpec s;
  s.name = "cpu";
  s.time_limit = 90min;
  s.hq_binary = "/opt/hq/bin/hq";
  s.server_dir = "/home/u/.hq-server";
  s.worker_args = {"--cpus", "4", "--resource", "gpus=[a b]"};
  s.batch_args = {"--partition=p1", "-A", "proj"};
  s.log_dir = "/home/u/.hq-server/alloc/1/7";
  return s;
}

CommandOutput output(int code, std::string out, std::string err = "") {
  return CommandOutput{code, std::move(out), std::move(err)};
}

TEST(AllocSlurm, BatchScriptRunsTheWorkerWithTheQueuesOptions) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  AllocationSpec spec = sample_spec();
  spec.worker_time_limit = 80min;
  spec.worker_start_cmd = "module load x";
  spec.worker_stop_cmd = "rm -rf /tmp/scratch";
  std::string script = slurm->batch_script(spec);
  EXPECT_TRUE(script.starts_with("#!/bin/bash\n")) << script;
  EXPECT_NE(script.find("module load x\n/opt/hq/bin/hq worker start --manager slurm "
                        "--server-dir /home/u/.hq-server --time-limit 4800000ms --cpus 4 "
                        "--resource 'gpus=[a b]'\nstatus=$?\nrm -rf /tmp/scratch\nexit $status\n"),
            std::string::npos)
      << script;
  EXPECT_EQ(script.find("srun"), std::string::npos) << "one node needs no srun:\n" << script;
}

TEST(AllocSlurm, BatchScriptOfManyNodesStartsAWorkerOnEachThroughSrun) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  AllocationSpec spec = sample_spec();
  spec.workers = 3;
  spec.worker_wrap_cmd = "podman run img";
  std::string script = slurm->batch_script(spec);
  EXPECT_NE(script.find("srun --overlap --nodes=3 --ntasks=3 --ntasks-per-node=1 /bin/bash -c "
                        "'podman run img /opt/hq/bin/hq worker start --manager slurm"),
            std::string::npos)
      << script;
  EXPECT_NE(script.find("'\\''gpus=[a b]'\\''"), std::string::npos) << "quoted twice:\n" << script;
}

TEST(AllocSlurm, SubmitCommandCarriesTimeNodesLogsAndTheUsersArguments) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  AllocationSpec spec = sample_spec();
  spec.time_limit = 26h + 1500ms;
  spec.workers = 2;
  std::vector<std::string> expected{"sbatch",
                                    "--parsable",
                                    "--job-name=hq-cpu",
                                    "--output=/home/u/.hq-server/alloc/1/7/stdout",
                                    "--error=/home/u/.hq-server/alloc/1/7/stderr",
                                    "--time=1-02:00:02",
                                    "--nodes=2",
                                    "--partition=p1",
                                    "-A",
                                    "proj",
                                    "/x/hq-alloc.sh"};
  EXPECT_EQ(slurm->submit_command(spec, "/x/hq-alloc.sh", false), expected);
  auto held = slurm->submit_command(spec, "/x/hq-alloc.sh", true);
  EXPECT_EQ(held[7], "--hold");
  EXPECT_EQ(held.back(), "/x/hq-alloc.sh");
}

TEST(AllocSlurm, ParsesSbatchParsableOutput) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  EXPECT_EQ(*slurm->parse_submit(output(0, "1234\n")), "1234");
  EXPECT_EQ(*slurm->parse_submit(output(0, "77;cluster2\n")), "77");
  auto garbage = slurm->parse_submit(output(0, "Submitted batch job 5\n"));
  ASSERT_FALSE(garbage);
  EXPECT_EQ(garbage.message(), "sbatch printed no job id: 'Submitted batch job 5'");
}

TEST(AllocSlurm, SbatchErrorsAreShownInSlurmsOwnWords) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  auto r = slurm->parse_submit(
      output(1, "",
             "sbatch: error: invalid partition specified: nope\n"
             "sbatch: error: Batch job submission failed: Invalid partition name specified\n"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.message(),
            "sbatch failed (exit 1): sbatch: error: invalid partition specified: nope\n"
            "sbatch: error: Batch job submission failed: Invalid partition name specified");
  auto bad_option = slurm->parse_submit(output(
      255, "",
      "sbatch: unrecognized option '--bogus'\nTry \"sbatch --help\" for more information\n"));
  ASSERT_FALSE(bad_option);
  EXPECT_NE(bad_option.message().find("exit 255): sbatch: unrecognized option '--bogus'"),
            std::string::npos);
}

TEST(AllocSlurm, StatusIsOneSqueueForEveryAllocation) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  std::vector<std::string> expected{"squeue", "--noheader", "--states=all", "--jobs=3,5,8",
                                    "--format=%i|%T|%r"};
  EXPECT_EQ(slurm->status_command({"3", "5", "8"}), expected);
}

TEST(AllocSlurm, ParsesSqueueStates) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  auto r = slurm->parse_status(output(0,
                                      "3|PENDING|Priority\n"
                                      "4|PENDING|None\n"
                                      "5|RUNNING|None\n"
                                      "6|COMPLETING|None\n"
                                      "7|COMPLETED|None\n"
                                      "8|CANCELLED|None\n"
                                      "9|TIMEOUT|TimeLimit\n"
                                      "10|FAILED|NonZeroExitCode\n"
                                      "11|NODE_FAIL|NodeDown\n"));
  ASSERT_TRUE(r) << r.message();
  auto& m = *r;
  ASSERT_EQ(m.size(), 9u);
  EXPECT_EQ(m["3"].state, AllocationState::kQueued);
  EXPECT_EQ(m["3"].detail, "PENDING (Priority)");
  EXPECT_EQ(m["4"].detail, "PENDING");
  EXPECT_EQ(m["5"].state, AllocationState::kRunning);
  EXPECT_EQ(m["6"].state, AllocationState::kRunning);
  EXPECT_EQ(m["7"].state, AllocationState::kFinished);
  EXPECT_EQ(m["8"].state, AllocationState::kFinished);
  EXPECT_EQ(m["9"].state, AllocationState::kFinished);
  EXPECT_EQ(m["10"].state, AllocationState::kFailed);
  EXPECT_EQ(m["10"].detail, "FAILED (NonZeroExitCode)");
  EXPECT_EQ(m["11"].state, AllocationState::kFailed);
}

TEST(AllocSlurm, JobsSlurmForgotAreAbsentNotAnError) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  // Some known: squeue lists those only. None known: it fails with this message.
  auto some = slurm->parse_status(output(0, "12|RUNNING|None\n"));
  ASSERT_TRUE(some);
  EXPECT_EQ(some->size(), 1u);
  auto none =
      slurm->parse_status(output(1, "", "slurm_load_jobs error: Invalid job id specified\n"));
  ASSERT_TRUE(none) << none.message();
  EXPECT_TRUE(none->empty());
}

TEST(AllocSlurm, SqueueFailuresAndStrangeOutputAreErrors) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  auto down = slurm->parse_status(output(
      1, "", "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"));
  ASSERT_FALSE(down);
  EXPECT_EQ(down.message(),
            "squeue failed (exit 1): slurm_load_jobs error: Unable to contact slurm controller "
            "(connect failure)");
  auto state = slurm->parse_status(output(0, "3|WIBBLING|None\n"));
  ASSERT_FALSE(state);
  EXPECT_EQ(state.message(), "squeue printed an unknown job state 'WIBBLING' (job 3)");
  auto line = slurm->parse_status(output(0, "3 RUNNING\n"));
  ASSERT_FALSE(line);
  EXPECT_EQ(line.message(), "unexpected squeue line '3 RUNNING': expected ID|STATE|REASON");
}

TEST(AllocSlurm, CancelingEndedAllocationsIsNoError) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  std::vector<std::string> expected{"scancel", "4", "5"};
  EXPECT_EQ(slurm->cancel_command({"4", "5"}), expected);
  EXPECT_TRUE(slurm->parse_cancel(output(0, "")));
  EXPECT_TRUE(slurm->parse_cancel(output(
      1, "",
      "scancel: error: Kill job error on job id 4: Job/step already completing or completed\n")));
  EXPECT_TRUE(slurm->parse_cancel(output(1, "", "scancel: error: Invalid job id specified\n")));
  Status denied = slurm->parse_cancel(
      output(1, "", "scancel: error: Kill job error on job id 4: Access/permission denied\n"));
  ASSERT_FALSE(denied);
  EXPECT_EQ(denied.message(),
            "scancel failed (exit 1): scancel: error: Kill job error on job id 4: "
            "Access/permission denied");
}

TEST(AllocSlurm, RemainingTimeFromSqueue) {
  auto slurm = make_backend(ManagerKind::kSlurm);
  EXPECT_EQ(slurm->job_id_variable(), "SLURM_JOB_ID");
  std::vector<std::string> expected{"squeue", "--noheader", "--jobs=42", "--format=%L"};
  EXPECT_EQ(slurm->remaining_time_command("42"), expected);
  EXPECT_EQ(**slurm->parse_remaining_time(output(0, "4:59\n")), 299s);
  EXPECT_EQ(**slurm->parse_remaining_time(output(0, "1:00:00\n")), 1h);
  EXPECT_EQ(**slurm->parse_remaining_time(output(0, "2-03:04:05\n")), 51h + 4min + 5s);
  EXPECT_FALSE(slurm->parse_remaining_time(output(0, "UNLIMITED\n"))->has_value());
  auto empty = slurm->parse_remaining_time(output(0, ""));
  ASSERT_FALSE(empty);
  EXPECT_EQ(empty.message(), "squeue printed no remaining time: the job is not running");
  auto bad = slurm->parse_remaining_time(output(0, "soon\n"));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.message(),
            "squeue printed a remaining time that is not one: invalid time 'soon': expected "
            "[D-]HH:MM:SS, MM:SS or MM");
}

TEST(AllocWalltime, ParsesSlurmAndPbsForms) {
  EXPECT_EQ(*parse_walltime("5"), 5min);
  EXPECT_EQ(*parse_walltime("1:30"), 90s);
  EXPECT_EQ(*parse_walltime("02:00:00"), 2h);
  EXPECT_EQ(*parse_walltime("1-0"), 24h);
  EXPECT_EQ(*parse_walltime("1-2:30"), 26h + 30min);
  EXPECT_EQ(*parse_walltime("100:00:01"), 100h + 1s);
  for (const char* bad : {"", "x", "1:2:3:4", "1-", ":5", "-1", "1:-2"}) {
    EXPECT_FALSE(parse_walltime(bad)) << bad;
  }
  EXPECT_EQ(format_hms(90min + 1ms), "01:30:01");
  EXPECT_EQ(format_hms(100h), "100:00:00");
}

TEST(AllocShell, QuotesWhatTheShellWouldSplitOrExpand) {
  EXPECT_EQ(shell_quote("plain-word_1.2/x=y"), "plain-word_1.2/x=y");
  EXPECT_EQ(shell_quote(""), "''");
  EXPECT_EQ(shell_quote("a b"), "'a b'");
  EXPECT_EQ(shell_quote("$HOME"), "'$HOME'");
  EXPECT_EQ(shell_quote("it's"), "'it'\\''s'");
}

TEST(AllocManager, NamesParseBack) {
  EXPECT_EQ(*parse_manager("slurm"), ManagerKind::kSlurm);
  EXPECT_EQ(*parse_manager("pbs"), ManagerKind::kPbs);
  auto bad = parse_manager("lsf");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.message(), "unknown batch system 'lsf': expected slurm or pbs");
}

}  // namespace
}  // namespace hq::alloc
