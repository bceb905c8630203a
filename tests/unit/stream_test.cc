#include "output-stream/stream.h"

#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/output_commands.h"
#include "output-stream/crc32c.h"

namespace hq::stream {
namespace {

std::string slurp(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void spill(const fs::path& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<fs::path> files_with(const fs::path& dir, std::string_view extension) {
  std::vector<fs::path> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.path().extension() == extension) out.push_back(e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::unique_ptr<StreamWriter> make_writer(const fs::path& dir, const std::string& uid,
                                          WorkerId worker, WriterOptions options = {}) {
  auto w = StreamWriter::create(dir, uid, worker, std::move(options));
  EXPECT_TRUE(w.is_ok()) << w.message();
  return std::move(w).value();
}

std::unique_ptr<StreamReader> open_ok(const fs::path& dir, ReaderOptions options = {}) {
  auto r = StreamReader::open(dir, options);
  EXPECT_TRUE(r.is_ok()) << r.message();
  return r.is_ok() ? std::move(r).value() : nullptr;
}

std::string read_all(const StreamReader& reader, const TaskInfo& task, Channel channel) {
  std::string out;
  Status s = reader.read(task, channel, [&](std::string_view bytes) {
    out.append(bytes);
    return Status::ok();
  });
  EXPECT_TRUE(s.is_ok()) << s.message();
  return out;
}

std::string output_of(const StreamReader& reader, JobId job, TaskId task, Channel channel) {
  auto t = reader.task(job, task);
  if (!t) return "<missing>";
  return read_all(reader, *t, channel);
}

// Options of a reader that only reads: it saves no index sidecar.
ReaderOptions no_sidecar() {
  ReaderOptions o;
  o.save_index = false;
  return o;
}

void ok(Status s) { ASSERT_TRUE(s.is_ok()) << s.message(); }

class StreamTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("hq-stream-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST(Crc32cTest, MatchesTheStandardAndBothPathsAgree) {
  const std::string check = "123456789";
  auto bytes = [](std::string_view s) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(s.data()), s.size());
  };
  EXPECT_EQ(crc32c(bytes(check)), 0xE3069283u);
  EXPECT_EQ(crc32c_portable(bytes(check)), 0xE3069283u);
  EXPECT_EQ(crc32c(bytes("")), 0u);
  std::mt19937 rng(7);
  std::string data(4099, '\0');
  for (char& c : data) c = static_cast<char>(rng());
  for (size_t n : {1u, 7u, 8u, 9u, 63u, 1000u, 4099u}) {
    std::string_view s(data.data(), n);
    EXPECT_EQ(crc32c(bytes(s)), crc32c_portable(bytes(s))) << n;
    // Continuing from the CRC of a prefix gives the CRC of the whole.
    EXPECT_EQ(crc32c(bytes(s.substr(n / 3)), crc32c(bytes(s.substr(0, n / 3)))), crc32c(bytes(s)));
  }
}

TEST_F(StreamTest, RoundTripsInterleavedTasksAndBothChannels) {
  int64_t now = 1000;
  WriterOptions options;
  options.buffer_bytes = 4096;  // small, so that records straddle many writes
  options.clock = [&] { return now++; };
  auto w = make_writer(dir_, "srv1", 3, options);
  const TaskKey a{7, 1, 0}, b{7, 2, 0}, c{9, 0, 0};
  std::string big(2'500'000, '\0');  // split into three records of at most 1 MiB
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);

  ok(w->task_start(a, 100));
  ok(w->task_start(b, 101));
  ok(w->data(a, Channel::kStdout, "a-out-1 "));
  ok(w->data(b, Channel::kStderr, "b-err-1\n"));
  ok(w->data(a, Channel::kStderr, "a-err-1\n"));
  ok(w->data(b, Channel::kStdout, ""));  // dropped
  ok(w->task_start(c, 102));
  ok(w->data(a, Channel::kStdout, "a-out-2\n"));
  ok(w->data(c, Channel::kStdout, big));
  ok(w->data(b, Channel::kStdout, "b-out-1\n"));
  ok(w->task_end(a, true, 0, 200));
  // A task's end writes the buffer: its whole output is in the file without a flush().
  EXPECT_EQ(fs::file_size(w->path()), w->size());
  ok(w->task_end(b, false, 3, 201));
  ok(w->data(c, Channel::kStderr, "c-err"));
  ok(w->flush());  // c never ends: its stream stays open

  auto r = open_ok(dir_);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->server_uid(), "srv1");
  EXPECT_TRUE(r->damage().empty());
  EXPECT_EQ(output_of(*r, 7, 1, Channel::kStdout), "a-out-1 a-out-2\n");
  EXPECT_EQ(output_of(*r, 7, 1, Channel::kStderr), "a-err-1\n");
  EXPECT_EQ(output_of(*r, 7, 2, Channel::kStdout), "b-out-1\n");
  EXPECT_EQ(output_of(*r, 7, 2, Channel::kStderr), "b-err-1\n");
  EXPECT_EQ(output_of(*r, 9, 0, Channel::kStdout), big);
  EXPECT_EQ(output_of(*r, 9, 0, Channel::kStderr), "c-err");

