#include "journal/journal.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <iterator>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <gtest/gtest.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>

#include "common/varint.h"
#include "journal/events.h"

namespace hq::journal {
namespace {

using namespace std::chrono_literals;
using schema::Event;

// A directory removed with everything in it at the end of the test.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "hq-journal-test-XXXXXX").string();
    EXPECT_NE(mkdtemp(pattern.data()), nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::permissions(path_, fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The owner's event loop: the journal posts callbacks here, the test thread runs them.
class Loop {
 public:
  Post post() {
    return [this](std::function<void()> fn) {
      {
        std::lock_guard lock(mu_);
        queue_.push_back(std::move(fn));
      }
      cv_.notify_one();
    };
  }
  // Runs posted callbacks until `done()` holds; false on timeout.
  bool run_until(const std::function<bool()>& done, std::chrono::milliseconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      std::function<void()> fn;
      {
        std::unique_lock lock(mu_);
        if (!cv_.wait_until(lock, deadline, [&] { return !queue_.empty(); })) return false;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
    return true;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
};

std::string message_of(const Status& s) { return s ? std::string() : s.message(); }

// Polls `done` (set by another thread) until it holds; false after 20 s.
bool eventually(const std::function<bool()>& done) {
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Injects failures and delays into the WAL files RocksDB writes.
class FaultFs : public rocksdb::FileSystemWrapper {
 public:
  FaultFs() : rocksdb::FileSystemWrapper(rocksdb::FileSystem::Default()) {}
  const char* Name() const override { return "FaultFs"; }

  std::atomic<bool> fail_wal{false};
  std::atomic<int> sync_delay_ms{0};
  std::atomic<int> syncs{0};
  std::atomic<int> failures{0};  // WAL appends and syncs failed by fail_wal

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    auto s = target()->NewWritableFile(name, options, result, dbg);
    if (s.ok() && name.size() > 4 && name.compare(name.size() - 4, 4, ".log") == 0) {
      *result = std::make_unique<File>(std::move(*result), *this);
    }
    return s;
  }

 private:
  rocksdb::IOStatus no_space() {
    ++failures;
    return rocksdb::IOStatus::NoSpace("injected: no space left on device");
  }

  class File : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    File(std::unique_ptr<rocksdb::FSWritableFile> file, FaultFs& fs)
        : rocksdb::FSWritableFileOwnerWrapper(std::move(file)), fs_(fs) {}
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                             rocksdb::IODebugContext* dbg) override {
      if (fs_.fail_wal) return fs_.no_space();
      return FSWritableFileOwnerWrapper::Append(data, options, dbg);
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& options,
                             const rocksdb::DataVerificationInfo& info,
                             rocksdb::IODebugContext* dbg) override {
      if (fs_.fail_wal) return fs_.no_space();
      return FSWritableFileOwnerWrapper::Append(data, options, info, dbg);
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& options,
                           rocksdb::IODebugContext* dbg) override {
      return sync([&] { return FSWritableFileOwnerWrapper::Sync(options, dbg); });
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& options,
                            rocksdb::IODebugContext* dbg) override {
      return sync([&] { return FSWritableFileOwnerWrapper::Fsync(options, dbg); });
    }

   private:
    template <typename F>
    rocksdb::IOStatus sync(F&& real) {
      ++fs_.syncs;
      if (int ms = fs_.sync_delay_ms) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
      if (fs_.fail_wal) {
        ++fs_.failures;
        return rocksdb::IOStatus::IOError("injected: I/O error on sync");
      }
      return real();
    }
    FaultFs& fs_;
  };
};

// --- Building events ---

int64_t time_of(Seq n) { return 1'700'000'000'000 + static_cast<int64_t>(n); }

void fill_description(schema::JobDescription::Builder d) {
  JobDescriptionSpec spec;
  spec.name = "simulate";
  spec.task_ids = IdSet({IdRange{1, 10, 1}, IdRange{20, 30, 5}});
  spec.priority = -3;
  spec.body.program = {"./simulate.sh", "--fast", "x y"};
  spec.body.env = {{"A", "1"}, {"B", "two words"}};
  spec.body.cwd = "/work/%{JOB_ID}";
  spec.body.stdout_path = "%{CWD}/out";
  spec.body.stderr_path = "";
  spec.body.submit_dir = "/home/me";
  spec.body.cpus = 4;
  spec.body.resources =
      *make_request({*parse_request_entry("cpus", "4 compact!"), *parse_named_request("gpus=0.5"),
                     *parse_named_request("mem=all")});
  spec.body.pin = PinMode::kTaskset;
  spec.body.time_limit_ms = 60'000;
  spec.body.time_request_ms = 3'600'000;
  spec.crash_limit = 2;
  spec.max_fails = 7;
  spec.stream = "/scratch/stream";
  spec.body.stdin_data = std::string("in\0put", 6);
  spec.body.task_dir = true;
  spec.body.stderr_rm_if_finished = true;
  for (int i = 0; i < 13; ++i) spec.entries.push_back("entry " + std::to_string(i));
  to_record(spec, d);
}

using Fill = std::function<void(Event::Builder)>;

Fill submitted(JobId job) {
  return [job](Event::Builder e) {
    auto s = e.initJobSubmitted();
    s.setJob(job);
    fill_description(s.initDescription());
  };
}
Fill started(JobId job, TaskId task, InstanceId instance = 0, WorkerId worker = 1) {
  return [=](Event::Builder e) {
    auto s = e.initTaskStarted();
    s.setJob(job);
    s.setTask(task);
    s.setInstance(instance);
    s.setWorker(worker);
  };
}
Fill finished(JobId job, TaskId task, InstanceId instance = 0) {
  return [=](Event::Builder e) {
    auto s = e.initTaskFinished();
    s.setJob(job);
    s.setTask(task);
    s.setInstance(instance);
  };
}
Fill failed(JobId job, TaskId task, const std::string& error) {
  return [=](Event::Builder e) {
    auto s = e.initTaskFailed();
    s.setJob(job);
    s.setTask(task);
    s.setInstance(2);
    s.setError(error);
  };
}
Fill worker_connected(WorkerId worker) {
  return [=](Event::Builder e) {
    auto w = e.initWorkerConnected();
    w.setWorker(worker);
    w.setHostname("node-7");
    w.setCpus(64);
    w.setWorkDir("/tmp/w");
    w.setAddress("10.0.0.7:4242");
  };
}

// One event of every type, in an order a server could write them.
std::vector<Fill> every_event_type() {
  return {
      [](Event::Builder e) {
        auto s = e.initServerStarted();
        s.setServerUid("uid-abc");
        s.setVersion("0.1.0");
      },
      worker_connected(3),
      submitted(7),
      started(7, 1, 0, 3),
      finished(7, 1),
      failed(7, 2, "exit code 3"),
      [](Event::Builder e) {
        auto s = e.initTaskCanceled();
        s.setJob(7);
        s.setTask(3);
        s.setInstance(1);
      },
      [](Event::Builder e) {
        auto s = e.initTaskRequeued();
        s.setJob(7);
        s.setTask(4);
        s.setInstance(5);
        s.setCrashCounter(2);
      },
      [](Event::Builder e) { e.initJobCanceled().setJob(7); },
      [](Event::Builder e) {
        auto w = e.initWorkerLost();
        w.setWorker(3);
        w.setReason("heartbeat missed");
      },
      [](Event::Builder e) { e.initJobForgotten().setJob(7); },
  };
}

// Checks that `e` is what every_event_type()[i] built.
void expect_event(size_t i, Event::Reader e) {
  SCOPED_TRACE("event " + std::to_string(i));
  EXPECT_EQ(e.getTime(), time_of(i + 1));
  switch (i) {
    case 0:
      ASSERT_EQ(e.which(), Event::SERVER_STARTED);
      EXPECT_EQ(std::string(e.getServerStarted().getServerUid().cStr()), "uid-abc");
      EXPECT_EQ(std::string(e.getServerStarted().getVersion().cStr()), "0.1.0");
      break;
    case 1: {
      ASSERT_EQ(e.which(), Event::WORKER_CONNECTED);
      auto w = e.getWorkerConnected();
      EXPECT_EQ(w.getWorker(), 3u);
      EXPECT_EQ(std::string(w.getHostname().cStr()), "node-7");
      EXPECT_EQ(w.getCpus(), 64u);
      EXPECT_EQ(std::string(w.getWorkDir().cStr()), "/tmp/w");
      EXPECT_EQ(std::string(w.getAddress().cStr()), "10.0.0.7:4242");
      break;
    }
    case 2: {
      ASSERT_EQ(e.which(), Event::JOB_SUBMITTED);
      EXPECT_EQ(e.getJobSubmitted().getJob(), 7u);
      auto spec = from_record(e.getJobSubmitted().getDescription());
      ASSERT_TRUE(spec) << spec.message();
      EXPECT_EQ(spec->name, "simulate");
      EXPECT_EQ(spec->task_ids.to_string(), "1-10,20-30:5");
      EXPECT_EQ(spec->priority, -3);
      EXPECT_EQ(spec->body.program, (std::vector<std::string>{"./simulate.sh", "--fast", "x y"}));
      ASSERT_EQ(spec->body.env.size(), 2u);
      EXPECT_EQ(spec->body.env[1].second, "two words");
      EXPECT_EQ(spec->body.cwd, "/work/%{JOB_ID}");
      EXPECT_EQ(spec->body.stdout_path, "%{CWD}/out");
      EXPECT_EQ(spec->body.stderr_path, "");
      EXPECT_EQ(spec->body.submit_dir, "/home/me");
      EXPECT_EQ(spec->body.cpus, 4u);
      EXPECT_EQ(describe(spec->body.resources), "cpus=4 compact!; gpus=0.5; mem=all");
      EXPECT_EQ(spec->body.pin, PinMode::kTaskset);
      EXPECT_EQ(spec->body.time_limit_ms, 60'000u);
      EXPECT_EQ(spec->body.stdin_data, std::string("in\0put", 6));
      EXPECT_TRUE(spec->body.task_dir);
      EXPECT_FALSE(spec->body.stdout_rm_if_finished);
      EXPECT_TRUE(spec->body.stderr_rm_if_finished);
      ASSERT_EQ(spec->entries.size(), 13u);
      EXPECT_EQ(spec->entries[12], "entry 12");
      EXPECT_EQ(*task_entry(*spec, 30), "entry 12");
      EXPECT_EQ(spec->body.time_request_ms, 3'600'000u);
      EXPECT_EQ(spec->crash_limit, 2u);
      EXPECT_EQ(spec->max_fails, 7);
      EXPECT_EQ(spec->stream, "/scratch/stream");
      break;
    }
    case 3: {
      ASSERT_EQ(e.which(), Event::TASK_STARTED);
      auto t = e.getTaskStarted();
      EXPECT_EQ(t.getJob(), 7u);
      EXPECT_EQ(t.getTask(), 1u);
      EXPECT_EQ(t.getInstance(), 0u);
      EXPECT_EQ(t.getWorker(), 3u);
      break;
    }
    case 4:
      ASSERT_EQ(e.which(), Event::TASK_FINISHED);
      EXPECT_EQ(e.getTaskFinished().getTask(), 1u);
      break;
    case 5:
      ASSERT_EQ(e.which(), Event::TASK_FAILED);
      EXPECT_EQ(e.getTaskFailed().getTask(), 2u);
      EXPECT_EQ(e.getTaskFailed().getInstance(), 2u);
      EXPECT_EQ(std::string(e.getTaskFailed().getError().cStr()), "exit code 3");
      break;
    case 6:
      ASSERT_EQ(e.which(), Event::TASK_CANCELED);
      EXPECT_EQ(e.getTaskCanceled().getTask(), 3u);
      EXPECT_EQ(e.getTaskCanceled().getInstance(), 1u);
      break;
    case 7:
      ASSERT_EQ(e.which(), Event::TASK_REQUEUED);
      EXPECT_EQ(e.getTaskRequeued().getTask(), 4u);
      EXPECT_EQ(e.getTaskRequeued().getInstance(), 5u);
      EXPECT_EQ(e.getTaskRequeued().getCrashCounter(), 2u);
      break;
    case 8:
      ASSERT_EQ(e.which(), Event::JOB_CANCELED);
      EXPECT_EQ(e.getJobCanceled().getJob(), 7u);
      break;
    case 9:
      ASSERT_EQ(e.which(), Event::WORKER_LOST);
      EXPECT_EQ(e.getWorkerLost().getWorker(), 3u);
      EXPECT_EQ(std::string(e.getWorkerLost().getReason().cStr()), "heartbeat missed");
      break;
    case 10:
      ASSERT_EQ(e.which(), Event::JOB_FORGOTTEN);
      EXPECT_EQ(e.getJobForgotten().getJob(), 7u);
      break;
    default:
      FAIL() << "unexpected event";
  }
}

// --- The journal under test, with its loop ---

class Harness {
 public:
  explicit Harness(fs::path path, Options options = {}) : path_(std::move(path)) {
    options.post = loop.post();
    options_ = options;
    auto opened = Journal::open(path_, options_);
    EXPECT_TRUE(opened) << opened.message();
    if (opened) journal = std::move(*opened);
  }

  Seq append(const Fill& fill, int64_t time) {
    EventMessage message(time);
    fill(message.event());
    auto seq = journal->append(message.message());
    EXPECT_TRUE(seq) << seq.message();
    return seq ? *seq : 0;
  }
  // Appends with time_of(seq) as the time, so that events can be told apart.
  Seq append(const Fill& fill) { return append(fill, time_of(journal->stats().appended + 1)); }

  Status commit() {
    std::optional<Status> result;
    journal->commit([&](Status s) { result = s; });
    EXPECT_TRUE(loop.run_until([&] { return result.has_value(); })) << "commit never completed";
    return result.value_or(Status::error("timeout"));
  }
  Status flush() {
    std::optional<Status> result;
    journal->flush([&](Status s) { result = s; });
    EXPECT_TRUE(loop.run_until([&] { return result.has_value(); })) << "flush never completed";
    return result.value_or(Status::error("timeout"));
  }
  Status compact() {
    std::optional<Status> result;
    journal->compact([&](Status s) { result = s; });
    EXPECT_TRUE(loop.run_until([&] { return result.has_value(); })) << "compact never completed";
    return result.value_or(Status::error("timeout"));
  }

  Loop loop;
  std::unique_ptr<Journal> journal;

 private:
  fs::path path_;
  Options options_;
};

struct Replayed {
  Seq seq;
  Event::Which which;
  std::optional<JobId> job;
  int64_t time;
};

std::vector<Replayed> replay_all(Journal& journal, ReplayOptions options = {},
                                 ReplayStats* stats_out = nullptr) {
  std::vector<Replayed> out;
  auto stats = journal.replay(options, [&](Seq seq, Event::Reader e) {
    out.push_back({seq, e.which(), event_job(e), e.getTime()});
  });
  EXPECT_TRUE(stats) << stats.message();
  if (stats) {
    EXPECT_EQ(stats->events, out.size());
    EXPECT_TRUE(stats->damage.empty()) << stats->damage.front();
    if (stats_out) *stats_out = *stats;
  }
  return out;
}

// --- Records ---

TEST(EventRecord, EncodeDecodeRoundTripOfEveryType) {
  auto fills = every_event_type();
  EventDecoder decoder;
  for (size_t i = 0; i < fills.size(); ++i) {
    EventMessage message(time_of(i + 1));
    fills[i](message.event());
    std::string bytes;
    size_t size = encode(message.message(), bytes);
    EXPECT_EQ(size, bytes.size());
    auto event = decoder.decode(bytes.data(), bytes.size());
    ASSERT_TRUE(event) << event.message();
    expect_event(i, *event);
  }
}

TEST(EventRecord, TaskEventsAreSmall) {
  EventMessage message(time_of(1));
  started(1, 2, 0, 3)(message.event());
  std::string bytes;
  EXPECT_LE(encode(message.message(), bytes), 64u);
}

// The packed starts and ends (taskTimes): every entry reads back, whatever its deltas, through
// an encoded and checked record; a run of short tasks costs a few bytes each.
TEST(EventRecord, PackedTaskTimesRoundTrip) {
  std::mt19937 rng(11);
  const int64_t base = 1'700'000'123'456;
  for (TaskTimesList list :
       {TaskTimesList::kStarted, TaskTimesList::kRan, TaskTimesList::kFinished}) {
    std::vector<TaskTimeEntry> entries;
    TaskId task = 0;
    for (int i = 0; i < 500; ++i) {
      task += rng() % 3 == 0 ? 1 + rng() % 100'000 : (i > 0 && rng() % 10 == 0 ? 0 : 1);
      TaskTimeEntry e;
      e.task = task;
      e.instance = rng() % 7 == 0 ? rng() % 1000 : 0;
      const int64_t t = base + static_cast<int64_t>(rng() % 2'000'000) - 1'000'000;
      if (list != TaskTimesList::kFinished) e.start = t;
      if (list == TaskTimesList::kRan) e.end = t + static_cast<int64_t>(rng() % 50'000) - 10;
      if (list == TaskTimesList::kFinished) e.end = t;
      entries.push_back(e);
    }
    entries.push_back({UINT32_MAX, UINT32_MAX, list == TaskTimesList::kFinished ? 0 : 1,
                       list == TaskTimesList::kStarted ? 0 : INT64_MAX / 4});
    const std::string bytes = pack_task_times(entries, list, base);
    EventMessage message(base);
    auto r = message.event().initTaskTimes();
    r.setJob(3);
    r.setWorker(9);
    capnp::Data::Reader data(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size());
    if (list == TaskTimesList::kStarted) r.setStarted(data);
    if (list == TaskTimesList::kRan) r.setRan(data);
    if (list == TaskTimesList::kFinished) r.setFinished(data);
    std::string record;
    encode(message.message(), record);
    EventDecoder decoder;
    auto event = decoder.decode(record.data(), record.size());
    ASSERT_TRUE(event) << event.message();
    ASSERT_EQ(event->which(), Event::TASK_TIMES);
    EXPECT_EQ(event_job(*event), 3u);
    auto t = event->getTaskTimes();
    auto got = list == TaskTimesList::kStarted ? t.getStarted()
               : list == TaskTimesList::kRan   ? t.getRan()
                                               : t.getFinished();
    auto back = unpack_task_times(got.begin(), got.size(), list, base);
    ASSERT_TRUE(back) << back.message();
    ASSERT_EQ(back->size(), entries.size());
    for (size_t i = 0; i < entries.size(); ++i) {
      EXPECT_EQ((*back)[i].task, entries[i].task) << i;
      EXPECT_EQ((*back)[i].instance, entries[i].instance) << i;
      EXPECT_EQ((*back)[i].start, entries[i].start) << i;
      EXPECT_EQ((*back)[i].end, entries[i].end) << i;
    }
  }
  // 1,000 tasks in id order that ran a few milliseconds each, one after another.
  std::vector<TaskTimeEntry> run;
  for (uint32_t i = 0; i < 1000; ++i) run.push_back({i + 1, 0, base + i, base + i + 1 + i % 4});
  EXPECT_LE(pack_task_times(run, TaskTimesList::kRan, base + 999).size(), 5u * 1000);
}

TEST(EventRecord, DamagedPackedTaskTimesAreReportedNotThrown) {
  std::vector<TaskTimeEntry> run{{5, 0, 100, 120}, {6, 0, 101, 130}};
  const std::string bytes = pack_task_times(run, TaskTimesList::kRan, 100);
  const size_t first = pack_task_times({run[0]}, TaskTimesList::kRan, 100).size();
  for (size_t cut = 1; cut < bytes.size(); ++cut) {
    auto r = unpack_task_times(reinterpret_cast<const uint8_t*>(bytes.data()), cut,
                               TaskTimesList::kRan, 100);
    if (cut == first) {  // a cut between entries leaves a shorter list
      ASSERT_TRUE(r) << r.message();
      EXPECT_EQ(r->size(), 1u);
    } else {
      EXPECT_FALSE(r) << cut;
    }
  }
  // A task id beyond 32 bits.
  std::string wide;
  put_varint(wide, uint64_t{1} << 33);
  put_varint(wide, 0);
  put_varint(wide, 0);
  auto r = unpack_task_times(reinterpret_cast<const uint8_t*>(wide.data()), wide.size(),
                             TaskTimesList::kStarted, 0);
  ASSERT_FALSE(r);
  EXPECT_NE(r.message().find("beyond 32 bits"), std::string::npos) << r.message();
  // Inside a record, the decoder refuses it with the reason.
  EventMessage message(100);
  auto t = message.event().initTaskTimes();
  t.setJob(1);
  t.setStarted(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(wide.data()), wide.size()));
  std::string record;
  encode(message.message(), record);
  EventDecoder decoder;
  auto event = decoder.decode(record.data(), record.size());
  ASSERT_FALSE(event);
  EXPECT_NE(event.message().find("packed task times"), std::string::npos) << event.message();
}

TEST(EventRecord, DamagedBytesAreReportedNotThrown) {
  EventMessage message(time_of(1));
  failed(1, 2, "some error text")(message.event());
  std::string bytes;
  encode(message.message(), bytes);
  EventDecoder decoder;
  EXPECT_FALSE(decoder.decode(bytes.data(), 0));
  EXPECT_FALSE(decoder.decode(bytes.data(), bytes.size() - 3));  // not whole words
  EXPECT_FALSE(decoder.decode(bytes.data(), bytes.size() - 8));  // truncated segment
  std::string trailing = bytes + std::string(8, '\0');
  auto t = decoder.decode(trailing.data(), trailing.size());
  ASSERT_FALSE(t);
  EXPECT_NE(t.message().find("trailing"), std::string::npos) << t.message();
  // A text pointer aimed outside the segment.
  std::string bad = bytes;
  for (size_t i = 8; i < bad.size(); ++i) bad[i] = static_cast<char>(0xff);
  EXPECT_FALSE(decoder.decode(bad.data(), bad.size()));
  // The decoder still works afterwards.
  EXPECT_TRUE(decoder.decode(bytes.data(), bytes.size()));
}

// Found by journal_record_fuzz: a job description whose pointers share their targets, so that
// reading it costs more than its size. Checking it once passed, and a second read by the caller
// ran out of traversal budget and threw. Such a record must be refused by decode().
TEST(EventRecord, SharedPointersAreRefused) {
  const std::string hex =
      "01000000200000000e0000000000008000000000020001000223f0be9a0100000100000000000000000000000100"
      "0100"
      "0300000000000000000000000100040000000000000000000d000000220000000d000000270000001c0000000100"
      "0600"
      "620000000100000073696d00000000000800000002000000010000000a0000000100000000000000140000002800"
      "0000"
      "02000000000000000100000000000010150000001600000025000000170000002200000001000000320000000100"
      "0000"
      "42000000010000005200000001000000050000007200000009000000120000002e2f73696d756c6174652e736800"
      "0000"
      "78000000000000000409000000000000000000000001000300010000000400000009000000c90000000d00000000"
      "0000"
      "0100000012000000310000000000000001000000420000002f686f6d652f7500010000000a000000000000000000"
      "0000"
      "010000000a0000000000000000000000010000000a00000000000000000000000100000012000000730000000000"
      "0000";
  std::string bytes;
  for (size_t i = 0; i < hex.size(); i += 2) {
    bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  EventDecoder decoder;
  auto event = decoder.decode(bytes.data(), bytes.size());
  ASSERT_FALSE(event);
  EXPECT_NE(event.message().find("traversal limit"), std::string::npos) << event.message();
}

// --- Journal ---

TEST(Journal, EveryEventTypeRoundTripsThroughTheJournal) {
  TempDir dir;
  auto fills = every_event_type();
  {
    Harness h(dir.path());
    ASSERT_TRUE(h.journal);
    EXPECT_EQ(h.journal->recovery().last_seq, 0u);
    for (size_t i = 0; i < fills.size(); ++i) EXPECT_EQ(h.append(fills[i]), i + 1);
    EXPECT_TRUE(h.commit()) << "";
  }
  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  const RecoveryInfo& info = h.journal->recovery();
  EXPECT_EQ(info.last_seq, fills.size());
  EXPECT_EQ(info.max_job_id, 7u);
  EXPECT_EQ(info.max_worker_id, 3u);
  EXPECT_EQ(info.server_uid, "uid-abc");
  EXPECT_TRUE(info.damage.empty());
  size_t n = 0;
  auto stats = h.journal->replay({}, [&](Seq seq, Event::Reader e) {
    EXPECT_EQ(seq, n + 1);
    expect_event(n++, e);
  });
  ASSERT_TRUE(stats) << stats.message();
  EXPECT_EQ(n, fills.size());
  EXPECT_EQ(stats->first_seq, 1u);
  EXPECT_EQ(stats->last_seq, fills.size());
  // Numbering continues after the reopen.
  EXPECT_EQ(h.append(finished(8, 1)), fills.size() + 1);
}

TEST(Journal, ReplayMergesJobAndGlobalEventsBySeq) {
  TempDir dir;
  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  // Job 1 runs long, interleaved with short jobs 2..5 and worker events.
  std::vector<Seq> expected;
  expected.push_back(h.append(worker_connected(1)));
  expected.push_back(h.append(submitted(1)));
  for (JobId job = 2; job <= 5; ++job) {
    expected.push_back(h.append(started(1, job)));
    expected.push_back(h.append(submitted(job)));
    expected.push_back(h.append(started(job, 0)));
    if (job == 3) expected.push_back(h.append(worker_connected(2)));
    expected.push_back(h.append(finished(job, 0)));
    expected.push_back(h.append(finished(1, job)));
    ASSERT_TRUE(h.commit());
  }
  expected.push_back(h.append(worker_connected(3)));
  ASSERT_TRUE(h.commit());
  auto events = replay_all(*h.journal);
  ASSERT_EQ(events.size(), expected.size());
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].seq, expected[i]);
    EXPECT_EQ(events[i].time, time_of(expected[i]));
  }
}

TEST(Journal, ReplayStreamsLargeJobsInOrder) {
  TempDir dir;
  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  // Jobs 1 and 2 are large (read in place), interleaved with small jobs and worker events.
  std::vector<Seq> expected;
  expected.push_back(h.append(submitted(1)));
  JobId next_job = 2;
  for (TaskId task = 0; task < 6000; ++task) {
    expected.push_back(h.append(finished(1, task)));
    if (task == 10) expected.push_back(h.append(submitted(next_job++)));  // job 2
    if (task > 10 && task < 5000) expected.push_back(h.append(finished(2, task)));
    if (task % 1000 == 500) {
      JobId small = next_job++;
      expected.push_back(h.append(submitted(small)));
      expected.push_back(h.append(worker_connected(small)));
      expected.push_back(h.append(finished(small, 0)));
    }
  }
  ASSERT_TRUE(h.commit());
  auto events = replay_all(*h.journal);
  ASSERT_EQ(events.size(), expected.size());
  for (size_t i = 0; i < events.size(); ++i) ASSERT_EQ(events[i].seq, expected[i]) << i;
  auto since = replay_all(*h.journal, {expected[7000], std::nullopt});
  ASSERT_EQ(since.size(), expected.size() - 7000);
  for (size_t i = 0; i < since.size(); ++i) ASSERT_EQ(since[i].seq, expected[7000 + i]) << i;
  EXPECT_EQ(replay_all(*h.journal, {0, 2}).size(), 4989u + 1);
}

TEST(Journal, ReplaySinceAndJobFilter) {
  TempDir dir;
  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  h.append(worker_connected(1));  // 1
  h.append(submitted(1));         // 2
  h.append(submitted(2));         // 3
  h.append(started(1, 0));        // 4
  h.append(started(2, 0));        // 5
  h.append(worker_connected(2));  // 6
  h.append(finished(2, 0));       // 7
  h.append(finished(1, 0));       // 8
  ASSERT_TRUE(h.commit());

  auto seqs = [](const std::vector<Replayed>& events) {
    std::vector<Seq> out;
    for (const auto& e : events) out.push_back(e.seq);
    return out;
  };
  EXPECT_EQ(seqs(replay_all(*h.journal, {5, std::nullopt})), (std::vector<Seq>{5, 6, 7, 8}));
  EXPECT_EQ(seqs(replay_all(*h.journal, {0, 1})), (std::vector<Seq>{2, 4, 8}));
  EXPECT_EQ(seqs(replay_all(*h.journal, {0, 2})), (std::vector<Seq>{3, 5, 7}));
  EXPECT_EQ(seqs(replay_all(*h.journal, {4, 2})), (std::vector<Seq>{5, 7}));
  EXPECT_TRUE(replay_all(*h.journal, {0, 99}).empty());
  EXPECT_TRUE(replay_all(*h.journal, {9, std::nullopt}).empty());
}

TEST(Journal, GroupCommitMergesCommitsQueuedDuringASync) {
  TempDir dir;
  auto fs = std::make_shared<FaultFs>();
  auto env = rocksdb::NewCompositeEnv(fs);
  Options options;
  options.env = env.get();
  Harness h(dir.path(), options);
  ASSERT_TRUE(h.journal);
  const auto before = h.journal->stats();
  fs->sync_delay_ms = 100;  // every sync takes long: commits pile up behind it

  constexpr int kCommits = 300;
  std::vector<int> order;
  int ok = 0;
  auto append_and_commit = [&](int i) {
    h.append(started(1, i));
    h.append(finished(1, i));
    h.journal->commit([&order, &ok, i](Status s) {
      order.push_back(i);
      if (s) ++ok;
    });
  };
  const int syncs = fs->syncs;
  append_and_commit(0);
  while (fs->syncs == syncs) std::this_thread::yield();  // the first batch is being synced
  for (int i = 1; i < kCommits; ++i) append_and_commit(i);
  ASSERT_TRUE(h.loop.run_until([&] { return order.size() == kCommits; }));
  EXPECT_EQ(ok, kCommits);
  for (int i = 0; i < kCommits; ++i) ASSERT_EQ(order[i], i);
  const auto after = h.journal->stats();
  EXPECT_EQ(after.commits - before.commits, static_cast<uint64_t>(kCommits));
  // The first commit alone, then the 299 queued during its sync in one batch (a third batch only
  // if this thread stalled for longer than a sync).
  EXPECT_GE(after.batches - before.batches, 2u);
  EXPECT_LE(after.batches - before.batches, 3u);
  RecordProperty("batches", static_cast<int>(after.batches - before.batches));
  EXPECT_EQ(after.last_seq, 2u * kCommits);
  EXPECT_EQ(replay_all(*h.journal).size(), 2u * kCommits);
  fs->sync_delay_ms = 0;
}

TEST(Journal, FailedWriteIsRetriedUntilTheDiskRecovers) {
  TempDir dir;
  auto fs = std::make_shared<FaultFs>();
  auto env = rocksdb::NewCompositeEnv(fs);
  Options options;
  options.env = env.get();
  std::vector<Status> health;
  options.health = [&](Status s) { health.push_back(s); };
  auto seqs = [](const std::vector<Replayed>& events) {
    std::vector<Seq> out;
    for (const auto& e : events) out.push_back(e.seq);
    return out;
  };
  {
    Harness h(dir.path(), options);
    ASSERT_TRUE(h.journal);
    h.append(submitted(1));
    ASSERT_TRUE(h.commit());

    fs->fail_wal = true;
    h.append(started(1, 1));
    std::vector<int> done;
    std::vector<Status> results;
    h.journal->commit([&](Status s) {
      done.push_back(1);
      results.push_back(s);
    });
    // Told of the failure; the group waits, it is not failed.
    ASSERT_TRUE(h.loop.run_until([&] { return !health.empty(); }));
    ASSERT_FALSE(health[0]);
    EXPECT_NE(health[0].message().find("injected"), std::string::npos) << health[0].message();
    EXPECT_FALSE(h.journal->status());
    // Appends and commits go on queueing meanwhile.
    const Seq queued = h.append(finished(1, 1));
    EXPECT_GT(queued, 0u);
    h.journal->commit([&](Status s) {
      done.push_back(2);
      results.push_back(s);
    });
    // Retries fail too (100 ms, then 200 ms later), and nothing is acknowledged.
    ASSERT_TRUE(eventually([&] { return h.journal->stats().write_failures >= 3; }));
    EXPECT_TRUE(done.empty());
    EXPECT_EQ(health.size(), 1u);  // told once, not at every attempt

    fs->fail_wal = false;  // space freed
    ASSERT_TRUE(h.loop.run_until([&] { return done.size() == 2; }));
    EXPECT_EQ(done, (std::vector<int>{1, 2}));  // in commit order
    EXPECT_TRUE(results[0]) << results[0].message();
    EXPECT_TRUE(results[1]) << results[1].message();
    ASSERT_EQ(health.size(), 2u);
    EXPECT_TRUE(health[1]);
    EXPECT_TRUE(h.journal->status());
    EXPECT_EQ(h.journal->stats().last_seq, queued);
    h.append(finished(1, 2));
    EXPECT_TRUE(h.commit());
    // Every record once, in order.
    EXPECT_EQ(seqs(replay_all(*h.journal)), (std::vector<Seq>{1, 2, 3, 4}));
  }
  // And after a restart: the WAL torn by the failure is not in the way.
  Harness again(dir.path());
  ASSERT_TRUE(again.journal);
  EXPECT_TRUE(again.journal->recovery().damage.empty());
  EXPECT_EQ(again.journal->recovery().last_seq, 4u);
  EXPECT_EQ(seqs(replay_all(*again.journal)), (std::vector<Seq>{1, 2, 3, 4}));
}

TEST(Journal, ClosingWhileAWriteFailsGivesUpWithTheError) {
  TempDir dir;
  auto fs = std::make_shared<FaultFs>();
  auto env = rocksdb::NewCompositeEnv(fs);
  Options options;
  options.env = env.get();
  std::vector<Status> results;
  {
    Harness h(dir.path(), options);
    ASSERT_TRUE(h.journal);
    fs->fail_wal = true;
    h.append(submitted(1));
    h.journal->commit([&](Status s) { results.push_back(s); });
    ASSERT_TRUE(eventually([&] { return fs->failures > 0; }));
    h.journal.reset();  // does not wait for the disk
    h.loop.run_until([&] { return !results.empty(); });
  }
  ASSERT_EQ(results.size(), 1u);
  ASSERT_FALSE(results[0]);
  EXPECT_NE(results[0].message().find("journal write failed"), std::string::npos)
      << results[0].message();
}

TEST(Journal, PruneShrinksTheDiskAndHidesThePrunedJobs) {
  TempDir dir;
  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  const std::string error(200, 'e');  // bulk, so that sizes are well above the fixed files
  for (JobId job = 1; job <= 20; ++job) {
    h.append(submitted(job));
    for (TaskId task = 0; task < 500; ++task) {
      h.append(started(job, task));
      h.append(failed(job, task, error + std::to_string(job * 1000 + task)));
    }
    ASSERT_TRUE(h.commit());
  }
  h.append(worker_connected(1));
  ASSERT_TRUE(h.commit());
  ASSERT_TRUE(h.flush());
  const uint64_t before = h.journal->size_on_disk();

  ASSERT_TRUE(h.journal->prune(IdSet::range(1, 15)));
  ASSERT_TRUE(h.journal->prune(IdSet::single(17)));
  ASSERT_TRUE(h.commit());
  ASSERT_TRUE(h.flush());  // ordered after the prune's compaction
  EXPECT_GE(h.journal->stats().compactions, 1u);
  uint64_t after = h.journal->size_on_disk();
  for (int i = 0; i < 50 && after * 2 > before; ++i) {  // obsolete files go in the background
    std::this_thread::sleep_for(100ms);
    after = h.journal->size_on_disk();
  }
  EXPECT_LT(after * 2, before) << "before " << before << " after " << after;

  auto events = replay_all(*h.journal);
  size_t global = 0;
  for (const auto& e : events) {
    if (!e.job) {
      ++global;
      continue;
    }
    EXPECT_TRUE(*e.job == 16 || *e.job >= 18) << "job " << *e.job << " was pruned";
  }
  EXPECT_EQ(global, 1u);
  EXPECT_EQ(events.size(), 4u * 1001 + 1);
  EXPECT_TRUE(replay_all(*h.journal, {0, 3}).empty());

  // Ids survive the pruning of the events that carried them.
  h.journal.reset();
  Harness reopened(dir.path());
  ASSERT_TRUE(reopened.journal);
  EXPECT_EQ(reopened.journal->recovery().max_job_id, 20u);
  EXPECT_EQ(replay_all(*reopened.journal).size(), 4u * 1001 + 1);
}

TEST(Journal, PruneGlobalDropsOldServerAndWorkerEvents) {
  TempDir dir;
  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  h.append(worker_connected(1));
  h.append(submitted(1));
  Seq keep = h.append(worker_connected(2));
  ASSERT_TRUE(h.journal->prune_global(keep));
  ASSERT_TRUE(h.commit());
  auto events = replay_all(*h.journal);
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].seq, 2u);
  EXPECT_EQ(events[1].seq, keep);
  EXPECT_EQ(h.journal->recovery().max_worker_id, 0u);
  h.journal.reset();
  Harness reopened(dir.path());
  EXPECT_EQ(reopened.journal->recovery().max_worker_id, 2u);
}

TEST(Journal, TornWalTailRecoversEverythingBeforeTheCut) {
  TempDir dir;
  constexpr Seq kEvents = 40;
  {
    Harness h(dir.path());
    ASSERT_TRUE(h.journal);
    h.append(submitted(1));
    ASSERT_TRUE(h.commit());
    for (Seq i = 2; i <= kEvents; ++i) {
      h.append(started(1, static_cast<TaskId>(i)));
      ASSERT_TRUE(h.commit());  // one WAL record per event
    }
  }  // closed without a flush: everything is in the WAL
  fs::path wal;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    if (entry.path().extension() == ".log" && entry.file_size() > 0) wal = entry.path();
  }
  ASSERT_FALSE(wal.empty()) << "no WAL with data";
  const auto size = fs::file_size(wal);
  fs::resize_file(wal, size - 10);  // the last record loses its tail

