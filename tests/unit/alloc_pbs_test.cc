// PBS backend: qsub command line and script, and parsing qsub/`qstat -f -F json`/qdel outputs.
// No PBS runs here: the samples follow the formats in PBS Professional's reference guide.

#include <gtest/gtest.h>

#include "alloc/backend.h"

namespace hq::alloc {
namespace {

using namespace std::chrono_literals;

CommandOutput output(int code, std::string out, std::string err = "") {
  return CommandOutput{code, std::move(out), std::move(err)};
}

AllocationSpec sample_spec() {
  AllocationSpec s;
  s.name = "gpu";
  s.time_limit = 2h;
  s.workers = 2;
  s.hq_binary = "/opt/hq";
  s.server_dir = "/srv/hq";
  s.batch_args = {"-q", "qprod", "-A", "OPEN-1"};
  s.log_dir = "/srv/hq/alloc/2/1";
  return s;
}

// `qstat -f -F json -x` of four jobs: queued, running, finished well, finished badly.
const char* kQstat = R"({
    "timestamp":1701400000,
    "pbs_version":"2022.1.3",
    "pbs_server":"pbs01",
    "Jobs":{
        "101.pbs01":{
            "Job_Name":"hq-gpu",
            "job_state":"Q",
            "queue":"qprod",
            "Resource_List":{"walltime":"02:00:00", "select":"2"},
            "comment":"Not Running: Insufficient amount of resource: ncpus"
        },
        "102.pbs01":{
            "Job_Name":"hq-gpu",
            "job_state":"R",
            "Resource_List":{"walltime":"02:00:00"},
            "resources_used":{"walltime":"00:10:30", "cput":"00:00:01"}
        },
        "103.pbs01":{
            "job_state":"F",
            "Exit_status":0
        },
        "104.pbs01":{
            "job_state":"F",
            "Exit_status":1,
            "comment":"Job run at Fri Dec 01 at 10:00 on (n1:ncpus=36) and finished"
        },
        "105.pbs01":{
            "job_state":"H"
        },
        "106.pbs01":{
            "job_state":"F",
            "Exit_status":-29
        }
    }
})";

TEST(AllocPbs, SubmitCommandAsksForWalltimeAndOneChunkPerWorker) {
  auto pbs = make_backend(ManagerKind::kPbs);
  std::vector<std::string> expected{"qsub",
                                    "-N",
                                    "hq-gpu",
                                    "-o",
                                    "/srv/hq/alloc/2/1/stdout",
                                    "-e",
                                    "/srv/hq/alloc/2/1/stderr",
                                    "-l",
                                    "walltime=02:00:00",
                                    "-l",
                                    "select=2",
                                    "-q",
                                    "qprod",
                                    "-A",
                                    "OPEN-1",
                                    "/s.sh"};
  EXPECT_EQ(pbs->submit_command(sample_spec(), "/s.sh", false), expected);
  auto held = pbs->submit_command(sample_spec(), "/s.sh", true);
  EXPECT_EQ(held[11], "-h");
}

TEST(AllocPbs, BatchScriptStartsAWorkerOnEachNodeThroughPbsdsh) {
  auto pbs = make_backend(ManagerKind::kPbs);
  std::string script = pbs->batch_script(sample_spec());
  EXPECT_NE(script.find("pbsdsh -- /bin/bash -c '/opt/hq worker start --manager pbs "
                        "--server-dir /srv/hq\n'"),
            std::string::npos)
      << script;
  AllocationSpec one = sample_spec();
  one.workers = 1;
  EXPECT_NE(pbs->batch_script(one).find("\n/opt/hq worker start --manager pbs"), std::string::npos);
}

TEST(AllocPbs, ParsesQsubOutput) {
  auto pbs = make_backend(ManagerKind::kPbs);
  EXPECT_EQ(*pbs->parse_submit(output(0, "4321.pbs01\n")), "4321.pbs01");
  auto refused =
      pbs->parse_submit(output(38, "", "qsub: Job violates queue and/or server resource limits\n"));
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.message(),
            "qsub failed (exit 38): qsub: Job violates queue and/or server resource limits");
  EXPECT_FALSE(pbs->parse_submit(output(0, "")));
}

TEST(AllocPbs, StatusIsOneQstatForEveryAllocation) {
  auto pbs = make_backend(ManagerKind::kPbs);
  std::vector<std::string> expected{"qstat", "-f", "-F", "json", "-x", "1.s", "2.s"};
  EXPECT_EQ(pbs->status_command({"1.s", "2.s"}), expected);
}