  auto tasks = r->tasks(7);
  ASSERT_EQ(tasks.size(), 2u);
  EXPECT_EQ(tasks[0].task, 1u);
  EXPECT_TRUE(tasks[0].started && tasks[0].finished && tasks[0].ok);
  EXPECT_EQ(tasks[0].start_ms, 100);
  EXPECT_EQ(tasks[0].end_ms, 200);
  EXPECT_EQ(tasks[0].bytes[0], 16u);
  EXPECT_EQ(tasks[1].task, 2u);
  EXPECT_TRUE(tasks[1].finished);
  EXPECT_FALSE(tasks[1].ok);
  EXPECT_EQ(tasks[1].exit_code, 3);
  auto c_info = r->task(9, 0);
  ASSERT_TRUE(c_info);
  EXPECT_TRUE(c_info->started);
  EXPECT_FALSE(c_info->finished);
  EXPECT_EQ(c_info->chunks, 4u);  // 3 stdout records + 1 stderr
  EXPECT_FALSE(r->task(9, 1));
  EXPECT_FALSE(r->task(8, 1));

  Summary s = r->summary();
  EXPECT_EQ(s.files, 1u);
  EXPECT_EQ(s.jobs, 2u);
  EXPECT_EQ(s.tasks, 3u);
  EXPECT_EQ(s.finished, 2u);
  EXPECT_EQ(s.open, 1u);
  EXPECT_EQ(s.bytes[0], 16u + 8u + big.size());
  EXPECT_EQ(s.bytes[1], 8u + 8u + 5u);
  EXPECT_EQ(s.records, 3u + 9u + 2u);  // starts, data (big is 3 records), ends
  EXPECT_EQ(s.superseded_instances, 0u);
  auto jobs = r->jobs();
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].id, 7u);
  EXPECT_EQ(jobs[0].tasks, 2u);
  EXPECT_EQ(jobs[1].id, 9u);

  // Chunks in record order (one file), each task channel's last one marked.
  std::vector<std::string> seen;
  ok(r->for_each_chunk(7, std::nullopt, [&](const Chunk& ch) {
    seen.push_back(fmt::format("{}:{}:{}{}", ch.key.task, static_cast<int>(ch.channel), ch.bytes,
                               ch.last ? "$" : ""));
    return Status::ok();
  }));
  EXPECT_EQ(seen, (std::vector<std::string>{"1:0:a-out-1 ", "2:1:b-err-1\n$", "1:1:a-err-1\n$",
                                            "1:0:a-out-2\n$", "2:0:b-out-1\n$"}));
}

