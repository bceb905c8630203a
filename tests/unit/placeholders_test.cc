#include "common/placeholders.h"

#include <gtest/gtest.h>

namespace hq {
namespace {

PlaceholderValues values() {
  PlaceholderValues v;
  v.job_id = "7";
  v.task_id = "3";
  v.instance_id = "1";
  v.cwd = "/w";
  v.submit_dir = "/s";
  v.server_uid = "abc";
  return v;
}

TEST(Placeholders, ExpandsAllKnown) {
  EXPECT_EQ(expand_placeholders("%{CWD}/job-%{JOB_ID}/%{TASK_ID}.%{INSTANCE_ID}.out", values()),
            "/w/job-7/3.1.out");
  EXPECT_EQ(expand_placeholders("%{SUBMIT_DIR}/%{SERVER_UID}", values()), "/s/abc");
  EXPECT_EQ(expand_placeholders("plain", values()), "plain");
  EXPECT_EQ(expand_placeholders("", values()), "");
}

TEST(Placeholders, LeavesUnknownAndUnclosedAsWritten) {
  EXPECT_EQ(expand_placeholders("%{FOO}-%{TASK_ID}", values()), "%{FOO}-3");
  EXPECT_EQ(expand_placeholders("x%{TASK_ID", values()), "x%{TASK_ID");
  EXPECT_EQ(expand_placeholders("%%{TASK_ID}}", values()), "%3}");
}

TEST(Placeholders, ReportsUnknownNames) {
  EXPECT_EQ(unknown_placeholders("%{CWD}/%{FOO}/%{TASK_ID}/%{bar}"),
            (std::vector<std::string>{"FOO", "bar"}));
  EXPECT_TRUE(unknown_placeholders("%{JOB_ID}").empty());
}

TEST(Placeholders, ResolvesAStreamDirectoryWithTheJobWideOnes) {
  EXPECT_EQ(resolve_stream_dir("log-%{SERVER_UID}-%{JOB_ID}", values()), "/s/log-abc-7");
  EXPECT_EQ(resolve_stream_dir("/out/%{JOB_ID}/", values()), "/out/7/");
  EXPECT_EQ(resolve_stream_dir("%{SUBMIT_DIR}/../x-%{JOB_ID}", values()), "/x-7");
  EXPECT_EQ(resolve_stream_dir("../plain", values()), "/plain");
  // Per-task ones have no single value: left as written (and refused at submit).
  EXPECT_EQ(resolve_stream_dir("/o/%{TASK_ID}-%{FOO}", values()), "/o/%{TASK_ID}-%{FOO}");
}

TEST(Placeholders, FindsPerTaskPlaceholders) {
  EXPECT_EQ(per_task_placeholders("%{JOB_ID}/%{TASK_ID}/%{CWD}/%{INSTANCE_ID}/%{FOO}"),
            (std::vector<std::string>{"TASK_ID", "CWD", "INSTANCE_ID"}));
  EXPECT_TRUE(per_task_placeholders("%{SUBMIT_DIR}/%{SERVER_UID}-%{JOB_ID}").empty());
}

}  // namespace
}  // namespace hq