  {
    // An offline reader sees the same, and changes nothing.
    Options options;
    options.read_only = true;
    auto reader = Journal::open(dir.path(), options);
    ASSERT_TRUE(reader) << reader.message();
    EXPECT_EQ(replay_all(**reader).size(), kEvents - 1);
    ASSERT_EQ((*reader)->recovery().damage.size(), 1u);
    EXPECT_NE((*reader)->recovery().damage[0].find("dropping"), std::string::npos);
    EXPECT_EQ(fs::file_size(wal), size - 10);
  }

  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  const RecoveryInfo& info = h.journal->recovery();
  auto events = replay_all(*h.journal);
  ASSERT_EQ(events.size(), kEvents - 1) << "only the torn last group is lost";
  for (size_t i = 0; i < events.size(); ++i) EXPECT_EQ(events[i].seq, i + 1);
  EXPECT_EQ(info.last_seq, kEvents - 1);
  ASSERT_FALSE(info.damage.empty()) << "the dropped bytes are reported";
  EXPECT_NE(info.damage[0].find(wal.filename().string()), std::string::npos) << info.damage[0];
  // Numbering continues after what was recovered, and the journal is writable.
  EXPECT_EQ(h.append(finished(1, 2)), kEvents);
  EXPECT_TRUE(h.commit());
}

