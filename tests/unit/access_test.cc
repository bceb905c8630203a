#include "net/access.h"

#include <sys/stat.h>

#include <fstream>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

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

// A record as a running server writes it.
AccessRecord server_record() {
  AccessRecord r = new_access_record("login1", "node1");
  r.client->port = 1234;
  r.worker->port = 5678;
  r.pid = 42;
  r.start_time = 1'700'000'000'000;
  return r;
}

std::string slurp(const fs::path& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

TEST_F(AccessFileTest, RoundTripsBothHalvesWithMode0600) {
  AccessRecord r = server_record();
  fs::path path = dir_ / "access.json";
  ASSERT_TRUE(write_access_file(path, r).is_ok());
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  for (AccessUse use :
       {AccessUse::kAny, AccessUse::kClient, AccessUse::kWorker, AccessUse::kServer}) {
    auto back = read_access_file(path, use);
    ASSERT_TRUE(back.is_ok()) << back.message();
    ASSERT_TRUE(back->client && back->worker);
    EXPECT_EQ(back->client->host, "login1");
    EXPECT_EQ(back->client->port, 1234);
    EXPECT_EQ(back->client->key, r.client->key);
    EXPECT_EQ(back->worker->host, "node1");
    EXPECT_EQ(back->worker->port, 5678);
    EXPECT_EQ(back->worker->key, r.worker->key);
    EXPECT_EQ(back->server_uid, r.server_uid);
    EXPECT_EQ(back->version, HQ_VERSION);
    EXPECT_EQ(back->pid, 42);
    EXPECT_EQ(back->start_time, 1'700'000'000'000);
  }
  EXPECT_NE(r.client->key, r.worker->key);
}

TEST_F(AccessFileTest, WritesHyperQueuesLayout) {
  AccessRecord r = server_record();
  fs::path path = dir_ / "access.json";
  ASSERT_TRUE(write_access_file(path, r).is_ok());
  auto j = nlohmann::json::parse(slurp(path));
  EXPECT_EQ(j["version"], HQ_VERSION);
  EXPECT_EQ(j["server_uid"], r.server_uid);
  EXPECT_EQ(j["client"]["host"], "login1");
  EXPECT_EQ(j["client"]["port"], 1234);
  EXPECT_EQ(j["client"]["secret_key"], key_to_hex(r.client->key));
  EXPECT_EQ(j["worker"]["host"], "node1");
  EXPECT_EQ(j["worker"]["port"], 5678);
  EXPECT_EQ(j["worker"]["secret_key"], key_to_hex(r.worker->key));
  EXPECT_EQ(j["worker"]["secret_key"].get<std::string>().size(), 64u);
  EXPECT_EQ(j["pid"], 42);
  EXPECT_EQ(j["start_time"], 1'700'000'000'000);
  EXPECT_FALSE(j.contains("client_key") || j.contains("host") || j.contains("client_port"));
}

TEST_F(AccessFileTest, ReadsAFileWrittenByHyperQueue) {
  fs::path path = dir_ / "access.json";
  const std::string key(64, 'a');
  std::ofstream(path) << R"({"version": "0.17.0", "server_uid": "Lqacwy", )"
                      << R"("client": {"host": "login1", "port": 6789, "secret_key": ")" << key
                      << R"("}, "worker": {"host": "login1", "port": 1234, "secret_key": ")"
                      << std::string(64, 'b') << R"("}})";
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
  auto r = read_access_file(path, AccessUse::kServer);
  ASSERT_TRUE(r.is_ok()) << r.message();
  EXPECT_EQ(r->version, "0.17.0");
  EXPECT_EQ(r->server_uid, "Lqacwy");
  EXPECT_EQ(r->client->port, 6789);
  EXPECT_EQ(key_to_hex(r->client->key), key);
  EXPECT_EQ(r->worker->port, 1234);
  EXPECT_EQ(r->pid, 0);
}

TEST_F(AccessFileTest, OneHalfServesItsRoleAndNamesTheMissingSection) {
  AccessRecord full = server_record();
  AccessRecord client_half = full;
  client_half.worker.reset();
  AccessRecord worker_half = full;
  worker_half.client.reset();
  fs::path client_path = dir_ / "client.json", worker_path = dir_ / "worker.json";
  ASSERT_TRUE(write_access_file(client_path, client_half).is_ok());
  ASSERT_TRUE(write_access_file(worker_path, worker_half).is_ok());
  EXPECT_FALSE(nlohmann::json::parse(slurp(client_path)).contains("worker"));
  EXPECT_FALSE(nlohmann::json::parse(slurp(worker_path)).contains("client"));

  auto client = read_access_file(client_path, AccessUse::kClient);
  ASSERT_TRUE(client.is_ok()) << client.message();
  EXPECT_FALSE(client->worker);
  EXPECT_EQ(client->client->key, full.client->key);
  EXPECT_EQ(client->server_uid, full.server_uid);
  auto worker = read_access_file(worker_path, AccessUse::kWorker);
  ASSERT_TRUE(worker.is_ok()) << worker.message();
  EXPECT_FALSE(worker->client);
  EXPECT_EQ(worker->worker->key, full.worker->key);
  EXPECT_TRUE(read_access_file(worker_path, AccessUse::kAny).is_ok());

  auto no_worker = read_access_file(client_path, AccessUse::kWorker);
  ASSERT_FALSE(no_worker.is_ok());
  EXPECT_NE(no_worker.message().find(client_path.string()), std::string::npos);
  EXPECT_NE(no_worker.message().find("no \"worker\" section"), std::string::npos)
      << no_worker.message();
  auto no_client = read_access_file(worker_path, AccessUse::kClient);
  ASSERT_FALSE(no_client.is_ok());
  EXPECT_NE(no_client.message().find("no \"client\" section"), std::string::npos)
      << no_client.message();
  // A server needs both.
  auto server = read_access_file(worker_path, AccessUse::kServer);
  ASSERT_FALSE(server.is_ok());
  EXPECT_NE(server.message().find("no \"client\" section, which a server needs"), std::string::npos)
      << server.message();
  EXPECT_FALSE(read_access_file(client_path, AccessUse::kServer).is_ok());
}

