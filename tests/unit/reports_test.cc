#include "worker/reports.h"

#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "output-stream/stream.h"

namespace hq::worker {
namespace {

namespace fs = std::filesystem;

class ReportsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("hq-reports-test-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::shared_ptr<stream::StreamWriter> writer(const std::string& name) {
    auto w = stream::StreamWriter::create(dir_ / name, "uid", 1);
    EXPECT_TRUE(w) << w.message();
    return std::move(*w);
  }

  // A task that ran and ended in `w`'s stream, reported as `report`.
  static TaskReport ended(const std::shared_ptr<stream::StreamWriter>& w, TaskKey key) {
    EXPECT_TRUE(w->task_start(key, 1));
    EXPECT_TRUE(w->data(key, stream::Channel::kStdout, std::string_view("out\n")));
    EXPECT_TRUE(w->task_end(key, true, 0, 2));
    return TaskReport{key, 2, {}, w};
  }

  fs::path dir_;
};

TEST_F(ReportsTest, EndsAreSentOnlyAfterOneSyncPerStream) {
  auto a = writer("a");
  auto b = writer("b");
  Reports reports;
  reports.pending().finished.push_back(ended(a, {1, 1, 0}));
  reports.pending().finished.push_back(ended(a, {1, 2, 0}));
  TaskReport failed = ended(b, {2, 1, 0});
  failed.error = "Program terminated with exit code 1";
  reports.pending().failed.push_back(failed);
  reports.pending().finished.push_back({{3, 1, 0}, 2, {}, nullptr});  // no stream

  int sends = 0;
  auto broken = reports.flush([&](const ReportBatch& batch) {
    ++sends;
    // At the moment of sending, each stream was synced once, whatever its number of tasks.
    EXPECT_EQ(a->syncs(), 1u);
    EXPECT_EQ(b->syncs(), 1u);
    EXPECT_EQ(batch.finished.size(), 3u);
    EXPECT_EQ(batch.failed.size(), 1u);
  });
  EXPECT_EQ(sends, 1);
  EXPECT_TRUE(broken.empty());
  EXPECT_TRUE(reports.pending().empty());

  // The next turn has nothing ended: no sync.
  reports.pending().started.push_back({{4, 1, 0}, 3, {}, nullptr});
  auto none = reports.flush([&](const ReportBatch& batch) { EXPECT_EQ(batch.started.size(), 1u); });
  EXPECT_TRUE(none.empty());
  EXPECT_EQ(a->syncs(), 1u);
}

TEST_F(ReportsTest, EndWhoseStreamCannotBeSyncedIsReportedFailed) {
  auto a = writer("a");
  TaskReport report = ended(a, {1, 1, 0});
  ASSERT_TRUE(a->close());  // every later call of the writer fails, sync() too
  Reports reports;
  reports.pending().finished.push_back(report);
  auto broken = reports.flush([&](const ReportBatch& batch) {
    EXPECT_TRUE(batch.finished.empty());
    ASSERT_EQ(batch.failed.size(), 1u);
    EXPECT_EQ(batch.failed[0].key, (TaskKey{1, 1, 0}));
    EXPECT_NE(batch.failed[0].error.find("cannot write the output stream"), std::string::npos)
        << batch.failed[0].error;
  });
  ASSERT_EQ(broken.size(), 1u);
  EXPECT_EQ(broken[0], a);
}

}  // namespace
}  // namespace hq::worker