TEST(Journal, ReadOnlyOpenWhileAWriterIsOpen) {
  TempDir dir;
  Harness writer(dir.path());
  ASSERT_TRUE(writer.journal);
  writer.append(worker_connected(1));
  writer.append(submitted(1));
  ASSERT_TRUE(writer.commit());

  Options options;
  options.read_only = true;
  auto reader = Journal::open(dir.path(), options);
  ASSERT_TRUE(reader) << reader.message();
  bool secondary = false;  // a secondary instance keeps its own directory while open
  for (const auto& entry : fs::directory_iterator(fs::temp_directory_path())) {
    secondary |= entry.path().filename().string().starts_with("hq-journal-reader-");
  }
  EXPECT_TRUE(secondary) << "the live writer was not noticed";
  EXPECT_EQ(replay_all(**reader).size(), 2u);
  EXPECT_EQ((*reader)->recovery().last_seq, 2u);
  EventMessage message(time_of(1));
  finished(1, 1)(message.event());
  auto refused = (*reader)->append(message.message());
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.message().find("read-only"), std::string::npos);

  // The writer is undisturbed, and a second reader sees the new events.
  writer.append(started(1, 0));
  ASSERT_TRUE(writer.commit());
  auto second = Journal::open(dir.path(), options);
  ASSERT_TRUE(second) << second.message();
  EXPECT_EQ(replay_all(**second).size(), 3u);
  reader->reset();
  second->reset();
  writer.append(finished(1, 0));
  EXPECT_TRUE(writer.commit());
}