TEST_F(StreamTest, WorkersWriteTheirOwnFilesAndReadersMergeThemByTime) {
  int64_t t1 = 10, t2 = 20;
  WriterOptions o1, o2;
  o1.clock = [&] { return std::exchange(t1, t1 + 20); };  // 10, 30, ...
  o2.clock = [&] { return std::exchange(t2, t2 + 20); };  // 20, 40, ...
  auto w1 = make_writer(dir_, "srv", 1, o1);
  auto w2 = make_writer(dir_, "srv", 2, o2);
  auto w1b = make_writer(dir_, "srv", 1);  // the same worker twice still gets its own file
  EXPECT_NE(w1->path(), w2->path());
  EXPECT_NE(w1->path(), w1b->path());
  for (TaskId t = 0; t < 4; ++t) {
    StreamWriter& w = t % 2 ? *w2 : *w1;
    ok(w.task_start({1, t, 0}, 1));
    ok(w.data({1, t, 0}, Channel::kStdout, fmt::format("line {}\n", t)));
  }
  for (TaskId t = 0; t < 4; ++t) ok((t % 2 ? *w2 : *w1).task_end({1, t, 0}, true, 0, 2));
  ok(w1b->task_start({2, 0, 0}, 1));
  ok(w1b->flush());
  EXPECT_EQ(files_with(dir_, ".hqs").size(), 3u);

  auto r = open_ok(dir_);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->summary().files, 3u);
  EXPECT_EQ(r->summary().tasks, 5u);
  std::vector<TaskId> order;
  ok(r->for_each_chunk(1, Channel::kStdout, [&](const Chunk& c) {
    order.push_back(c.key.task);
    EXPECT_EQ(c.bytes, fmt::format("line {}\n", c.key.task));
    return Status::ok();
  }));
  EXPECT_EQ(order, (std::vector<TaskId>{0, 1, 2, 3}));  // times 10, 20, 30, 40
  for (TaskId t = 0; t < 4; ++t) {
    EXPECT_EQ(output_of(*r, 1, t, Channel::kStdout), fmt::format("line {}\n", t));
  }
}

TEST_F(StreamTest, ServesTheLastInstanceAndCountsSupersededOnes) {
  auto w1 = make_writer(dir_, "srv", 1);
  auto w2 = make_writer(dir_, "srv", 2);
  // Instance 0 ran on worker 1, which was lost mid-task; instance 1 ran on worker 2.
  ok(w1->task_start({1, 5, 0}, 1));
  ok(w1->data({1, 5, 0}, Channel::kStdout, "old output"));
  ok(w1->flush());
  ok(w2->task_start({1, 5, 1}, 2));
  ok(w2->data({1, 5, 1}, Channel::kStdout, "new"));
  ok(w2->task_end({1, 5, 1}, true, 0, 3));
  // In one file, a higher instance wins even when an older one comes after it.
  ok(w2->task_start({1, 6, 2}, 1));
  ok(w2->data({1, 6, 2}, Channel::kStderr, "two"));
  ok(w2->task_end({1, 6, 2}, true, 0, 3));
  ok(w2->task_start({1, 6, 1}, 1));
  ok(w2->data({1, 6, 1}, Channel::kStderr, "one!"));
  ok(w2->task_end({1, 6, 1}, false, 1, 3));

  auto r = open_ok(dir_);
  ASSERT_TRUE(r);
  auto t5 = r->task(1, 5);
  ASSERT_TRUE(t5);
  EXPECT_EQ(t5->instance, 1u);
  EXPECT_TRUE(t5->finished);
  EXPECT_EQ(t5->superseded, 1u);
  EXPECT_EQ(t5->superseded_bytes[0] + t5->superseded_bytes[1], 10u);
  EXPECT_EQ(read_all(*r, *t5, Channel::kStdout), "new");
  auto t6 = r->task(1, 6);
  ASSERT_TRUE(t6);
  EXPECT_EQ(t6->instance, 2u);
  EXPECT_TRUE(t6->ok);
  EXPECT_EQ(read_all(*r, *t6, Channel::kStderr), "two");

  Summary s = r->summary();
  EXPECT_EQ(s.tasks, 2u);
  EXPECT_EQ(s.open, 0u);  // the lost instance 0 does not count: it was superseded
  EXPECT_EQ(s.superseded_instances, 2u);
  EXPECT_EQ(s.superseded_bytes[0] + s.superseded_bytes[1], 14u);
  EXPECT_EQ(s.bytes[0], 3u);
  EXPECT_EQ(s.bytes[1], 3u);
  std::string shown;
  ok(r->for_each_chunk(std::nullopt, std::nullopt, [&](const Chunk& c) {
    shown.append(c.bytes);
    return Status::ok();
  }));
  EXPECT_EQ(shown, "newtwo");
}

// Every task writes "task-NNNN|" repeated, so that its bytes can be found in the file.
std::string payload_of(TaskId t, size_t repeat) {
  std::string out;
  for (size_t i = 0; i < repeat; ++i) out += fmt::format("task-{:04}|", t);
  return out;
}

