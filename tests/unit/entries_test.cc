#include "cli/entries.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "common/job_spec.h"

namespace hq::cli {
namespace {

namespace fs = std::filesystem;
using Lines = std::vector<std::string>;

class EntriesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hq-entries-test-" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }
  fs::path dir_;
};

TEST_F(EntriesTest, LinesWithoutTheirBreaks) {
  EXPECT_EQ(*read_line_entries(write("a", "x\ny z\n\nlast")), (Lines{"x", "y z", "", "last"}));
  EXPECT_EQ(*read_line_entries(write("b", "one\n")), (Lines{"one"}));
  EXPECT_TRUE(read_line_entries(write("c", ""))->empty());
  auto missing = read_line_entries((dir_ / "nope").string());
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.message().find("--each-line"), std::string::npos);
  EXPECT_NE(missing.message().find("nope"), std::string::npos);
}

TEST_F(EntriesTest, JsonElementsAsCompactJson) {
  auto entries = read_json_entries(write("a.json", "[ {\"k\": [1, 2]}, \"s\", 3, null ]"));
  ASSERT_TRUE(entries.is_ok()) << entries.message();
  EXPECT_EQ(*entries, (Lines{"{\"k\":[1,2]}", "\"s\"", "3", "null"}));
  auto object = read_json_entries(write("o.json", "{\"a\": 1}"));
  ASSERT_FALSE(object.is_ok());
  EXPECT_NE(object.message().find("o.json"), std::string::npos);
  EXPECT_NE(object.message().find("not an array"), std::string::npos) << object.message();
  auto broken = read_json_entries(write("b.json", "[1,"));
  ASSERT_FALSE(broken.is_ok());
  EXPECT_NE(broken.message().find("invalid JSON"), std::string::npos);
}

TEST_F(EntriesTest, SelectionKeepsTheChosenIndices) {
  EXPECT_EQ(*select_entries({"a", "b", "c", "d"}, {1, 3}, "f"), (Lines{"b", "d"}));
  auto past = select_entries({"a", "b"}, {0, 2}, "--each-line 'f'");
  ASSERT_FALSE(past.is_ok());
  EXPECT_NE(past.message().find("task 2 has no entry"), std::string::npos) << past.message();
}

TEST(TaskEntry, FollowsIdOrderOverRanges) {
  JobDescriptionSpec job;
  job.task_ids = IdSet({IdRange{1, 2, 1}, IdRange{10, 14, 2}});
  job.entries = {"e1", "e2", "e10", "e12", "e14"};
  ASSERT_TRUE(normalize_request(job));
  EXPECT_EQ(*task_entry(job, 1), "e1");
  EXPECT_EQ(*task_entry(job, 12), "e12");
  EXPECT_EQ(*task_entry(job, 14), "e14");
  EXPECT_EQ(task_entry(job, 11), nullptr);
  job.entries.pop_back();
  EXPECT_FALSE(normalize_request(job));  // one entry per task
  JobDescriptionSpec unordered;
  unordered.task_ids = IdSet({IdRange{5, 5, 1}, IdRange{1, 1, 1}});
  unordered.entries = {"a", "b"};
  EXPECT_FALSE(normalize_request(unordered));
}

}  // namespace
}  // namespace hq::cli