TEST(Journal, ReadOnlyOpenOfAMissingJournalFails) {
  TempDir dir;
  Options options;
  options.read_only = true;
  auto opened = Journal::open(dir.path() / "nothing", options);
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.message().find("no journal"), std::string::npos) << opened.message();
}

// Opens the journal's database directly, to damage it on purpose.
struct RawDb {
  explicit RawDb(const fs::path& path) {
    std::vector<std::string> names;
    EXPECT_TRUE(rocksdb::DB::ListColumnFamilies(rocksdb::DBOptions(), path.string(), &names).ok());
    std::vector<rocksdb::ColumnFamilyDescriptor> families;
    for (const auto& n : names) families.emplace_back(n, rocksdb::ColumnFamilyOptions());
    rocksdb::DB* raw = nullptr;
    EXPECT_TRUE(
        rocksdb::DB::Open(rocksdb::DBOptions(), path.string(), families, &handles, &raw).ok());
    db.reset(raw);
  }
  ~RawDb() {
    for (auto* h : handles) EXPECT_TRUE(db->DestroyColumnFamilyHandle(h).ok());
  }
  rocksdb::ColumnFamilyHandle* family(const std::string& name) {
    for (auto* h : handles) {
      if (h->GetName() == name) return h;
    }
    return nullptr;
  }
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
};

