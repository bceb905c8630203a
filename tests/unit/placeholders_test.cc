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

}  // namespace
}  // namespace hq