TEST(AllocPbs, ParsesQstatJson) {
  auto pbs = make_backend(ManagerKind::kPbs);
  auto r = pbs->parse_status(output(0, kQstat));
  ASSERT_TRUE(r) << r.message();
  auto& m = *r;
  ASSERT_EQ(m.size(), 6u);
  EXPECT_EQ(m["101.pbs01"].state, AllocationState::kQueued);
  EXPECT_EQ(m["101.pbs01"].detail,
            "job_state Q (Not Running: Insufficient amount of resource: ncpus)");
  EXPECT_EQ(m["102.pbs01"].state, AllocationState::kRunning);
  EXPECT_EQ(m["103.pbs01"].state, AllocationState::kFinished);
  EXPECT_EQ(m["104.pbs01"].state, AllocationState::kFailed);
  EXPECT_NE(m["104.pbs01"].detail.find("exit status 1"), std::string::npos);
  EXPECT_EQ(m["105.pbs01"].state, AllocationState::kQueued);
  EXPECT_EQ(m["106.pbs01"].state, AllocationState::kFinished) << "killed at its walltime";
}

TEST(AllocPbs, UnknownJobsAreAbsentOtherErrorsAreErrors) {
  auto pbs = make_backend(ManagerKind::kPbs);
  auto gone = pbs->parse_status(output(153, "", "qstat: Unknown Job Id 7.pbs01\n"));
  ASSERT_TRUE(gone) << gone.message();
  EXPECT_TRUE(gone->empty());
  auto partly = pbs->parse_status(
      output(153, R"({"Jobs":{"8.pbs01":{"job_state":"R"}}})", "qstat: Unknown Job Id 7.pbs01\n"));
  ASSERT_TRUE(partly) << partly.message();
  EXPECT_EQ(partly->size(), 1u);
  auto down = pbs->parse_status(
      output(1, "", "Connection refused\nqstat: cannot connect to server pbs01 (errno=111)\n"));
  ASSERT_FALSE(down);
  EXPECT_NE(down.message().find("qstat failed (exit 1): Connection refused"), std::string::npos);
  auto garbage = pbs->parse_status(output(0, "Job id  Name  User\n"));
  ASSERT_FALSE(garbage);
  EXPECT_EQ(garbage.message(), "qstat -F json printed something that is not a JSON object");
  auto state = pbs->parse_status(output(0, R"({"Jobs":{"9.s":{"job_state":"Z"}}})"));
  ASSERT_FALSE(state);
  EXPECT_EQ(state.message(), "qstat printed an unknown job state 'Z' (job 9.s)");
  auto no_state = pbs->parse_status(output(0, R"({"Jobs":{"9.s":{}}})"));
  ASSERT_FALSE(no_state);
  EXPECT_EQ(no_state.message(), "qstat printed job 9.s without a job_state");
}

TEST(AllocPbs, CancelingEndedAllocationsIsNoError) {
  auto pbs = make_backend(ManagerKind::kPbs);
  std::vector<std::string> expected{"qdel", "1.s"};
  EXPECT_EQ(pbs->cancel_command({"1.s"}), expected);
  EXPECT_TRUE(pbs->parse_cancel(output(0, "")));
  EXPECT_TRUE(pbs->parse_cancel(output(35, "", "qdel: Job has finished 1.s\n")));
  EXPECT_TRUE(pbs->parse_cancel(output(153, "", "qdel: Unknown Job Id 1.s\n")));
  EXPECT_FALSE(pbs->parse_cancel(output(159, "", "qdel: Unauthorized Request  1.s\n")));
}

TEST(AllocPbs, RemainingTimeIsWalltimeMinusUsed) {
  auto pbs = make_backend(ManagerKind::kPbs);
  EXPECT_EQ(pbs->job_id_variable(), "PBS_JOBID");
  std::vector<std::string> expected{"qstat", "-f", "-F", "json", "102.pbs01"};
  EXPECT_EQ(pbs->remaining_time_command("102.pbs01"), expected);
  auto running = pbs->parse_remaining_time(
      output(0, R"({"Jobs":{"102.pbs01":{"job_state":"R","Resource_List":{"walltime":"02:00:00"},
             "resources_used":{"walltime":"00:10:30"}}}})"));
  ASSERT_TRUE(running) << running.message();
  EXPECT_EQ(**running, 1h + 49min + 30s);
  auto seconds = pbs->parse_remaining_time(
      output(0, R"({"Jobs":{"1.s":{"job_state":"R","Resource_List":{"walltime":"3600"}}}})"));
  ASSERT_TRUE(seconds) << seconds.message();
  EXPECT_EQ(**seconds, 1h);
  auto unlimited = pbs->parse_remaining_time(output(0, R"({"Jobs":{"1.s":{"job_state":"R"}}})"));
  ASSERT_TRUE(unlimited);
  EXPECT_FALSE(unlimited->has_value());
  EXPECT_FALSE(pbs->parse_remaining_time(output(153, "", "qstat: Unknown Job Id 1.s\n")));
  auto bad = pbs->parse_remaining_time(
      output(0, R"({"Jobs":{"1.s":{"Resource_List":{"walltime":"soon"}}}})"));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.message(),
            "qstat printed a walltime that is not one: invalid walltime 'soon': expected "
            "HH:MM:SS or seconds");
}

}  // namespace
}  // namespace hq::alloc