// Overwrites the journal's format record.
void put_format(const fs::path& path, uint16_t major, uint16_t minor, int64_t created) {
  RawDb raw(path);
  capnp::MallocMessageBuilder message;
  auto format = message.initRoot<schema::Format>();
  format.setMagic(schema::FORMAT_MAGIC.get());
  format.setMajor(major);
  format.setMinor(minor);
  format.setCreated(created);
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  ASSERT_TRUE(raw.db
                  ->Put(rocksdb::WriteOptions(), raw.family("default"), "format",
                        rocksdb::Slice(reinterpret_cast<const char*>(bytes.begin()), bytes.size()))
                  .ok());
}

TEST(Journal, UnknownMajorVersionIsRefused) {
  TempDir dir;
  { Harness h(dir.path()); }
  put_format(dir.path(), 99, 4, 0);
  auto opened = Journal::open(dir.path(), Options());
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.message().find("format version 99.4"), std::string::npos) << opened.message();
}

// The format record as stored: major, minor, created.
std::tuple<uint16_t, uint16_t, int64_t> stored_format(const fs::path& path) {
  RawDb raw(path);
  std::string value;
  EXPECT_TRUE(raw.db->Get(rocksdb::ReadOptions(), raw.family("default"), "format", &value).ok());
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(value.data()),
                                        value.size() / sizeof(capnp::word));
  std::vector<capnp::word> aligned(words.begin(), words.end());
  capnp::FlatArrayMessageReader reader(kj::arrayPtr(aligned.data(), aligned.size()));
  auto f = reader.getRoot<schema::Format>();
  return {f.getMajor(), f.getMinor(), f.getCreated()};
}