TEST_F(StreamTest, TheIndexReadsOneTaskWithoutTouchingTheOthers) {
  constexpr TaskId kTasks = 300;
  {
    auto w = make_writer(dir_, "srv", 1);
    for (TaskId t = 0; t < kTasks; ++t) ok(w->task_start({1, t, 0}, 1));
    for (int round = 0; round < 3; ++round) {
      for (TaskId t = 0; t < kTasks; ++t)
        ok(w->data({1, t, 0}, Channel::kStdout, payload_of(t, 5)));
    }
    for (TaskId t = 0; t < kTasks; ++t) ok(w->task_end({1, t, 0}, true, 0, 2));
  }
  const fs::path file = files_with(dir_, ".hqs").at(0);
  ReaderOptions save;
  save.save_index_min_bytes = 0;
  {
    // The first reader scans record headers and seeks over payloads.
    auto r = open_ok(dir_, save);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->stats().records_decoded, kTasks * 5);
    EXPECT_EQ(r->stats().payload_bytes, 0u);
  }
  ASSERT_EQ(files_with(dir_, ".hqx").size(), 1u);

  // Garble every payload byte of every task but 123: a reader that touched them would fail their
  // checksums.
  std::string bytes = slurp(file);
  const std::string keep = "task-0123|";
  size_t garbled = 0;
  for (size_t pos = 0; (pos = bytes.find("task-", pos)) != std::string::npos; pos += 10) {
    if (bytes.compare(pos, keep.size(), keep) == 0) continue;
    for (size_t i = 0; i < 10; ++i) bytes[pos + i] = '#';
    ++garbled;
  }
  EXPECT_EQ(garbled, (kTasks - 1) * 15);
  spill(file, bytes);

  auto r = open_ok(dir_, save);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->stats().records_decoded, 0u);  // everything came from the sidecar
  auto t = r->task(1, 123);
  ASSERT_TRUE(t);
  EXPECT_EQ(read_all(*r, *t, Channel::kStdout),
            payload_of(123, 5) + payload_of(123, 5) + payload_of(123, 5));
  EXPECT_EQ(r->stats().records_decoded, 3u);  // its three data records, nothing else
  EXPECT_EQ(r->stats().payload_bytes, 150u);
  EXPECT_EQ(r->summary().tasks, kTasks);
  EXPECT_EQ(r->stats().payload_bytes, 150u);  // the summary reads no output

  auto other = r->task(1, 124);
  ASSERT_TRUE(other);
  Status s = r->read(*other, Channel::kStdout, [](std::string_view) { return Status::ok(); });
  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find("checksum mismatch"), std::string::npos) << s.message();
  EXPECT_NE(s.message().find(file.string()), std::string::npos) << s.message();
}

TEST_F(StreamTest, SidecarsCoverAPrefixAndTheRestIsScanned) {
  auto w = make_writer(dir_, "srv", 1);
  ok(w->task_start({1, 0, 0}, 1));
  ok(w->data({1, 0, 0}, Channel::kStdout, "first "));
  ok(w->flush());
  ReaderOptions save;
  save.save_index_min_bytes = 0;
  { ASSERT_TRUE(open_ok(dir_, save)); }
  ASSERT_EQ(files_with(dir_, ".hqx").size(), 1u);
  const fs::path sidecar = files_with(dir_, ".hqx").at(0);

  // The writer goes on after the sidecar was saved.
  ok(w->data({1, 0, 0}, Channel::kStdout, "second"));
  ok(w->task_end({1, 0, 0}, true, 0, 2));
  const ReaderOptions keep = no_sidecar();
  {
    auto r = open_ok(dir_, keep);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->stats().records_decoded, 2u);  // only what came after the sidecar
    EXPECT_EQ(output_of(*r, 1, 0, Channel::kStdout), "first second");
    EXPECT_TRUE(r->task(1, 0)->finished);
    EXPECT_EQ(r->summary().records, 4u);
  }
  // A sidecar that is garbage, or belongs to another file, is ignored.
  const std::string good = slurp(sidecar);
  for (std::string bad : {std::string("garbage"), std::string(good.size(), '\x55'),
                          good.substr(0, good.size() - 1)}) {
    spill(sidecar, bad);
    auto r = open_ok(dir_, keep);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->stats().records_decoded, 4u);
    EXPECT_EQ(output_of(*r, 1, 0, Channel::kStdout), "first second");
  }
  spill(sidecar, good);
  const fs::path file = w->path();
  w.reset();
  fs::remove(file);
  auto other = make_writer(dir_, "srv", 1);
  ok(other->task_start({1, 0, 0}, 1));
  ok(other->data({1, 0, 0}, Channel::kStdout, "another file"));
  ok(other->flush());
  fs::rename(other->path(), file);  // now `sidecar` names a file it does not describe
  auto r = open_ok(dir_, keep);
  ASSERT_TRUE(r);
  EXPECT_EQ(output_of(*r, 1, 0, Channel::kStdout), "another file");
}