TEST_F(AccessFileTest, FreshRecordsDiffer) {
  AccessRecord a = new_access_record("h", "h");
  AccessRecord b = new_access_record("h", "h");
  EXPECT_NE(a.client->key, b.client->key);
  EXPECT_NE(a.worker->key, b.worker->key);
  EXPECT_NE(a.client->key, a.worker->key);
  EXPECT_NE(a.server_uid, b.server_uid);
}

TEST_F(AccessFileTest, ErrorsNameTheProblem) {
  auto missing = read_access_file(dir_ / "nope.json", AccessUse::kClient);
  ASSERT_FALSE(missing.is_ok());
  EXPECT_NE(missing.message().find("no access file"), std::string::npos);

  auto write = [&](const std::string& text) {
    std::ofstream(dir_ / "bad.json") << text;
    fs::permissions(dir_ / "bad.json", fs::perms::owner_read | fs::perms::owner_write);
    return read_access_file(dir_ / "bad.json", AccessUse::kAny);
  };
  EXPECT_NE(write("{not json").message().find("malformed access file"), std::string::npos);
  EXPECT_NE(write(R"({"version": "1.0", "server_uid": "x"})").message().find("neither"),
            std::string::npos);
  EXPECT_NE(write(R"({"version": "1.0", "server_uid": "x", "client": 5})")
                .message()
                .find("\"client\" is not an object"),
            std::string::npos);
  AccessRecord r = new_access_record("h", "h");
  ASSERT_TRUE(write_access_file(dir_ / "ok.json", r).is_ok());
  std::string text = slurp(dir_ / "ok.json");
  std::string hex = key_to_hex(r.client->key);
  text.replace(text.find(hex), hex.size(), "zz");
  auto bad_key = write(text);
  ASSERT_FALSE(bad_key.is_ok());
  EXPECT_NE(bad_key.message().find("client.secret_key"), std::string::npos) << bad_key.message();
}

TEST_F(AccessFileTest, OldFlatFormatIsRefusedWithTheFix) {
  fs::path path = dir_ / "access.json";
  std::ofstream(path) << R"({"version": 1, "server_uid": "abc", "host": "h", )"
                      << R"("client_port": 1, "worker_port": 2, "client_key": ")"
                      << std::string(64, 'a') << R"(", "worker_key": ")" << std::string(64, 'b')
                      << R"(", "pid": 7, "start_time": 0})";
  fs::permissions(path, fs::perms::owner_read | fs::perms::owner_write);
  for (AccessUse use : {AccessUse::kAny, AccessUse::kClient, AccessUse::kWorker}) {
    auto r = read_access_file(path, use);
    ASSERT_FALSE(r.is_ok());
    EXPECT_NE(r.message().find(path.string()), std::string::npos) << r.message();
    EXPECT_NE(r.message().find("old flat layout (version 1)"), std::string::npos) << r.message();
    EXPECT_NE(r.message().find("hq server generate-access"), std::string::npos) << r.message();
  }
}

TEST_F(AccessFileTest, ReadableByGroupOrOthersIsRefusedWithTheFix) {
  fs::path path = dir_ / "access.json";
  ASSERT_TRUE(write_access_file(path, new_access_record("h", "h")).is_ok());
  for (mode_t mode : {0640, 0604, 0644}) {
    ASSERT_EQ(::chmod(path.c_str(), mode), 0);
    auto r = read_access_file(path, AccessUse::kServer);
    ASSERT_FALSE(r.is_ok()) << std::oct << mode;
    EXPECT_NE(r.message().find("readable by group or others"), std::string::npos) << r.message();
    EXPECT_NE(r.message().find("chmod 600 " + path.string()), std::string::npos) << r.message();
  }
  ASSERT_EQ(::chmod(path.c_str(), 0600), 0);
  EXPECT_TRUE(read_access_file(path, AccessUse::kServer).is_ok());
}

TEST_F(AccessFileTest, WrittenPrivateUnderAnyUmaskAndNeverThroughAPlantedLink) {
  fs::path path = dir_ / "access.json";
  fs::path victim = dir_ / "victim";
  std::ofstream(victim) << "untouched";
  fs::create_symlink(victim, dir_ / "access.json.tmp");
  mode_t old = ::umask(0);
  Status st = write_access_file(path, new_access_record("h", "h"));
  ::umask(old);
  ASSERT_TRUE(st.is_ok()) << st.message();
  struct stat info;
  ASSERT_EQ(::lstat(path.c_str(), &info), 0);
  EXPECT_TRUE(S_ISREG(info.st_mode));
  EXPECT_EQ(info.st_mode & 07777, 0600u);
  std::ifstream in(victim);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "untouched");
  EXPECT_TRUE(read_access_file(path, AccessUse::kServer).is_ok());
}

}  // namespace
}  // namespace hq::net