// A journal of the previous major version (task times in tasksStarted/tasksFinished) is read, and
// becomes this version with the first batch a server writes to it, so that an older hq, which
// would skip the taskTimes records appended from then on, refuses it instead; a server that
// refuses it or writes nothing leaves it to the release that wrote it.
TEST(Journal, AnOlderMajorVersionIsReadAndUpgradedOnTheFirstWrite) {
  TempDir dir;
  {
    Harness h(dir.path());
    h.append(submitted(4));
    ASSERT_TRUE(h.commit());
  }
  put_format(dir.path(), 1, 0, 12345);
  {
    Options read_only;
    read_only.read_only = true;
    auto opened = Journal::open(dir.path(), read_only);
    ASSERT_TRUE(opened) << opened.message();
  }
  EXPECT_EQ(stored_format(dir.path()), std::make_tuple(uint16_t{1}, uint16_t{0}, int64_t{12345}));
  {
    Harness h(dir.path());  // opened for writing, replayed, nothing written
    ASSERT_TRUE(h.journal);
    auto events = replay_all(*h.journal);
    ASSERT_EQ(events.size(), 1u);
    EXPECT_EQ(events[0].which, Event::JOB_SUBMITTED);
  }
  EXPECT_EQ(stored_format(dir.path()), std::make_tuple(uint16_t{1}, uint16_t{0}, int64_t{12345}));
  {
    Harness h(dir.path());
    h.append(submitted(5));
    ASSERT_TRUE(h.commit());
    EXPECT_EQ(replay_all(*h.journal).size(), 2u);
  }
  EXPECT_EQ(stored_format(dir.path()),
            std::make_tuple(uint16_t{schema::FORMAT_MAJOR}, uint16_t{schema::FORMAT_MINOR},
                            int64_t{12345}));
}