// What a reader must find in a stream cut after `records` records.
struct Expected {
  std::map<TaskRef, std::string> out[kChannels];
  std::map<TaskRef, bool> finished;
};

TEST_F(StreamTest, ATornTailLosesOnlyTheTornRecordAtEveryOffset) {
  const fs::path src = dir_ / "src";
  std::vector<uint64_t> boundaries;  // file size after the header and after each record
  std::vector<std::function<void(Expected&)>> effects;
  uint64_t size = 0;
  std::string full_index;
  {
    auto w = make_writer(src, "srv", 1);
    boundaries.push_back(w->size());
    auto step = [&](Status s, std::function<void(Expected&)> effect) {
      ASSERT_TRUE(s.is_ok()) << s.message();
      ASSERT_TRUE(w->flush().is_ok());
      boundaries.push_back(w->size());
      effects.push_back(std::move(effect));
    };
    const TaskKey a{1, 1, 0}, b{1, 2, 0};
    auto data = [&](TaskKey k, Channel c, std::string text) {
      step(w->data(k, c, text), [=](Expected& e) { e.out[static_cast<int>(c)][k.ref()] += text; });
    };
    auto start = [&](TaskKey k) {
      step(w->task_start(k, 5), [=](Expected& e) { e.finished[k.ref()] = false; });
    };
    auto end = [&](TaskKey k) {
      step(w->task_end(k, true, 0, 6), [=](Expected& e) { e.finished[k.ref()] = true; });
    };
    start(a);
    data(a, Channel::kStdout, "hello ");
    start(b);
    data(b, Channel::kStderr, "a stderr line that is longer than a word\n");
    data(a, Channel::kStdout, "world\n");
    end(a);
    data(b, Channel::kStdout, "x");
    end(b);
    size = w->size();
  }
  ReaderOptions save;
  save.save_index_min_bytes = 0;
  { ASSERT_TRUE(open_ok(src, save)); }
  const std::string bytes = slurp(files_with(src, ".hqs").at(0));
  full_index = slurp(files_with(src, ".hqx").at(0));
  ASSERT_EQ(bytes.size(), size);

  const ReaderOptions keep = no_sidecar();
  for (uint64_t cut = 0; cut <= size; ++cut) {
    SCOPED_TRACE("cut at " + std::to_string(cut));
    const fs::path dir = dir_ / "cut";
    fs::remove_all(dir);
    fs::create_directories(dir);
    spill(dir / "torn.hqs", std::string_view(bytes).substr(0, cut));
    // Half the time with the sidecar of the whole file, which no longer fits and is ignored.
    if (cut % 2) spill(dir / "torn.hqx", full_index);
    auto r = open_ok(dir, keep);
    ASSERT_TRUE(r);
    Summary s = r->summary();
    if (cut < boundaries[0]) {
      ASSERT_EQ(s.damage.size(), 1u);
      EXPECT_EQ(s.damage[0].offset, 0u);
      EXPECT_EQ(s.tasks, 0u);
      continue;
    }
    size_t whole = std::upper_bound(boundaries.begin(), boundaries.end(), cut) - boundaries.begin();
    size_t records = whole - 1;
    EXPECT_EQ(s.records, records);
    if (cut == boundaries[whole - 1]) {
      EXPECT_TRUE(s.damage.empty()) << s.damage[0].reason;
    } else {
      ASSERT_EQ(s.damage.size(), 1u);
      EXPECT_EQ(s.damage[0].offset, boundaries[whole - 1]);
      EXPECT_EQ(s.damage[0].file, (dir / "torn.hqs").string());
    }
    Expected e;
    for (size_t i = 0; i < records; ++i) effects[i](e);
    EXPECT_EQ(s.tasks, e.finished.size());
    for (const auto& [ref, finished] : e.finished) {
      auto t = r->task(ref.job, ref.task);
      ASSERT_TRUE(t);
      EXPECT_EQ(t->finished, finished);
      for (size_t c = 0; c < kChannels; ++c) {
        EXPECT_EQ(read_all(*r, *t, static_cast<Channel>(c)), e.out[c][ref]);
      }
    }
  }
}

