#include "net/access.h"

#include <sys/stat.h>

#include <fstream>

#include <gtest/gtest.h>

namespace hq::net {
namespace {

class AccessFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hq-access-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(AccessFileTest, RoundTripsWithMode0600) {
  AccessRecord r = new_access_record("node1");
  r.client_port = 1234;
  r.worker_port = 5678;
  r.pid = 42;
  fs::path path = dir_ / "access.json";
  ASSERT_TRUE(write_access_file(path, r).is_ok());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  auto back = read_access_file(path);
  ASSERT_TRUE(back.is_ok()) << back.message();
  EXPECT_EQ(back->host, "node1");
  EXPECT_EQ(back->client_port, 1234);
  EXPECT_EQ(back->worker_port, 5678);
  EXPECT_EQ(back->client_key, r.client_key);
  EXPECT_EQ(back->worker_key, r.worker_key);
  EXPECT_EQ(back->server_uid, r.server_uid);
  EXPECT_NE(r.client_key, r.worker_key);
}

TEST_F(AccessFileTest, FreshRecordsDiffer) {
  AccessRecord a = new_access_record("h");
  AccessRecord b = new_access_record("h");
  EXPECT_NE(a.client_key, b.client_key);
  EXPECT_NE(a.server_uid, b.server_uid);
}

TEST_F(AccessFileTest, ErrorsNameTheProblem) {
  auto missing = read_access_file(dir_ / "nope.json");
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.message().find("no access file"), std::string::npos);

  auto write = [&](const std::string& text) {
    std::ofstream(dir_ / "bad.json") << text;
    fs::permissions(dir_ / "bad.json", fs::perms::owner_read | fs::perms::owner_write);
    return read_access_file(dir_ / "bad.json");
  };
  EXPECT_NE(write("{not json").message().find("malformed access file"), std::string::npos);
  EXPECT_NE(write("{\"version\": 99}").message().find("format version 99"), std::string::npos);
  AccessRecord r = new_access_record("h");
  ASSERT_TRUE(write_access_file(dir_ / "ok.json", r).is_ok());
  std::ifstream in(dir_ / "ok.json");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::string hex = key_to_hex(r.client_key);
  text.replace(text.find(hex), hex.size(), "zz");
  auto bad_key = write(text);
  ASSERT_FALSE(bad_key.is_ok());
  EXPECT_NE(bad_key.message().find("client_key"), std::string::npos) << bad_key.message();
}

TEST_F(AccessFileTest, ReadableByGroupOrOthersIsRefusedWithTheFix) {
  fs::path path = dir_ / "access.json";
  ASSERT_TRUE(write_access_file(path, new_access_record("h")).is_ok());
  for (mode_t mode : {0640, 0604, 0644}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    auto r = read_access_file(path);
    ASSERT_FALSE(r.is_ok()) << std::oct << mode;
    EXPECT_NE(r.message().find("readable by group or others"), std::string::npos) << r.message();
    EXPECT_NE(r.message().find("chmod 600 " + path.string()), std::string::npos) << r.message();
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_TRUE(read_access_file(path).is_ok());
}

TEST_F(AccessFileTest, WrittenPrivateUnderAnyUmaskAndNeverThroughAPlantedLink) {
  fs::path path = dir_ / "access.json";
  fs::path victim = dir_ / "victim";
  std::ofstream(victim) << "untouched";
  fs::create_symlink(victim, dir_ / "access.json.tmp");
  mode_t old = ::umask(0);
  Status st = write_access_file(path, new_access_record("h"));
  ::umask(old);
  ASSERT_TRUE(st.is_ok()) << st.message();
  struct stat info;
  ASSERT_EQ(::lstat(path.c_str(), &info), 0);
  EXPECT_TRUE(S_ISREG(info.st_mode));
  EXPECT_EQ(info.st_mode & 07777, 0600u);
  std::ifstream in(victim);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "untouched");
  EXPECT_TRUE(read_access_file(path).is_ok());
}

}  // namespace
}  // namespace hq::net