TEST(Journal, ADatabaseThatIsNotAJournalIsRefused) {
  TempDir dir;
  {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir.path().string(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), "key", "value").ok());
  }
  auto opened = Journal::open(dir.path(), Options());
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.message().find("not an hq journal"), std::string::npos) << opened.message();
}

TEST(Journal, AnEmptyDatabaseBecomesAJournal) {
  TempDir dir;  // as left by a server killed while creating its journal
  {
    rocksdb::Options options;
    options.create_if_missing = true;
    rocksdb::DB* raw = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(options, dir.path().string(), &raw).ok());
    std::unique_ptr<rocksdb::DB> db(raw);  // RocksDB hands out an owning raw pointer
  }
  Options read_only;
  read_only.read_only = true;
  auto reader = Journal::open(dir.path(), read_only);
  ASSERT_TRUE(reader) << reader.message();
  EXPECT_TRUE(replay_all(**reader).empty());
  reader->reset();
  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  h.append(submitted(1));
  EXPECT_TRUE(h.commit());
}

TEST(Journal, ADamagedRecordIsSkippedAndReported) {
  TempDir dir;
  {
    Harness h(dir.path());
    h.append(submitted(1));
    h.append(started(1, 0));
    h.append(finished(1, 0));
    ASSERT_TRUE(h.commit());
  }
  {
    RawDb raw(dir.path());
    std::string key(12, '\0');
    key[3] = 1;   // job 1
    key[11] = 2;  // seq 2
    ASSERT_TRUE(raw.db->Put(rocksdb::WriteOptions(), raw.family("jobs"), key, "garbage!").ok());
  }
  Harness h(dir.path());
  std::vector<Seq> seqs;
  auto stats = h.journal->replay({}, [&](Seq seq, Event::Reader) { seqs.push_back(seq); });
  ASSERT_TRUE(stats) << stats.message();
  EXPECT_EQ(seqs, (std::vector<Seq>{1, 3}));
  ASSERT_EQ(stats->damage.size(), 1u);
  EXPECT_NE(stats->damage[0].find("seq 2 (job 1)"), std::string::npos) << stats->damage[0];
}

TEST(Journal, ClosingWritesWhatWasCommitted) {
  TempDir dir;
  std::vector<Status> results;
  {
    Options options;  // no post: callbacks run on the journal thread
    auto opened = Journal::open(dir.path(), options);
    ASSERT_TRUE(opened);
    EventMessage message(time_of(1));
    submitted(1)(message.event());
    ASSERT_TRUE((*opened)->append(message.message()));
    std::mutex mu;
    (*opened)->commit([&](Status s) {
      std::lock_guard lock(mu);
      results.push_back(s);
    });
    EventMessage dropped(time_of(2));
    started(1, 0)(dropped.event());
    ASSERT_TRUE((*opened)->append(dropped.message()));  // never committed
  }
  ASSERT_EQ(results.size(), 1u);
  EXPECT_TRUE(results[0]) << message_of(results[0]);
  Harness h(dir.path());
  EXPECT_EQ(replay_all(*h.journal).size(), 1u);
  EXPECT_EQ(h.journal->recovery().last_seq, 1u);
}

TEST(Journal, CompactKeepsEverythingLive) {
  TempDir dir;
  Harness h(dir.path());
  for (JobId job = 1; job <= 3; ++job) h.append(submitted(job));
  ASSERT_TRUE(h.commit());
  ASSERT_TRUE(h.compact());
  EXPECT_EQ(replay_all(*h.journal).size(), 3u);
}

// --- Trust what exists: damage the journal cannot prove harmless ---

std::string read_text(const fs::path& file) {
  std::ifstream in(file);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(Journal, ADirectoryWithJournalFilesButNoCurrentIsRefusedNotRecreated) {
  TempDir dir;
  {
    Harness h(dir.path());
    for (JobId job = 1; job <= 3; ++job) h.append(submitted(job));
    ASSERT_TRUE(h.commit());
  }
  fs::remove(dir.path() / "CURRENT");
  auto before = std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator());
  for (bool read_only : {false, true}) {
    Options options;
    options.read_only = read_only;
    auto opened = Journal::open(dir.path(), options);
    ASSERT_FALSE(opened);
    EXPECT_NE(opened.message().find("has no CURRENT file"), std::string::npos) << opened.message();
    EXPECT_NE(opened.message().find("MANIFEST-"), std::string::npos) << opened.message();
  }
  // Nothing was created: a second attempt finds the same directory, and fails the same way.
  EXPECT_FALSE(fs::exists(dir.path() / "CURRENT"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()), before);
  EXPECT_FALSE(Journal::open(dir.path(), {}));
  // The fix the message names brings every job back.
  std::string manifest;
  for (const auto& entry : fs::directory_iterator(dir.path())) {
    const std::string name = entry.path().filename().string();
    if (name.rfind("MANIFEST-", 0) == 0) manifest = std::max(manifest, name);
  }
  std::ofstream(dir.path() / "CURRENT") << manifest << "\n";
  Harness h(dir.path());
  EXPECT_EQ(replay_all(*h.journal).size(), 3u);
}