TEST_F(StreamTest, GarbageAfterTheLastRecordIsReportedAndIgnored) {
  auto w = make_writer(dir_, "srv", 1);
  ok(w->task_start({1, 0, 0}, 1));
  ok(w->data({1, 0, 0}, Channel::kStdout, "kept"));
  ok(w->task_end({1, 0, 0}, true, 0, 2));
  const fs::path file = w->path();
  w.reset();
  const std::string good = slurp(file);
  std::string random(300, '\0');
  std::mt19937 rng(1);
  for (char& c : random) c = static_cast<char>(rng());
  // Zeros (a file extended by a crash), random bytes, a frame announcing a huge message, a valid
  // frame of a record with no kind, and a data record whose payload is missing.
  const std::string huge("\0\0\0\0\xff\xff\xff\x0f", 8);
  const std::string no_kind = std::string(
                                  "\0\0\0\0\x06\0\0\0"
                                  "\0\0\0\0\x05\0\0\0",
                                  16) +
                              std::string(40, '\0');
  for (const std::string& tail : {std::string(64, '\0'), random, huge, no_kind}) {
    spill(file, good + tail);
    auto r = open_ok(dir_, no_sidecar());
    ASSERT_TRUE(r);
    ASSERT_EQ(r->damage().size(), 1u);
    EXPECT_EQ(r->damage()[0].offset, good.size());
    EXPECT_EQ(output_of(*r, 1, 0, Channel::kStdout), "kept");
    EXPECT_TRUE(r->task(1, 0)->finished);
  }
}

TEST_F(StreamTest, BadMagicOrVersionIsAnErrorNamingTheFile) {
  auto w = make_writer(dir_, "srv", 1);
  ok(w->flush());
  const fs::path file = w->path();
  w.reset();
  const std::string good = slurp(file);
  spill(dir_ / "notes.txt", "not a stream file and not named like one");

  std::string bad_magic = good;
  bad_magic[0] = 'X';
  spill(file, bad_magic);
  auto r = StreamReader::open(dir_);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find(file.string()), std::string::npos) << r.message();
  EXPECT_NE(r.message().find("bad magic"), std::string::npos) << r.message();

  std::string bad_version = good;
  bad_version[8] = 2;
  spill(file, bad_version);
  r = StreamReader::open(dir_);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find(file.string()), std::string::npos) << r.message();
  EXPECT_NE(r.message().find("version 2"), std::string::npos) << r.message();

  spill(file, good);
  EXPECT_TRUE(StreamReader::open(dir_).is_ok());
  EXPECT_FALSE(StreamReader::open(dir_ / "missing").is_ok());
}

TEST_F(StreamTest, TwoServersInOneDirectoryMustBeChosenBetween) {
  auto a = make_writer(dir_, "alpha", 1);
  auto b = make_writer(dir_, "beta", 1);
  ok(a->task_start({1, 0, 0}, 1));
  ok(a->data({1, 0, 0}, Channel::kStdout, "from alpha"));
  ok(a->flush());
  ok(b->task_start({1, 0, 0}, 1));
  ok(b->data({1, 0, 0}, Channel::kStdout, "from beta"));
  ok(b->flush());

  auto r = StreamReader::open(dir_);
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find("'alpha'"), std::string::npos) << r.message();
  EXPECT_NE(r.message().find("'beta'"), std::string::npos) << r.message();

  auto alpha = open_ok(dir_, ReaderOptions{.server_uid = "alpha"});
  ASSERT_TRUE(alpha);
  EXPECT_EQ(alpha->summary().files, 1u);
  EXPECT_EQ(output_of(*alpha, 1, 0, Channel::kStdout), "from alpha");
  auto beta = open_ok(dir_, ReaderOptions{.server_uid = "beta"});
  ASSERT_TRUE(beta);
  EXPECT_EQ(output_of(*beta, 1, 0, Channel::kStdout), "from beta");

  r = StreamReader::open(dir_, ReaderOptions{.server_uid = "gamma"});
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.message().find("'gamma'"), std::string::npos) << r.message();
  EXPECT_NE(r.message().find("'alpha'"), std::string::npos) << r.message();
}

TEST_F(StreamTest, AFailedWriteNamesTheFileAndKeepsWhatWasWritten) {
  auto w = make_writer(dir_, "srv", 1);
  ok(w->task_start({1, 0, 0}, 1));
  ok(w->data({1, 0, 0}, Channel::kStdout, "safe"));
  ok(w->flush());
  const uint64_t good = w->size();

  // A file size limit stands in for a full disk: write(2) fails with EFBIG.
  struct rlimit old {};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old), 0);
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  struct rlimit limit = old;
  limit.rlim_cur = good + 100;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limit), 0);
  Status s = w->data({1, 0, 0}, Channel::kStdout, std::string(200, 'x'));
  if (s.is_ok()) s = w->flush();
  Status later = w->task_end({1, 0, 0}, true, 0, 2);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &old), 0);
  ::signal(SIGXFSZ, old_handler);

  ASSERT_FALSE(s.is_ok());
  EXPECT_NE(s.message().find(w->path().string()), std::string::npos) << s.message();
  EXPECT_FALSE(later.is_ok());                // the writer stays broken
  EXPECT_EQ(fs::file_size(w->path()), good);  // the partial record was cut off
  auto r = open_ok(dir_, no_sidecar());
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->damage().empty());
  EXPECT_EQ(output_of(*r, 1, 0, Channel::kStdout), "safe");
}

TEST_F(StreamTest, ReadsStreamsFromMemory) {
  auto w = make_writer(dir_, "srv", 1);
  ok(w->task_start({4, 2, 0}, 1));
  ok(w->data({4, 2, 0}, Channel::kStdout, "in memory"));
  ok(w->task_end({4, 2, 0}, true, 0, 2));
  const std::string bytes = slurp(w->path());
  auto r = StreamReader::open_bytes(
      {{"mem.hqs", std::span(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size()), {}}});
  ASSERT_TRUE(r.is_ok()) << r.message();
  EXPECT_EQ(output_of(**r, 4, 2, Channel::kStdout), "in memory");
}

// --- hq output ----------------------------------------------------------------------------------

struct CliResult {
  int code = 0;
  std::string out;
  std::string error;
};

CliResult run_output(std::vector<std::string> args, const std::string& mode = "cli") {
  CLI::App app;
  cli::GlobalOptions g;
  g.output_mode = mode;
  CliResult result;
  cli::add_output_commands(app, g, result.code);
  std::ostringstream out;
  std::streambuf* old = std::cout.rdbuf(out.rdbuf());
  try {
    std::reverse(args.begin(), args.end());
    app.parse(args);
  } catch (const cli::CommandError& e) {
    result.code = e.exit_code;
    result.error = e.message;
  } catch (const CLI::ParseError& e) {
    result.code = 2;
    result.error = e.what();
  }
  std::cout.rdbuf(old);
  result.out = out.str();
  return result;
}

class OutputCommandsTest : public StreamTest {
 protected:
  void SetUp() override {
    StreamTest::SetUp();
    int64_t now = 0;
    WriterOptions o;
    o.clock = [now]() mutable { return ++now; };
    auto w = make_writer(dir_, "srv", 1, o);
    for (TaskId t = 1; t <= 4; ++t) {
      ok(w->task_start({3, t, 0}, 1));
      ok(w->data({3, t, 0}, Channel::kStdout, fmt::format("out {}\n", t)));
    }
    ok(w->data({3, 2, 0}, Channel::kStderr, "half a "));
    ok(w->data({3, 1, 0}, Channel::kStdout, "more\n"));
    ok(w->data({3, 2, 0}, Channel::kStderr, "line\nno newline"));
    for (TaskId t = 1; t <= 3; ++t) ok(w->task_end({3, t, 0}, true, 0, 2));
    ok(w->flush());  // task 4 is still running
  }
};