TEST(Journal, AHighWaterMarkAboveWhatTheJournalHoldsRefusesTheOpen) {
  TempDir dir;
  {
    Harness h(dir.path());
    for (JobId job = 1; job <= 4; ++job) h.append(submitted(job));
    ASSERT_TRUE(h.commit());
    ASSERT_TRUE(h.flush());
  }
  const fs::path mark = dir.path() / "HQ-HIGH-WATER";
  ASSERT_TRUE(fs::exists(mark));
  const std::string text = read_text(mark);
  EXPECT_NE(text.find("last_seq 4\n"), std::string::npos) << text;
  EXPECT_NE(text.find("live_jobs 4\n"), std::string::npos) << text;
  // As if a damaged MANIFEST had dropped the table file with seq 5..9 and jobs 5..8.
  std::ofstream(mark) << "hq-journal-high-water 1\nlast_seq 9\nmax_job 8\nlive_jobs 8\n"
                         "last_job_event 8 9\nlast_global 0\n";
  auto opened = Journal::open(dir.path(), {});
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.message().find("has lost acknowledged records"), std::string::npos)
      << opened.message();
  EXPECT_NE(opened.message().find("through seq 9"), std::string::npos) << opened.message();
  EXPECT_NE(opened.message().find("4 acknowledged job(s) missing"), std::string::npos)
      << opened.message();
  // Reported as damage by a reader.
  Options options;
  options.read_only = true;
  auto reader = Journal::open(dir.path(), options);
  ASSERT_TRUE(reader) << reader.message();
  ASSERT_FALSE((*reader)->recovery().damage.empty());
  EXPECT_NE((*reader)->recovery().damage[0].find("lost records: high-water mark"),
            std::string::npos)
      << (*reader)->recovery().damage[0];
}

TEST(Journal, MissingJobsAgainstTheStateRecordRefuseTheOpen) {
  TempDir dir;
  {
    Harness h(dir.path());
    for (JobId job = 1; job <= 3; ++job) h.append(submitted(job));
    ASSERT_TRUE(h.commit());
  }
  {
    // The jobs' records gone, the state record intact: what a lost table file of the jobs
    // family does.
    RawDb raw(dir.path());
    ASSERT_TRUE(raw.db
                    ->DeleteRange(rocksdb::WriteOptions(), raw.family("jobs"),
                                  std::string(4, '\0') + std::string(8, '\0'),
                                  std::string(1, '\x01') + std::string(11, '\0'))
                    .ok());
  }
  auto opened = Journal::open(dir.path(), {});
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.message().find("3 acknowledged job(s) missing"), std::string::npos)
      << opened.message();
}

TEST(Journal, ALostNewestTaskEventRefusesTheOpen) {
  TempDir dir;
  {
    Harness h(dir.path());
    h.append(submitted(1));
    h.append(started(1, 1));
    h.append(finished(1, 1));  // seq 3: the newest job event
    ASSERT_TRUE(h.commit());
    ASSERT_TRUE(h.flush());
  }
  {
    // The job is there, its task's end is not: what a lost table file of a later flush does.
    RawDb raw(dir.path());
    std::string key(12, '\0');
    key[3] = 1;
    key[11] = 3;
    ASSERT_TRUE(raw.db->Delete(rocksdb::WriteOptions(), raw.family("jobs"), key).ok());
  }
  auto opened = Journal::open(dir.path(), {});
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.message().find("the newest job event the journal records (job 1, seq 3) is "
                                  "missing"),
            std::string::npos)
      << opened.message();
}

TEST(Journal, PrunedJobsAreNotMissing) {
  TempDir dir;
  {
    Harness h(dir.path());
    for (JobId job = 1; job <= 5; ++job) h.append(submitted(job));
    ASSERT_TRUE(h.commit());
    ASSERT_TRUE(h.journal->prune(IdSet::range(2, 3)));
    ASSERT_TRUE(h.commit());
    ASSERT_TRUE(h.journal->prune(IdSet({IdRange{1, 3, 1}, IdRange{3, 9, 2}})));  // again, more
    ASSERT_TRUE(h.commit());
    ASSERT_TRUE(h.flush());
  }
  EXPECT_NE(read_text(dir.path() / "HQ-HIGH-WATER").find("live_jobs 1\n"), std::string::npos)
      << read_text(dir.path() / "HQ-HIGH-WATER");
  Harness h(dir.path());
  ASSERT_TRUE(h.journal);
  EXPECT_TRUE(h.journal->recovery().damage.empty());
  auto events = replay_all(*h.journal);
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].job, JobId{4});
}

TEST(Journal, JobEventsWithoutTheirSubmissionAreDamage) {
  TempDir dir;
  {
    Harness h(dir.path());
    h.append(submitted(1));
    h.append(started(1, 1));
    ASSERT_TRUE(h.commit());
  }
  {
    RawDb raw(dir.path());
    ASSERT_TRUE(raw.db
                    ->Delete(rocksdb::WriteOptions(), raw.family("jobs"),
                             [] {
                               std::string key(12, '\0');
                               key[3] = 1;
                               key[11] = 1;
                               return key;
                             }())
                    .ok());
  }
  auto opened = Journal::open(dir.path(), {});
  ASSERT_FALSE(opened);
  EXPECT_NE(opened.message().find("job 1: its first record (seq 2) is task-started"),
            std::string::npos)
      << opened.message();
}

TEST(Journal, FilesArePrivateWhateverTheUmask) {
  TempDir dir;
  const fs::path path = dir.path() / "journal";
  fs::create_directories(path);
  fs::permissions(path, fs::perms::all, fs::perm_options::replace);  // 0777, as umask 0 makes
  const mode_t old = ::umask(0);
  {
    Harness h(path);
    h.append(submitted(1));
    ASSERT_TRUE(h.commit());
    ASSERT_TRUE(h.flush());
    h.append(submitted(2));
    ASSERT_TRUE(h.commit());
  }
  ::umask(old);
  EXPECT_EQ(fs::status(path).permissions(), fs::perms::owner_all);
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(path)) {
    if (!entry.is_regular_file()) continue;
    ++files;
    EXPECT_EQ(entry.status().permissions(), fs::perms::owner_read | fs::perms::owner_write)
        << entry.path();
  }
  EXPECT_GT(files, 4u);
}

TEST(Journal, MeasureAnswersThroughTheLoop) {
  TempDir dir;
  Harness h(dir.path());
  for (JobId job = 1; job <= 3; ++job) h.append(submitted(job));
  ASSERT_TRUE(h.commit());
  std::optional<uint64_t> size;
  const auto owner = std::this_thread::get_id();
  std::thread::id measured_on;
  h.journal->measure([&](uint64_t bytes) {
    measured_on = std::this_thread::get_id();
    size = bytes;
  });
  ASSERT_TRUE(h.loop.run_until([&] { return size.has_value(); }));
  EXPECT_EQ(measured_on, owner);  // posted back to the loop
  EXPECT_GT(*size, 0u);
}

}  // namespace
}  // namespace hq::journal