TEST_F(OutputCommandsTest, CatPrintsTasksInTheOrderNamed) {
  auto r = run_output({"output", "cat", dir_.string(), "3", "--task", "3,1-2"});
  EXPECT_EQ(r.code, 0) << r.error;
  EXPECT_EQ(r.out, "out 3\nout 1\nmore\nout 2\n");
  r = run_output({"output", "cat", dir_.string(), "3", "--task", "2", "--channel", "stderr"});
  EXPECT_EQ(r.out, "half a line\nno newline");
}

TEST_F(OutputCommandsTest, CatRefusesUnfinishedTasksUnlessAllowed) {
  auto r = run_output({"output", "cat", dir_.string(), "3"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.error.find("task(s) 4 of job 3 is not finished"), std::string::npos) << r.error;
  EXPECT_NE(r.error.find("--allow-unfinished"), std::string::npos) << r.error;
  EXPECT_EQ(r.out, "");
  r = run_output({"output", "cat", dir_.string(), "3", "--allow-unfinished"});
  EXPECT_EQ(r.code, 0) << r.error;
  EXPECT_EQ(r.out, "out 1\nmore\nout 2\nout 3\nout 4\n");
  r = run_output({"output", "cat", dir_.string(), "3", "--task", "1,9"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.error.find("task(s) 9"), std::string::npos) << r.error;
  r = run_output({"output", "cat", dir_.string(), "5"});
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.error.find("jobs there: 3"), std::string::npos) << r.error;
}

TEST_F(OutputCommandsTest, ShowPrefixesWholeLinesInTimeOrder) {
  auto r = run_output({"output", "show", dir_.string()});
  EXPECT_EQ(r.code, 0) << r.error;
  EXPECT_EQ(r.out,
            "3.1:0> out 1\n"
            "3.2:0> out 2\n"
            "3.3:0> out 3\n"
            "3.4:0> out 4\n"
            "3.1:0> more\n"
            "3.2:1> half a line\n"
            "3.2:1> no newline\n");
  r = run_output({"output", "show", dir_.string(), "--channel", "stderr"}, "json");
  auto j = nlohmann::json::parse(r.out);
  ASSERT_EQ(j.size(), 2u);
  EXPECT_EQ(j[0]["line"], "half a line");
  EXPECT_EQ(j[0]["task"], 2);
  EXPECT_EQ(j[0]["channel"], "stderr");
  EXPECT_EQ(run_output({"output", "show", dir_.string(), "--job", "4"}).out, "");
}

TEST_F(OutputCommandsTest, SummaryJobsAndExport) {
  auto r = run_output({"output", "summary", dir_.string()}, "json");
  EXPECT_EQ(r.code, 0) << r.error;
  auto out = nlohmann::json::parse(r.out);
  EXPECT_EQ(out["filename"], dir_.string());
  auto s = out["summary"];
  EXPECT_EQ(s["server_uid"], "srv");
  EXPECT_EQ(s["n_files"], 1);
  EXPECT_EQ(s["n_tasks"], 4);
  EXPECT_EQ(s["n_opened"], 1);
  EXPECT_EQ(s["stdout_size"], 6 * 4 + 5);
  EXPECT_EQ(s["stderr_size"], 7 + 15);
  EXPECT_TRUE(s["damage"].empty());
  r = run_output({"output", "summary", dir_.string()});
  EXPECT_NE(r.out.find("4 (3 finished, 1 open)"), std::string::npos) << r.out;

  EXPECT_EQ(run_output({"output", "jobs", dir_.string()}, "quiet").out, "3\n");

  r = run_output({"output", "export", dir_.string(), "3", "--task", "4,2"});
  EXPECT_EQ(r.code, 0) << r.error;
  auto e = nlohmann::json::parse(r.out);
  ASSERT_EQ(e.size(), 2u);
  EXPECT_EQ(e[0]["id"], 4);
  EXPECT_EQ(e[0]["finished"], false);
  EXPECT_EQ(e[0]["stdout"], "out 4\n");
  EXPECT_EQ(e[1]["id"], 2);
  EXPECT_EQ(e[1]["finished"], true);
  EXPECT_EQ(e[1]["stderr"], "half a line\nno newline");
}

}  // namespace
}  // namespace hq::stream
