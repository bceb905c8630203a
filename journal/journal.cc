#include "journal/journal.h"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <limits>
#include <mutex>
#include <sstream>
#include <thread>
#include <variant>

#include <capnp/serialize.h>
#include <fmt/format.h>
#include <kj/exception.h>
#include <rocksdb/convenience.h>
#include <rocksdb/db.h>
#include <rocksdb/env.h>
#include <rocksdb/file_system.h>
#include <rocksdb/listener.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <spdlog/spdlog.h>

#include "common/time.h"
#include "journal/keys.h"
#include "journal/replay.h"

namespace hq::journal {
namespace {

// --- Clang thread-safety annotations (checked with -Wthread-safety) ---

#if defined(__clang__)
#define HQ_THREAD_ANNOTATION(x) __attribute__((x))
#else
#define HQ_THREAD_ANNOTATION(x)
#endif
#define HQ_CAPABILITY(x) HQ_THREAD_ANNOTATION(capability(x))
#define HQ_SCOPED_CAPABILITY HQ_THREAD_ANNOTATION(scoped_lockable)
#define HQ_GUARDED_BY(x) HQ_THREAD_ANNOTATION(guarded_by(x))
#define HQ_ACQUIRE(...) HQ_THREAD_ANNOTATION(acquire_capability(__VA_ARGS__))
#define HQ_RELEASE(...) HQ_THREAD_ANNOTATION(release_capability(__VA_ARGS__))

class HQ_CAPABILITY("mutex") Mutex {
 public:
  void lock() HQ_ACQUIRE() { mu_.lock(); }
  void unlock() HQ_RELEASE() { mu_.unlock(); }
  // Blocks until notified; `this` must be held.
  void wait(std::condition_variable_any& cv) { cv.wait(mu_); }
  // Blocks until notified or `deadline`; `this` must be held.
  void wait_until(std::condition_variable_any& cv, std::chrono::steady_clock::time_point deadline) {
    cv.wait_until(mu_, deadline);
  }

 private:
  std::mutex mu_;
};

class HQ_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) HQ_ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() HQ_RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

// --- Meta records ---

std::string flat_bytes(capnp::MessageBuilder& message) {
  auto words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

// Runs `read` on the message in `bytes`; damage becomes an error.
template <typename Fn>
Status read_meta(const std::string& bytes, const char* what, Fn&& read) {
  if (bytes.empty() || bytes.size() % sizeof(capnp::word) != 0 || bytes.size() > 4096) {
    return Status::error(fmt::format("damaged {} record ({} bytes)", what, bytes.size()));
  }
  std::vector<uint64_t> words(bytes.size() / sizeof(uint64_t));
  std::memcpy(words.data(), bytes.data(), bytes.size());
  capnp::ReaderOptions options;
  options.traversalLimitInWords = 1024;
  options.nestingLimit = 4;
  try {
    capnp::FlatArrayMessageReader reader(
        kj::arrayPtr(reinterpret_cast<const capnp::word*>(words.data()), words.size()), options);
    read(reader);
  } catch (const kj::Exception& e) {
    return Status::error(fmt::format("damaged {} record: {}", what, e.getDescription().cStr()));
  }
  return Status::ok();
}

// Whether a process of this machine holds a POSIX lock on `file` (RocksDB's LOCK: a server has
// the journal open). Reads /proc/locks, because opening the file to test for the lock would drop
// this process's own locks on it at close. Unknown counts as locked.
bool locked_on_this_host(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) return false;
  std::ifstream locks("/proc/locks");
  if (!locks) return true;
  // "1: POSIX  ADVISORY  WRITE 4242 fe:00:10952738 0 EOF"
  const std::string id = fmt::format("{:02x}:{:02x}:{}", major(st.st_dev), minor(st.st_dev),
                                     static_cast<uint64_t>(st.st_ino));
  std::string line;
  while (std::getline(locks, line)) {
    std::istringstream fields(line);
    std::string word;
    while (fields >> word) {
      if (word == id) return true;
    }
  }
  return false;
}

// --- RocksDB's info log ---

// Sends RocksDB's warnings and errors to our log, and keeps those about dropped WAL bytes while
// the database opens: they are what point-in-time recovery lost. RocksDB calls it from any thread.
class RocksLogger : public rocksdb::Logger {
 public:
  RocksLogger() : rocksdb::Logger(rocksdb::InfoLogLevel::WARN_LEVEL) {}

  void Logv(const char* format, va_list ap) override {
    Logv(rocksdb::InfoLogLevel::INFO_LEVEL, format, ap);
  }
  void Logv(const rocksdb::InfoLogLevel level, const char* format, va_list ap) override {
    if (level < GetInfoLogLevel()) return;
    char buffer[1024];
    std::vsnprintf(buffer, sizeof(buffer), format, ap);
    std::string line(buffer);
    {
      MutexLock lock(mu_);
      if (capturing_ && line.find("dropping") != std::string::npos) {
        // "[db/db_impl/db_impl_open.cc:982] /j/000004.log: dropping 137 bytes; Corruption: ..."
        size_t source = line.rfind("] ", line.find(": dropping"));
        damage_.push_back("WAL recovery: " +
                          (source == std::string::npos ? line : line.substr(source + 2)));
        return;  // the opener reports it, from recovery()
      }
    }
    // RocksDB warns of write stalls under bursts: information, not trouble. Failed writes are
    // reported by the journal itself.
    if (level >= rocksdb::InfoLogLevel::ERROR_LEVEL) {
      spdlog::error("journal (rocksdb): {}", line);
    } else {
      spdlog::info("journal (rocksdb): {}", line);
    }
  }

  // What was captured; stops capturing.
  std::vector<std::string> take_damage() {
    MutexLock lock(mu_);
    capturing_ = false;
    return std::move(damage_);
  }

 private:
  Mutex mu_;
  bool capturing_ HQ_GUARDED_BY(mu_) = true;
  std::vector<std::string> damage_ HQ_GUARDED_BY(mu_);
};

// --- The state record and the high-water mark ---

// The "state" record of the default family.
struct StateRecord {
  Seq last_seq = 0;
  JobId max_job = 0;
  WorkerId max_worker = 0;
  std::string server_uid;
  uint64_t live_jobs = 0;
  JobId last_job_event_job = 0;  // the newest event of the jobs family (seq 0: none)
  Seq last_job_event_seq = 0;
  Seq last_global_seq = 0;  // the newest event of the global family (0: none)
  Seq global_pruned_before = 0;
};

Status parse_state(const std::string& bytes, StateRecord& out) {
  return read_meta(bytes, "state", [&](capnp::MessageReader& reader) {
    auto state = reader.getRoot<schema::State>();
    out.last_seq = state.getLastSeq();
    out.max_job = state.getMaxJob();
    out.max_worker = state.getMaxWorker();
    out.server_uid = state.getServerUid().cStr();
    out.live_jobs = state.getLiveJobs();
    out.last_job_event_job = state.getLastJobEventJob();
    out.last_job_event_seq = state.getLastJobEventSeq();
    out.last_global_seq = state.getLastGlobalSeq();
    out.global_pruned_before = state.getGlobalPrunedBefore();
  });
}

// What the journal had made durable when the mark was last written: RocksDB's own state may be
// at or above it, never below. It lives in a small file of its own (kHighWaterFile), outside
// RocksDB, so that a damaged MANIFEST or a lost table file cannot take it along. It is written
// from the synced state record before every memtable flush (after which RocksDB may delete the
// WAL that held the flushed records) and at every open, atomically (temporary file, fsync,
// rename, fsync of the directory), so it costs nothing per commit.
struct HighWater {
  Seq last_seq = 0;
  JobId max_job = 0;
  uint64_t live_jobs = 0;
  // The newest event of each family then: a table file lost with it loses task states of jobs
  // that are still there, which the counts above cannot see.
  JobId last_job_event_job = 0;
  Seq last_job_event_seq = 0;
  Seq last_global_seq = 0;
  bool operator==(const HighWater&) const = default;
};

constexpr std::string_view kHighWaterMagic = "hq-journal-high-water 1";

HighWater high_water_of(const StateRecord& state) {
  return {state.last_seq,           state.max_job,        state.live_jobs, state.last_job_event_job,
          state.last_job_event_seq, state.last_global_seq};
}

std::string errno_text() { return std::strerror(errno); }

// The mark in `dir`; nullopt when there is none (a journal of hq before 1.1, or a new one).
Result<std::optional<HighWater>> read_high_water(const fs::path& dir) {
  const fs::path file = dir / kHighWaterFile;
  std::error_code ec;
  if (!fs::exists(file, ec)) return std::optional<HighWater>();
  std::ifstream in(file);
  if (!in) return Error{fmt::format("cannot read '{}': {}", file.string(), errno_text())};
  std::string magic;
  std::getline(in, magic);
  HighWater mark;
  std::string k1, k2, k3, k4, k5, rest;
  in >> k1 >> mark.last_seq >> k2 >> mark.max_job >> k3 >> mark.live_jobs >> k4 >>
      mark.last_job_event_job >> mark.last_job_event_seq >> k5 >> mark.last_global_seq;
  const bool complete = in && !(in >> rest);
  if (magic != kHighWaterMagic || !complete || k1 != "last_seq" || k2 != "max_job" ||
      k3 != "live_jobs" || k4 != "last_job_event" || k5 != "last_global") {
    return Error{fmt::format(
        "the high-water mark '{}' is damaged (it is written atomically, so something else "
        "changed it): restore it from a backup, or delete it if you accept that the journal "
        "cannot prove it holds every acknowledged job",
        file.string())};
  }
  return std::optional<HighWater>(mark);
}

Status write_high_water(const fs::path& dir, const HighWater& mark) {
  const fs::path file = dir / kHighWaterFile;
  const fs::path temp = dir / (std::string(kHighWaterFile) + ".tmp");
  const std::string text = fmt::format(
      "{}\nlast_seq {}\nmax_job {}\nlive_jobs {}\nlast_job_event {} {}\nlast_global {}\n",
      kHighWaterMagic, mark.last_seq, mark.max_job, mark.live_jobs, mark.last_job_event_job,
      mark.last_job_event_seq, mark.last_global_seq);
  auto fail = [&](const char* what, const fs::path& p) {
    return Status::error(fmt::format("cannot {} '{}': {}", what, p.string(), errno_text()));
  };
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return fail("create", temp);
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      Status st = fail("write", temp);
      ::close(fd);
      return st;
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) {
    Status st = fail("sync", temp);
    ::close(fd);
    return st;
  }
  if (::close(fd) != 0) return fail("close", temp);
  if (::rename(temp.c_str(), file.c_str()) != 0) return fail("rename into", file);
  const int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return fail("open", dir);
  const bool synced = ::fsync(dir_fd) == 0;
  Status st = synced ? Status::ok() : fail("sync", dir);
  ::close(dir_fd);
  return st;
}

// Keeps the high-water mark up with the state record before each flush. RocksDB calls it from its
// flush threads, with no lock of its own held.
class HighWaterKeeper : public rocksdb::EventListener {
 public:
  HighWaterKeeper(fs::path dir, std::optional<HighWater> written)
      : dir_(std::move(dir)), written_(written) {}

  // Writes the mark unless it says that already.
  Status update(const HighWater& mark) {
    MutexLock lock(mu_);
    if (written_ && *written_ == mark) return Status::ok();
    if (Status st = write_high_water(dir_, mark); !st) return st;
    written_ = mark;
    return Status::ok();
  }

  void OnFlushBegin(rocksdb::DB* db, const rocksdb::FlushJobInfo&) override {
    // The state record as readers see it: only synced writes are visible (the WAL is synced
    // before the memtable takes a write), so the mark never claims more than the disk holds.
    std::string value;
    auto s = db->Get(rocksdb::ReadOptions(), db->DefaultColumnFamily(), kStateKey, &value);
    if (s.IsNotFound()) return;
    StateRecord state;
    Status st = s.ok() ? parse_state(value, state)
                       : Status::error(fmt::format("cannot read the state: {}", s.ToString()));
    if (st) st = update(high_water_of(state));
    if (!st) {
      // The journal goes on (its records are safe); only a later check of it is weaker.
      spdlog::error(
          "journal '{}': cannot update the high-water mark ({}); a damaged MANIFEST found at a "
          "later start may go unnoticed: free space or fix the directory's permissions",
          dir_.string(), st.message());
    }
  }

 private:
  const fs::path dir_;
  Mutex mu_;
  std::optional<HighWater> written_ HQ_GUARDED_BY(mu_);
};

// The jobs whose events the `jobs` family holds, in id order. Each job's first record must be its
// submission (pruning removes a job whole); one that begins otherwise lost it, reported in
// `damage`. Costs one seek per job, not a read of every event.
std::vector<JobId> scan_jobs(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* jobs,
                             std::vector<std::string>& damage) {
  std::vector<JobId> ids;
  if (!jobs) return ids;
  rocksdb::ReadOptions read;
  read.fill_cache = false;
  std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(read, jobs));
  EventDecoder decoder;
  it->SeekToFirst();
  while (it->Valid()) {
    if (it->key().size() != kJobKeySize) {  // replay reports it
      it->Next();
      continue;
    }
    const JobId job = get_be32(it->key().data());
    auto event = decoder.decode(it->value().data(), it->value().size());
    // A job begins with its submission: jobSubmitted, jobOpened (`hq job open`), or a new job's
    // tasksSubmitted (tasks with parameters of their own).
    const bool begins = event && (event->which() == schema::Event::JOB_SUBMITTED ||
                                  event->which() == schema::Event::JOB_OPENED ||
                                  (event->which() == schema::Event::TASKS_SUBMITTED &&
                                   event->getTasksSubmitted().getNewJob()));
    if (begins) {
      ids.push_back(job);
    } else {
      damage.push_back(fmt::format(
          "job {}: its first record (seq {}) is {}, not its submission: the submission is lost",
          job, get_be64(it->key().data() + 4),
          event ? std::string(event_type_name(event->which())) : "undecodable"));
    }
    if (job == std::numeric_limits<JobId>::max()) break;
    it->Seek(job_prefix(job + 1));
  }
  if (!it->status().ok()) {
    damage.push_back(
        fmt::format("reading the jobs family stopped early: {}", it->status().ToString()));
  }
  return ids;
}

std::string ids_text(const std::vector<JobId>& ids) {
  if (ids.empty()) return "none";
  IdSetBuilder set;
  for (JobId id : ids) set.add(id);
  return std::move(set).build().to_string();
}

// What the journal lacks against its high-water mark and its own state record, one line each;
// empty when it holds every acknowledged job.
std::vector<std::string> shortfall(const std::optional<HighWater>& mark, const StateRecord& state,
                                   const std::vector<JobId>& live) {
  std::vector<std::string> lines;
  uint64_t expected = state.live_jobs;
  if (mark && (state.last_seq < mark->last_seq || state.max_job < mark->max_job)) {
    lines.push_back(fmt::format(
        "high-water mark: the journal had stored its events through seq {} and job ids through "
        "{}, but it now holds them only through seq {} and job {}: the newest records are lost",
        mark->last_seq, mark->max_job, state.last_seq, state.max_job));
    expected = std::max(expected, mark->live_jobs);
  }
  if (live.size() < expected) {
    lines.push_back(fmt::format(
        "{} acknowledged job(s) missing: the journal should hold {} live job(s), but holds {} "
        "(jobs {})",
        expected - live.size(), expected, live.size(), ids_text(live)));
  }
  return lines;
}

// Whether the newest event of each family, as the mark and the state record name it, is there:
// a lost table file that held only task events of jobs still there goes unnoticed otherwise.
// One line per missing event.
std::vector<std::string> missing_newest(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* jobs,
                                        rocksdb::ColumnFamilyHandle* global,
                                        const std::optional<HighWater>& mark,
                                        const StateRecord& state, const std::vector<JobId>& live) {
  std::vector<std::string> lines;
  auto present = [&](rocksdb::ColumnFamilyHandle* family, const std::string& key) {
    if (!family) return false;
    std::string value;
    rocksdb::ReadOptions read;
    read.fill_cache = false;
    return !db.Get(read, family, key, &value).IsNotFound();  // a read error fails the replay
  };
  std::vector<std::pair<JobId, Seq>> job_events = {
      {state.last_job_event_job, state.last_job_event_seq}};
  std::vector<Seq> global_events = {state.last_global_seq};
  if (mark) {
    job_events.emplace_back(mark->last_job_event_job, mark->last_job_event_seq);
    global_events.push_back(mark->last_global_seq);
  }
  for (size_t i = 0; i < job_events.size(); ++i) {
    const auto [job, seq] = job_events[i];
    if (seq == 0 || (i > 0 && job_events[i] == job_events[0])) continue;
    if (!std::binary_search(live.begin(), live.end(), job)) continue;  // pruned since
    if (!present(jobs, job_key(job, seq))) {
      lines.push_back(fmt::format(
          "the newest job event the journal {} (job {}, seq {}) is missing: task states recorded "
          "with it are lost",
          i == 0 ? "records" : "had stored at its last flush", job, seq));
    }
  }
  for (size_t i = 0; i < global_events.size(); ++i) {
    const Seq seq = global_events[i];
    if (seq == 0 || seq < state.global_pruned_before || (i > 0 && seq == global_events[0])) {
      continue;
    }
    if (!present(global, global_key(seq))) {
      lines.push_back(fmt::format(
          "the newest server or worker event the journal {} (seq {}) is missing: server restarts "
          "recorded with it are lost",
          i == 0 ? "records" : "had stored at its last flush", seq));
    }
  }
  return lines;
}

// The files RocksDB and the journal keep in a journal directory (not LOCK, nor temporaries).
std::vector<std::string> journal_files(const fs::path& dir) {
  std::vector<std::string> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    auto ends_with = [&](std::string_view suffix) {
      return name.size() > suffix.size() &&
             name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (ends_with(".log") || ends_with(".sst") || name.rfind("MANIFEST-", 0) == 0 ||
        name.rfind("OPTIONS-", 0) == 0 || name == kHighWaterFile) {
      found.push_back(name);
    }
  }
  std::sort(found.begin(), found.end());
  return found;
}

// The refusal for a directory that holds journal files but no CURRENT: creating a database there
// would start an empty journal over the acknowledged jobs (and hide the WAL for good).
Status lost_current(const fs::path& dir, const std::vector<std::string>& files) {
  std::vector<std::string> manifests;
  size_t wals = 0, tables = 0;
  for (const auto& name : files) {
    if (name.rfind("MANIFEST-", 0) == 0) manifests.push_back(name);
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".log") == 0) ++wals;
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".sst") == 0) ++tables;
  }
  std::string fix;
  if (!manifests.empty()) {
    // Numbered with leading zeros: the last in name order is the newest.
    fix = fmt::format(
        "if '{}' is the newest manifest, recreate CURRENT with `printf '{}\\n' > {}` and start "
        "again; otherwise ",
        manifests.back(), manifests.back(), (dir / "CURRENT").string());
  }
  return Status::error(fmt::format(
      "journal '{}' has no CURRENT file but holds journal files ({} WAL file(s), {} table "
      "file(s), manifest(s): {}): CURRENT was deleted or lost, and the jobs recorded there would "
      "be lost if a new journal were created over them; {}restore the directory from a backup, "
      "or move it aside to start with an empty journal",
      dir.string(), wals, tables,
      manifests.empty() ? "none" : fmt::format("{}", fmt::join(manifests, ", ")), fix));
}

// Makes the journal directory (0700) and its files (0600) the owner's alone, whatever the umask
// was: events hold what tasks are given (`--env API_TOKEN=...`).
Status make_private(const fs::path& dir) {
  std::error_code ec;
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace, ec);
  if (ec) {
    return Status::error(fmt::format("cannot make journal directory '{}' private (mode 0700): {}",
                                     dir.string(), ec.message()));
  }
  // The journal's own files only: a directory given with --journal may hold others.
  std::vector<std::string> names = journal_files(dir);
  for (const char* name : {"CURRENT", "IDENTITY", "LOCK", "LOG"}) names.emplace_back(name);
  const auto owner_rw = fs::perms::owner_read | fs::perms::owner_write;
  for (const auto& name : names) {
    const fs::path file = dir / name;
    std::error_code file_ec;
    auto st = fs::symlink_status(file, file_ec);
    if (file_ec || st.type() != fs::file_type::regular || st.permissions() == owner_rw) continue;
    fs::permissions(file, owner_rw, fs::perm_options::replace, file_ec);
    if (file_ec) {
      return Status::error(fmt::format("cannot make journal file '{}' private (mode 0600): {}",
                                       file.string(), file_ec.message()));
    }
  }
  return Status::ok();
}

// Creates every file owner-only (0600), whatever the umask: RocksDB's own default is 0644.
class PrivateFs : public rocksdb::FileSystemWrapper {
 public:
  explicit PrivateFs(const std::shared_ptr<rocksdb::FileSystem>& target)
      : rocksdb::FileSystemWrapper(target) {}
  const char* Name() const override { return "HqPrivateFs"; }

  rocksdb::IOStatus NewWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSWritableFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    return restrict(name, target()->NewWritableFile(name, options, result, dbg));
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& name, const rocksdb::FileOptions& options,
                                       std::unique_ptr<rocksdb::FSWritableFile>* result,
                                       rocksdb::IODebugContext* dbg) override {
    return restrict(name, target()->ReopenWritableFile(name, options, result, dbg));
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& name, const std::string& old,
                                      const rocksdb::FileOptions& options,
                                      std::unique_ptr<rocksdb::FSWritableFile>* result,
                                      rocksdb::IODebugContext* dbg) override {
    return restrict(name, target()->ReuseWritableFile(name, old, options, result, dbg));
  }
  rocksdb::IOStatus NewRandomRWFile(const std::string& name, const rocksdb::FileOptions& options,
                                    std::unique_ptr<rocksdb::FSRandomRWFile>* result,
                                    rocksdb::IODebugContext* dbg) override {
    return restrict(name, target()->NewRandomRWFile(name, options, result, dbg));
  }

 private:
  // The directory is 0700 already, so nobody else could open the file in between.
  static rocksdb::IOStatus restrict(const std::string& name, rocksdb::IOStatus created) {
    if (!created.ok()) return created;
    if (::chmod(name.c_str(), 0600) != 0) {
      return rocksdb::IOStatus::IOError(
          fmt::format("cannot make '{}' private (mode 0600): {}", name, errno_text()));
    }
    return created;
  }
};

// The refusal of a read-write open of a journal that lost acknowledged records.
Status refuse_lost(const fs::path& dir, const std::vector<std::string>& lines) {
  return Status::error(fmt::format(
      "journal '{}' has lost acknowledged records, so it is not opened for writing: {}. A "
      "damaged or cut MANIFEST, or a deleted table (.sst) file, does this. The directory was left "
      "untouched: restore it from a backup and start again, see what is left with `hq journal "
      "report --journal {}`, or move it aside to start with an empty journal",
      dir.string(), fmt::join(lines, "; "), dir.string()));
}

// --- Work items ---

enum class OpKind : uint8_t { kPutJob, kPutGlobal, kDeleteJobs, kDeleteGlobal };

// One record of a group: its key then its value (or the range's begin then end) in the arena.
struct Op {
  OpKind kind;
  uint32_t key_size;
  size_t offset;
  size_t value_size;
};

// The records of one commit(), written atomically, and what the state record says after them.
struct Group {
  std::string arena;
  std::vector<Op> ops;
  Done done;
  Seq last_seq = 0;
  JobId max_job = 0;
  WorkerId max_worker = 0;
  uint64_t live_jobs = 0;
  JobId last_job_event_job = 0;
  Seq last_job_event_seq = 0;
  Seq last_global_seq = 0;
  Seq global_pruned_before = 0;
  std::shared_ptr<const std::string> server_uid;
};

enum class TaskKind : uint8_t { kFlush, kCompact, kCompactPruned, kMeasure };

// Work for the maintenance thread.
struct Task {
  TaskKind kind = TaskKind::kFlush;
  Done done;  // may be empty
  // kCompactPruned: the key ranges to compact, [begin, end).
  std::optional<std::pair<std::string, std::string>> jobs_range;
  std::optional<std::pair<std::string, std::string>> global_range;
  std::function<void(uint64_t)> measured;  // kMeasure: told the size on disk
};

using Item = std::variant<Group, Task>;

// Widens `range` to cover [begin, end).
void cover(std::optional<std::pair<std::string, std::string>>& range, const rocksdb::Slice& begin,
           const rocksdb::Slice& end) {
  if (!range) {
    range.emplace(begin.ToString(), end.ToString());
    return;
  }
  if (begin.compare(range->first) < 0) range->first = begin.ToString();
  if (end.compare(range->second) > 0) range->second = end.ToString();
}

Status from_rocks(const rocksdb::Status& s, const std::string& context) {
  if (s.ok()) return Status::ok();
  return Status::error(fmt::format("{}: {}", context, s.ToString()));
}

// An open that failed: for damage, what the user can do about it.
Status open_failed(const rocksdb::Status& s, const std::string& context) {
  Status st = from_rocks(s, context);
  if (!s.IsCorruption() && !s.IsIOError() && !s.IsInvalidArgument()) return st;
  if (s.ToString().find("lock") != std::string::npos) return st;  // held by another process
  return Status::error(st.message() +
                       " (the journal is damaged; nothing was changed in it: restore it from a "
                       "backup, or move it aside to start with an empty journal)");
}

rocksdb::CompressionType pick(const std::vector<rocksdb::CompressionType>& supported,
                              std::initializer_list<rocksdb::CompressionType> preferred) {
  for (auto c : preferred) {
    if (std::find(supported.begin(), supported.end(), c) != supported.end()) return c;
  }
  return rocksdb::kNoCompression;
}

// --- The journal ---

class JournalImpl final : public Journal {
 public:
  JournalImpl(fs::path path, Options options)
      : path_(std::move(path)), options_(std::move(options)) {}
  ~JournalImpl() override;

  Status open();
  // The format record of this version (FORMAT_MAJOR.FORMAT_MINOR), created at `created`.
  static std::string format_bytes(int64_t created);
  // Writes it.
  Status write_format(int64_t created);

  const RecoveryInfo& recovery() const override { return recovery_; }
  Result<Seq> append(capnp::MessageBuilder& event) override;
  Status prune(const IdSet& jobs) override;
  Status prune_global(Seq before) override;
  void commit(Done done) override;
  void flush(Done done) override { enqueue(Task{TaskKind::kFlush, std::move(done), {}, {}, {}}); }
  void compact(Done done) override {
    enqueue(Task{TaskKind::kCompact, std::move(done), {}, {}, {}});
  }
  void measure(std::function<void(uint64_t)> done) override;
  Result<ReplayStats> replay(const ReplayOptions& options, const ReplayFn& fn) override;
  Status status() const override;
  JournalStats stats() const override;
  uint64_t size_on_disk() const override;

 private:
  Status writable() const;
  void enqueue(Item item);
  void post(Done done, const Status& status);
  void write_loop();
  void write_groups(std::deque<Item>& items, size_t begin, size_t end);
  // Writes batch_ (synced when Options::sync).
  Status write_batch();
  // After batch_ failed to write with `error`: retries with backoff until it is written (ok) or
  // the journal closes (the last error). Journal thread.
  Status retry_write(Status error);
  // Closes the database and opens it again, then flushes every family. Journal thread, with the
  // maintenance thread held off meanwhile.
  Status reopen();
  void maintenance_loop();
  Status run(const Task& task);
  Status flush_all();
  // The read-only look before a read-write open: fails, changing nothing, when the journal lost
  // acknowledged records; else sets `live` to its jobs (scan_jobs).
  Status precheck(const rocksdb::DBOptions& db_options,
                  const std::vector<rocksdb::ColumnFamilyDescriptor>& families,
                  const std::optional<HighWater>& mark, std::vector<JobId>& live);
  // No key in any family.
  bool empty();
  void add_op(OpKind kind, const std::string& key, const std::string& value);

  const fs::path path_;
  const Options options_;
  fs::path secondary_dir_;  // read-only: the secondary instance's own directory
  std::shared_ptr<RocksLogger> logger_;
  std::unique_ptr<rocksdb::Env> private_env_;  // read-write: RocksDB's I/O, files made 0600
  std::shared_ptr<HighWaterKeeper> keeper_;    // read-write: RocksDB's listener
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // every family of the database
  rocksdb::ColumnFamilyHandle* meta_ = nullptr;
  rocksdb::ColumnFamilyHandle* jobs_ = nullptr;    // null in a read-only journal without it
  rocksdb::ColumnFamilyHandle* global_ = nullptr;  // likewise
  RecoveryInfo recovery_;

  // Owner thread.
  Group open_;
  Seq next_seq_ = 1;
  JobId max_job_ = 0;
  WorkerId max_worker_ = 0;
  std::vector<JobId> live_;       // jobs submitted and not pruned, in id order
  JobId last_job_event_job_ = 0;  // the newest event appended to each family (state record)
  Seq last_job_event_seq_ = 0;
  Seq last_global_seq_ = 0;
  Seq global_pruned_before_ = 0;
  std::shared_ptr<const std::string> server_uid_;

  std::atomic<uint64_t> appended_{0}, commits_{0}, batches_{0}, bytes_written_{0}, compactions_{0},
      last_seq_{0}, write_failures_{0};

  mutable Mutex mu_;
  std::condition_variable_any write_cv_;        // queue_ or stopping_ changed
  std::condition_variable_any maintenance_cv_;  // tasks_ or stopping_ changed
  std::deque<Item> queue_ HQ_GUARDED_BY(mu_);
  std::deque<Task> tasks_ HQ_GUARDED_BY(mu_);
  bool stopping_writes_ HQ_GUARDED_BY(mu_) = false;
  bool stopping_maintenance_ HQ_GUARDED_BY(mu_) = false;
  // Set by the journal thread while it reopens the database: the maintenance thread leaves db_
  // alone (it is running a task while maintaining_).
  bool paused_ HQ_GUARDED_BY(mu_) = false;
  bool maintaining_ HQ_GUARDED_BY(mu_) = false;
  Status status_ HQ_GUARDED_BY(mu_);  // the last failed write's error while retrying

  // Journal thread.
  rocksdb::WriteBatch batch_;
  // An older journal's new format record, written with the first batch (journal thread).
  std::string upgraded_format_;
  rocksdb::DBOptions db_options_;  // as open() opened the database, for reopen()
  std::vector<rocksdb::ColumnFamilyDescriptor> families_;

  std::thread writer_;
  std::thread maintainer_;
};

JournalImpl::~JournalImpl() {
  if (writer_.joinable()) {
    {
      MutexLock lock(mu_);
      stopping_writes_ = true;
    }
    write_cv_.notify_all();
    writer_.join();
  }
  if (maintainer_.joinable()) {
    {
      MutexLock lock(mu_);
      stopping_maintenance_ = true;
    }
    maintenance_cv_.notify_all();
    maintainer_.join();
  }
  if (db_) {
    for (auto* handle : handles_) db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
    db_->Close().PermitUncheckedError();
    db_.reset();
  }
  if (!secondary_dir_.empty()) {
    std::error_code ec;
    fs::remove_all(secondary_dir_, ec);
  }
}

Status JournalImpl::open() {
  std::error_code ec;
  const bool exists = fs::exists(path_ / "CURRENT", ec);
  if (!exists) {
    if (auto files = journal_files(path_); !files.empty()) return lost_current(path_, files);
    if (options_.read_only || !options_.create_if_missing) {
      return Status::error(fmt::format(
          "no journal in '{}' (the server creates it when it starts; --journal PATH picks "
          "another)",
          path_.string()));
    }
    fs::create_directories(path_, ec);
    if (ec) {
      return Status::error(
          fmt::format("cannot create journal directory '{}': {}", path_.string(), ec.message()));
    }
  }

  if (!options_.read_only) {
    if (Status st = make_private(path_); !st) return st;
    // RocksDB then creates its files 0600 (LOCK aside, fixed after the open).
    rocksdb::Env* base = options_.env ? options_.env : rocksdb::Env::Default();
    private_env_ = rocksdb::NewCompositeEnv(std::make_shared<PrivateFs>(base->GetFileSystem()));
  }
  // Read before RocksDB opens, so that it is never newer than what the open sees.
  auto mark = read_high_water(path_);
  if (!mark && !options_.read_only) return Status::error(mark.message());
  if (!mark) recovery_.damage.push_back(mark.message());
  const std::optional<HighWater> high_water = mark ? *mark : std::nullopt;

  rocksdb::DBOptions db_options;
  logger_ = std::make_shared<RocksLogger>();
  db_options.info_log = logger_;
  if (options_.env) db_options.env = options_.env;
  if (private_env_) db_options.env = private_env_.get();
  db_options.create_if_missing = true;
  db_options.create_missing_column_families = true;
  db_options.wal_recovery_mode = rocksdb::WALRecoveryMode::kPointInTimeRecovery;
  db_options.max_background_jobs = 2;
  // Restart replays the WAL into memtables, at roughly 1 s per 75 MB here: bound it with small
  // memtables and a WAL limit (the small meta and global families would otherwise keep every
  // WAL file alive until they fill a memtable of their own).
  db_options.max_total_wal_size = 32u << 20;
  db_options.avoid_flush_during_recovery = true;
  db_options.WAL_ttl_seconds = 0;  // no WAL archive: obsolete WAL files go away
  db_options.WAL_size_limit_MB = 0;
  // The MANIFEST holds a few records: 64 KiB ahead, not RocksDB's 4 MiB, which a full disk would
  // get back only when a reopen after a failed write deletes the old MANIFEST.
  db_options.manifest_preallocation_size = 64u << 10;
  if (options_.read_only) db_options.max_open_files = -1;  // as secondary instances require

  rocksdb::ColumnFamilyOptions family_options;
  auto supported = rocksdb::GetSupportedCompressions();
  // Every level is compressed with LZ4, flushes too: it costs little CPU next to the flush's
  // write and halves a campaign's task records (their Cap'n Proto framing is mostly zeros).
  family_options.bottommost_compression =
      pick(supported, {rocksdb::kLZ4Compression, rocksdb::kSnappyCompression});
  family_options.compression = family_options.bottommost_compression;
  family_options.level_compaction_dynamic_level_bytes = true;
  family_options.write_buffer_size = 16u << 20;
  family_options.max_write_buffer_number = 4;  // absorbs bursts while a flush runs

  std::vector<std::string> names;
  if (exists) {
    auto s = rocksdb::DB::ListColumnFamilies(db_options, path_.string(), &names);
    if (!s.ok()) {
      return open_failed(s, fmt::format("cannot read journal '{}'", path_.string()));
    }
  } else {
    names.push_back(rocksdb::kDefaultColumnFamilyName);
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const auto& name : names) families.emplace_back(name, family_options);

  // A read-write open deletes the table files its MANIFEST does not name and writes a new
  // MANIFEST: first a read-only look, which changes nothing, refuses a journal that lost
  // acknowledged records (unless another process holds it: the open below then fails on its lock).
  // TODO(perf): the look replays the WAL (at most max_total_wal_size) in memory a second time.
  std::optional<std::vector<JobId>> checked;
  if (exists && !options_.read_only && !locked_on_this_host(path_ / "LOCK")) {
    checked.emplace();
    if (Status st = precheck(db_options, families, high_water, *checked); !st) return st;
  }

  if (!options_.read_only) {
    for (const char* name : {kJobsFamily, kGlobalFamily}) {
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        families.emplace_back(name, family_options);
      }
    }
  }

  rocksdb::DB* db = nullptr;
  rocksdb::Status s;
  if (!options_.read_only) {
    keeper_ = std::make_shared<HighWaterKeeper>(path_, high_water);
    db_options.listeners.push_back(keeper_);
    // reopen() after a failed write opens it again as here: every family, the same listener.
    db_options_ = db_options;
    families_ = families;
    s = rocksdb::DB::Open(db_options, path_.string(), families, &handles_, &db);
  } else if (!locked_on_this_host(path_ / "LOCK")) {
    // No server has it open: recover the WAL in memory, reporting a torn tail as damage.
    s = rocksdb::DB::OpenForReadOnly(db_options, path_.string(), families, &handles_, &db);
  } else {
    // A server writes it: a secondary instance, which never disturbs it (and cannot tell a torn
    // tail from a write in flight).
    std::string pattern = (fs::temp_directory_path() / "hq-journal-reader-XXXXXX").string();
    if (!mkdtemp(pattern.data())) {
      return Status::error(fmt::format("cannot create a directory in '{}' to read the journal: {}",
                                       fs::temp_directory_path().string(), strerror(errno)));
    }
    secondary_dir_ = pattern;
    s = rocksdb::DB::OpenAsSecondary(db_options, path_.string(), secondary_dir_.string(), families,
                                     &handles_, &db);
    if (s.ok()) s = db->TryCatchUpWithPrimary();
  }
  if (db) db_.reset(db);
  if (!s.ok()) {
    return open_failed(s, fmt::format("cannot open journal '{}'", path_.string()));
  }
  for (auto* handle : handles_) {
    if (handle->GetName() == rocksdb::kDefaultColumnFamilyName) meta_ = handle;
    if (handle->GetName() == kJobsFamily) jobs_ = handle;
    if (handle->GetName() == kGlobalFamily) global_ = handle;
  }

  // The format record: written at creation, checked ever after.
  std::string value;
  s = db_->Get(rocksdb::ReadOptions(), meta_, kFormatKey, &value);
  if (s.IsNotFound() && !empty()) {
    return Status::error(
        fmt::format("'{}' is a RocksDB database but not an hq journal (it has no format record)",
                    path_.string()));
  }
  if (s.IsNotFound() && options_.read_only) {
    recovery_.format_minor = schema::FORMAT_MINOR;  // created, and never written
  } else if (s.IsNotFound()) {
    // A new journal (or one whose creator died before writing this record).
    if (Status written = write_format(unix_millis_now()); !written) return written;
  } else if (!s.ok()) {
    return from_rocks(s, fmt::format("cannot read journal '{}'", path_.string()));
  } else {
    std::string magic;
    uint16_t major = 0, minor = 0;
    int64_t created = 0;
    Status read = read_meta(value, "format", [&](capnp::MessageReader& reader) {
      auto format = reader.getRoot<schema::Format>();
      magic = format.getMagic().cStr();
      major = format.getMajor();
      minor = format.getMinor();
      created = format.getCreated();
    });
    if (!read || magic != schema::FORMAT_MAGIC.get().cStr()) {
      return Status::error(fmt::format("'{}' is not an hq journal (bad format record{})",
                                       path_.string(), read ? "" : ": " + read.message()));
    }
    if (major < schema::FORMAT_OLDEST_MAJOR || major > schema::FORMAT_MAJOR) {
      return Status::error(fmt::format(
          "journal '{}' has format version {}.{}, but this hq reads versions {}.x to {}.x only: "
          "use the hq release that wrote it",
          path_.string(), major, minor, schema::FORMAT_OLDEST_MAJOR, schema::FORMAT_MAJOR));
    }
    recovery_.format_minor = minor;
    if (major < schema::FORMAT_MAJOR && !options_.read_only) {
      // What this server appends an older hq would misread: the first batch written stamps the
      // journal with this version, so that an older hq refuses it from then on. A journal
      // opened and never written to stays as it was.
      upgraded_format_ = format_bytes(created);
    }
  }

  // The state record: where numbering continues.
  StateRecord state;
  s = db_->Get(rocksdb::ReadOptions(), meta_, kStateKey, &value);
  if (s.ok()) {
    if (Status read = parse_state(value, state); !read) {
      return Status::error(fmt::format("journal '{}': {}", path_.string(), read.message()));
    }
  } else if (!s.IsNotFound()) {
    return from_rocks(s, fmt::format("cannot read journal '{}'", path_.string()));
  }
  recovery_.last_seq = state.last_seq;
  recovery_.max_job_id = state.max_job;
  recovery_.max_worker_id = state.max_worker;
  recovery_.server_uid = state.server_uid;
  std::vector<std::string> wal_damage = logger_->take_damage();
  for (auto& line : wal_damage) {
    line += fmt::format(" (recovered through seq {})", recovery_.last_seq);
  }
  recovery_.damage.insert(recovery_.damage.begin(), wal_damage.begin(), wal_damage.end());

  // Every acknowledged job must be there (the high-water mark, the state record's count).
  std::vector<std::string> lost;
  live_ = checked ? std::move(*checked) : scan_jobs(*db_, jobs_, lost);
  for (auto& line : shortfall(high_water, state, live_)) lost.push_back(std::move(line));
  for (auto& line : missing_newest(*db_, jobs_, global_, high_water, state, live_)) {
    lost.push_back(std::move(line));
  }
  if (!lost.empty() && !options_.read_only) return refuse_lost(path_, lost);
  for (const auto& line : lost) recovery_.damage.push_back("lost records: " + line);
  if (!options_.read_only) {
    if (Status st = make_private(path_); !st) return st;
  }
  if (keeper_) {
    if (Status st = keeper_->update(high_water_of(state)); !st) {
      return Status::error(fmt::format("journal '{}': {}", path_.string(), st.message()));
    }
  }

  next_seq_ = recovery_.last_seq + 1;
  max_job_ = recovery_.max_job_id;
  max_worker_ = recovery_.max_worker_id;
  last_job_event_job_ = state.last_job_event_job;
  last_job_event_seq_ = state.last_job_event_seq;
  last_global_seq_ = state.last_global_seq;
  global_pruned_before_ = state.global_pruned_before;
  server_uid_ = std::make_shared<const std::string>(recovery_.server_uid);
  last_seq_ = recovery_.last_seq;
  if (!options_.read_only) {
    writer_ = std::thread([this] { write_loop(); });
    maintainer_ = std::thread([this] { maintenance_loop(); });
  }
  return Status::ok();
}

Status JournalImpl::precheck(const rocksdb::DBOptions& db_options,
                             const std::vector<rocksdb::ColumnFamilyDescriptor>& families,
                             const std::optional<HighWater>& mark, std::vector<JobId>& live) {
  rocksdb::DBOptions options = db_options;
  options.info_log = std::make_shared<RocksLogger>();  // the open after it reports WAL damage
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  auto s = rocksdb::DB::OpenForReadOnly(options, path_.string(), families, &handles, &raw);
  std::unique_ptr<rocksdb::DB> db(raw);
  auto close = [&] {
    if (!db) return;
    for (auto* handle : handles) db->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
    db->Close().PermitUncheckedError();
  };
  if (!s.ok()) {
    close();
    return open_failed(s, fmt::format("cannot open journal '{}'", path_.string()));
  }
  rocksdb::ColumnFamilyHandle* jobs = nullptr;
  rocksdb::ColumnFamilyHandle* global = nullptr;
  for (auto* handle : handles) {
    if (handle->GetName() == kJobsFamily) jobs = handle;
    if (handle->GetName() == kGlobalFamily) global = handle;
  }
  StateRecord state;
  std::string value;
  std::vector<std::string> lost;
  s = db->Get(rocksdb::ReadOptions(), db->DefaultColumnFamily(), kStateKey, &value);
  Status st = s.ok() || s.IsNotFound()
                  ? Status::ok()
                  : from_rocks(s, fmt::format("cannot read journal '{}'", path_.string()));
  if (st && s.ok()) st = parse_state(value, state);
  if (st) {
    live = scan_jobs(*db, jobs, lost);
    for (auto& line : shortfall(mark, state, live)) lost.push_back(std::move(line));
    for (auto& line : missing_newest(*db, jobs, global, mark, state, live)) {
      lost.push_back(std::move(line));
    }
  }
  close();
  if (!st) return st;
  if (!lost.empty()) return refuse_lost(path_, lost);
  return Status::ok();
}

bool JournalImpl::empty() {
  for (auto* handle : handles_) {
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions(), handle));
    it->SeekToFirst();
    if (it->Valid() || !it->status().ok()) return false;
  }
  return true;
}

Status JournalImpl::writable() const {
  if (options_.read_only) {
    return Status::error(fmt::format("journal '{}' is open read-only", path_.string()));
  }
  return Status::ok();
}

void JournalImpl::add_op(OpKind kind, const std::string& key, const std::string& value) {
  Op op{kind, static_cast<uint32_t>(key.size()), open_.arena.size(), value.size()};
  open_.arena += key;
  open_.arena += value;
  open_.ops.push_back(op);
  appended_.fetch_add(1, std::memory_order_relaxed);
}

Result<Seq> JournalImpl::append(capnp::MessageBuilder& message) {
  if (Status st = writable(); !st) return Error{st.message()};
  auto event = message.getRoot<schema::Event>().asReader();
  const Seq seq = next_seq_;
  const std::optional<JobId> job = event_job(event);
  Op op{job ? OpKind::kPutJob : OpKind::kPutGlobal, 0, open_.arena.size(), 0};
  open_.arena += job ? job_key(*job, seq) : global_key(seq);
  op.key_size = static_cast<uint32_t>(open_.arena.size() - op.offset);
  op.value_size = encode(message, open_.arena);
  if (op.value_size > kMaxRecordBytes) {
    open_.arena.resize(op.offset);
    return Error{fmt::format("event of {} bytes is larger than the journal's limit of {} bytes",
                             op.value_size, kMaxRecordBytes)};
  }
  open_.ops.push_back(op);
  ++next_seq_;
  if (job) {
    last_job_event_job_ = *job;
    last_job_event_seq_ = seq;
  } else {
    last_global_seq_ = seq;
  }
  appended_.fetch_add(1, std::memory_order_relaxed);
  switch (event.which()) {
    case schema::Event::JOB_SUBMITTED: {
      const JobId id = event.getJobSubmitted().getJob();
      max_job_ = std::max(max_job_, id);
      if (live_.empty() || live_.back() < id) {
        live_.push_back(id);
      } else if (!std::binary_search(live_.begin(), live_.end(), id)) {
        live_.insert(std::lower_bound(live_.begin(), live_.end(), id), id);
      }
      break;
    }
    case schema::Event::TASK_STARTED:
      max_worker_ = std::max(max_worker_, event.getTaskStarted().getWorker());
      break;
    case schema::Event::TASKS_STARTED:
      max_worker_ = std::max(max_worker_, event.getTasksStarted().getWorker());
      break;
    case schema::Event::TASK_TIMES:
      max_worker_ = std::max(max_worker_, event.getTaskTimes().getWorker());
      break;
    case schema::Event::WORKER_CONNECTED:
      max_worker_ = std::max(max_worker_, event.getWorkerConnected().getWorker());
      break;
    case schema::Event::WORKER_REATTACHED:
      max_worker_ = std::max(max_worker_, event.getWorkerReattached().getWorker());
      break;
    case schema::Event::SERVER_STARTED:
      server_uid_ =
          std::make_shared<const std::string>(event.getServerStarted().getServerUid().cStr());
      break;
    default:
      break;
  }
  return seq;
}

Status JournalImpl::prune(const IdSet& jobs) {
  if (Status st = writable(); !st) return st;
  const IdSet normalized = jobs.normalized();
  // The state record's count of live jobs goes down by the jobs that were there.
  std::vector<bool> gone(live_.size());
  for (const IdRange& range : normalized.ranges()) {
    for (auto it = std::lower_bound(live_.begin(), live_.end(), range.start);
         it != live_.end() && *it <= range.end; ++it) {
      if ((*it - range.start) % range.step == 0) gone[it - live_.begin()] = true;
    }
  }
  size_t kept = 0;
  for (size_t i = 0; i < live_.size(); ++i) {
    if (!gone[i]) live_[kept++] = live_[i];
  }
  live_.resize(kept);
  for (const IdRange& range : normalized.ranges()) {
    if (range.step == 1) {
      add_op(OpKind::kDeleteJobs, job_prefix(range.start), job_prefix_after(range.end));
    } else {
      for (uint64_t id = range.start; id <= range.end; id += range.step) {
        auto job = static_cast<JobId>(id);
        add_op(OpKind::kDeleteJobs, job_prefix(job), job_prefix_after(job));
      }
    }
  }
  return Status::ok();
}

Status JournalImpl::prune_global(Seq before) {
  if (Status st = writable(); !st) return st;
  if (before > 1) add_op(OpKind::kDeleteGlobal, global_key(0), global_key(before));
  global_pruned_before_ = std::max(global_pruned_before_, before);
  return Status::ok();
}

void JournalImpl::commit(Done done) {
  if (options_.read_only) {
    post(std::move(done), writable());
    return;
  }
  Group group = std::move(open_);
  open_ = Group{};
  group.done = std::move(done);
  group.last_seq = next_seq_ - 1;
  group.max_job = max_job_;
  group.max_worker = max_worker_;
  group.live_jobs = live_.size();
  group.last_job_event_job = last_job_event_job_;
  group.last_job_event_seq = last_job_event_seq_;
  group.last_global_seq = last_global_seq_;
  group.global_pruned_before = global_pruned_before_;
  group.server_uid = server_uid_;
  enqueue(std::move(group));
}

void JournalImpl::enqueue(Item item) {
  if (options_.read_only) {
    if (auto* task = std::get_if<Task>(&item)) post(std::move(task->done), writable());
    return;
  }
  {
    MutexLock lock(mu_);
    queue_.push_back(std::move(item));
  }
  write_cv_.notify_one();
}

void JournalImpl::post(Done done, const Status& status) {
  if (!done) return;
  if (options_.post) {
    options_.post([done = std::move(done), status] { done(status); });
  } else {
    done(status);
  }
}

void JournalImpl::write_loop() {
  std::deque<Item> items;
  for (;;) {
    {
      MutexLock lock(mu_);
      while (queue_.empty() && !stopping_writes_) mu_.wait(write_cv_);
      if (queue_.empty()) return;  // stopping, and everything committed is written
      items.swap(queue_);
    }
    // Consecutive groups share one batch; maintenance tasks keep their place in the order.
    size_t i = 0;
    while (i < items.size()) {
      if (auto* task = std::get_if<Task>(&items[i])) {
        {
          MutexLock lock(mu_);
          tasks_.push_back(std::move(*task));
        }
        maintenance_cv_.notify_one();
        ++i;
        continue;
      }
      size_t end = i;
      while (end < items.size() && std::holds_alternative<Group>(items[end])) ++end;
      write_groups(items, i, end);
      i = end;
    }
    items.clear();
  }
}

void JournalImpl::write_groups(std::deque<Item>& items, size_t begin, size_t end) {
  Status result = Status::ok();
  Task compaction{TaskKind::kCompactPruned, {}, {}, {}, {}};
  {
    batch_.Clear();
    for (size_t i = begin; i < end; ++i) {
      const Group& group = std::get<Group>(items[i]);
      for (const Op& op : group.ops) {
        rocksdb::Slice key(group.arena.data() + op.offset, op.key_size);
        rocksdb::Slice value(group.arena.data() + op.offset + op.key_size, op.value_size);
        rocksdb::Status s;
        switch (op.kind) {
          case OpKind::kPutJob:
            s = batch_.Put(jobs_, key, value);
            break;
          case OpKind::kPutGlobal:
            s = batch_.Put(global_, key, value);
            break;
          case OpKind::kDeleteJobs:
            s = batch_.DeleteRange(jobs_, key, value);
            cover(compaction.jobs_range, key, value);
            break;
          case OpKind::kDeleteGlobal:
            s = batch_.DeleteRange(global_, key, value);
            cover(compaction.global_range, key, value);
            break;
        }
        if (!s.ok() && result) result = from_rocks(s, "cannot build a journal batch");
      }
    }
    const Group& last = std::get<Group>(items[end - 1]);
    capnp::MallocMessageBuilder message(32);
    auto state = message.initRoot<schema::State>();
    state.setLastSeq(last.last_seq);
    state.setMaxJob(last.max_job);
    state.setMaxWorker(last.max_worker);
    state.setLiveJobs(last.live_jobs);
    state.setLastJobEventJob(last.last_job_event_job);
    state.setLastJobEventSeq(last.last_job_event_seq);
    state.setLastGlobalSeq(last.last_global_seq);
    state.setGlobalPrunedBefore(last.global_pruned_before);
    if (last.server_uid) state.setServerUid(*last.server_uid);
    if (result) result = from_rocks(batch_.Put(meta_, kStateKey, flat_bytes(message)), "batch");
    if (result && !upgraded_format_.empty()) {
      result = from_rocks(batch_.Put(meta_, kFormatKey, upgraded_format_), "batch");
    }
    if (result) {
      result = write_batch();
      if (!result) result = retry_write(result);
    }
    if (result) upgraded_format_.clear();
    if (result) {
      batches_.fetch_add(1, std::memory_order_relaxed);
      commits_.fetch_add(end - begin, std::memory_order_relaxed);
      bytes_written_.fetch_add(batch_.GetDataSize(), std::memory_order_relaxed);
      last_seq_.store(last.last_seq, std::memory_order_relaxed);
    } else {
      spdlog::error("journal '{}': {} group(s) not written: {}", path_.string(), end - begin,
                    result.message());
    }
  }
  for (size_t i = begin; i < end; ++i) post(std::move(std::get<Group>(items[i]).done), result);
  if (result && (compaction.jobs_range || compaction.global_range)) {
    {
      MutexLock lock(mu_);
      tasks_.push_back(std::move(compaction));
    }
    maintenance_cv_.notify_one();
  }
}

Status JournalImpl::write_batch() {
  rocksdb::WriteOptions write;
  write.sync = options_.sync;
  return from_rocks(db_->Write(write, &batch_), "journal write failed");
}

Status JournalImpl::retry_write(Status error) {
  constexpr auto kFirstDelay = std::chrono::milliseconds(100);
  constexpr auto kMaxDelay = std::chrono::milliseconds(5000);
  const auto since = std::chrono::steady_clock::now();
  write_failures_.fetch_add(1, std::memory_order_relaxed);
  {
    MutexLock lock(mu_);
    status_ = error;
  }
  post(options_.health, error);
  auto delay = kFirstDelay;
  for (int attempt = 1;; ++attempt) {
    {
      MutexLock lock(mu_);
      if (stopping_writes_) {
        return Status::error(
            fmt::format("{} (the journal closed while retrying)", error.message()));
      }
    }
    // One line per backoff step: at most one every 5 s while the disk stays full.
    spdlog::error("journal '{}': {}; retrying in {} ms (attempt {})", path_.string(),
                  error.message(), delay.count(), attempt);
    const auto deadline = std::chrono::steady_clock::now() + delay;
    {
      MutexLock lock(mu_);
      while (!stopping_writes_ && std::chrono::steady_clock::now() < deadline) {
        mu_.wait_until(write_cv_, deadline);
      }
    }
    delay = std::min<std::chrono::milliseconds>(delay * 2, kMaxDelay);
    // After a failed WAL write or sync RocksDB refuses writes (a background error). Its
    // DB::Resume() is no way out here: RocksDB 7.8 declares a failed sync fatal, and resuming
    // after a failed WAL append trips an assertion of its own on the damaged WAL writer. A
    // reopen recovers the WAL up to the torn record (point-in-time recovery), and its flush puts
    // the tables past that WAL, so that no later write follows the torn record in a WAL.
    if (Status reopened = reopen(); !reopened) {
      error = reopened;
      write_failures_.fetch_add(1, std::memory_order_relaxed);
      MutexLock lock(mu_);
      status_ = error;
      continue;
    }
    // The same batch again: its records are keyed by seq, so one that reached the disk before
    // the failure is overwritten by itself.
    if (Status written = write_batch(); !written) {
      error = written;
      write_failures_.fetch_add(1, std::memory_order_relaxed);
      MutexLock lock(mu_);
      status_ = error;
      continue;
    }
    {
      MutexLock lock(mu_);
      status_ = Status::ok();
    }
    spdlog::info("journal '{}' writes again after {} failed attempt(s) in {} ms", path_.string(),
                 attempt,
                 std::chrono::duration_cast<std::chrono::milliseconds>(
                     std::chrono::steady_clock::now() - since)
                     .count());
    post(options_.health, Status::ok());
    return Status::ok();
  }
}

void JournalImpl::maintenance_loop() {
  for (;;) {
    Task task;
    bool closed = false;  // stopping while a reopen left the database closed
    {
      MutexLock lock(mu_);
      while ((tasks_.empty() || paused_) && !stopping_maintenance_) mu_.wait(maintenance_cv_);
      if (tasks_.empty()) return;
      task = std::move(tasks_.front());
      tasks_.pop_front();
      closed = paused_;
      maintaining_ = !closed;
    }
    if (task.kind == TaskKind::kMeasure) {
      // A directory walk: harmless while a reopen runs, so it does not wait for one.
      const uint64_t size = size_on_disk();
      {
        MutexLock lock(mu_);
        maintaining_ = false;
      }
      write_cv_.notify_all();
      if (options_.post) {
        options_.post([done = std::move(task.measured), size] { done(size); });
      } else {
        task.measured(size);
      }
      continue;
    }
    Status result =
        closed ? Status::error("the journal closed while its database could not be reopened")
               : run(task);
    {
      MutexLock lock(mu_);
      maintaining_ = false;
    }
    write_cv_.notify_all();  // a reopen may wait for this task
    if (!result) spdlog::warn("journal '{}': {}", path_.string(), result.message());
    post(std::move(task.done), result);
  }
}

Status JournalImpl::reopen() {
  {
    MutexLock lock(mu_);
    paused_ = true;
    while (maintaining_) mu_.wait(write_cv_);
  }
  if (db_) {
    for (auto* handle : handles_) db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
    handles_.clear();
    meta_ = jobs_ = global_ = nullptr;
    // Closing a database in a background-error state reports that error again: nothing new.
    db_->Close().PermitUncheckedError();
    db_.reset();
  }
  rocksdb::DB* db = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_options_, path_.string(), families_, &handles_, &db);
  if (db) db_.reset(db);
  if (!s.ok()) {
    if (db_) {
      for (auto* handle : handles_) db_->DestroyColumnFamilyHandle(handle).PermitUncheckedError();
      db_->Close().PermitUncheckedError();
      db_.reset();
    }
    handles_.clear();
    return from_rocks(s, "journal write failed, and the journal cannot be reopened");
  }
  for (auto* handle : handles_) {
    if (handle->GetName() == rocksdb::kDefaultColumnFamilyName) meta_ = handle;
    if (handle->GetName() == kJobsFamily) jobs_ = handle;
    if (handle->GetName() == kGlobalFamily) global_ = handle;
  }
  if (Status st = flush_all(); !st) return st;  // still paused: the next attempt reopens again
  {
    MutexLock lock(mu_);
    paused_ = false;
  }
  maintenance_cv_.notify_one();
  spdlog::debug("journal '{}' reopened after a failed write", path_.string());
  return Status::ok();
}

Status JournalImpl::flush_all() {
  rocksdb::FlushOptions flush;
  flush.allow_write_stall = true;
  return from_rocks(db_->Flush(flush, {meta_, jobs_, global_}), "journal flush failed");
}

Status JournalImpl::run(const Task& task) {
  switch (task.kind) {
    case TaskKind::kFlush:
      return flush_all();
    case TaskKind::kMeasure:  // answered by maintenance_loop()
      return Status::ok();
    case TaskKind::kCompact:
    case TaskKind::kCompactPruned: {
      // Flushing every family first lets the WAL files that still hold pruned records go.
      if (Status st = flush_all(); !st) return st;
      rocksdb::CompactRangeOptions compact;
      compact.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForceOptimized;
      compact.allow_write_stall = true;
      auto range = [&](rocksdb::ColumnFamilyHandle* family,
                       const std::optional<std::pair<std::string, std::string>>& keys) {
        if (task.kind == TaskKind::kCompact)
          return db_->CompactRange(compact, family, nullptr, nullptr);
        if (!keys) return rocksdb::Status::OK();
        rocksdb::Slice begin(keys->first), end(keys->second);
        return db_->CompactRange(compact, family, &begin, &end);
      };
      if (Status st = from_rocks(range(jobs_, task.jobs_range), "journal compaction failed"); !st) {
        return st;
      }
      if (Status st = from_rocks(range(global_, task.global_range), "journal compaction failed");
          !st) {
        return st;
      }
      if (task.kind == TaskKind::kCompact) {
        if (Status st = from_rocks(range(meta_, {}), "journal compaction failed"); !st) return st;
      }
      compactions_.fetch_add(1, std::memory_order_relaxed);
      return Status::ok();
    }
  }
  return Status::ok();
}

Status JournalImpl::status() const {
  MutexLock lock(mu_);
  return status_;
}

JournalStats JournalImpl::stats() const {
  JournalStats s;
  s.appended = appended_.load(std::memory_order_relaxed);
  s.commits = commits_.load(std::memory_order_relaxed);
  s.batches = batches_.load(std::memory_order_relaxed);
  s.bytes_written = bytes_written_.load(std::memory_order_relaxed);
  s.compactions = compactions_.load(std::memory_order_relaxed);
  s.write_failures = write_failures_.load(std::memory_order_relaxed);
  s.last_seq = last_seq_.load(std::memory_order_relaxed);
  return s;
}

void JournalImpl::measure(std::function<void(uint64_t)> done) {
  if (options_.read_only) {
    // No maintenance thread: measured here, as the caller reads the journal offline.
    const uint64_t size = size_on_disk();
    if (options_.post) {
      options_.post([done = std::move(done), size] { done(size); });
    } else {
      done(size);
    }
    return;
  }
  Task task{TaskKind::kMeasure, {}, {}, {}, std::move(done)};
  enqueue(std::move(task));
}

uint64_t JournalImpl::size_on_disk() const {
  uint64_t total = 0;
  std::error_code ec;
  for (fs::recursive_directory_iterator it(path_, ec), end; !ec && it != end; it.increment(ec)) {
    std::error_code size_ec;  // files come and go while RocksDB works
    if (it->is_regular_file(size_ec)) {
      uint64_t size = it->file_size(size_ec);
      if (!size_ec) total += size;
    }
  }
  return total;
}

Result<ReplayStats> JournalImpl::replay(const ReplayOptions& options, const ReplayFn& fn) {
  const auto start = std::chrono::steady_clock::now();
  rocksdb::ReadOptions read;
  read.fill_cache = false;  // one pass over everything: keep the cache for the server
  read.readahead_size = 2u << 20;
  // One snapshot for both families (a secondary instance is a snapshot already).
  std::shared_ptr<const rocksdb::Snapshot> snapshot;
  if (!options_.read_only) {
    snapshot.reset(db_->GetSnapshot(),
                   [db = db_.get()](const rocksdb::Snapshot* s) { db->ReleaseSnapshot(s); });
    read.snapshot = snapshot.get();
  }
  auto stats = options.job
                   ? replay_job_events(*db_, jobs_, *options.job, options.from_seq, read, fn)
                   : replay_all_events(*db_, jobs_, global_, options.from_seq, read, fn);
  if (stats) {
    stats->elapsed = std::chrono::duration_cast<std::chrono::microseconds>(
        std::chrono::steady_clock::now() - start);
  }
  return stats;
}

}  // namespace

std::string JournalImpl::format_bytes(int64_t created) {
  capnp::MallocMessageBuilder message(32);
  auto format = message.initRoot<schema::Format>();
  format.setMagic(schema::FORMAT_MAGIC.get());
  format.setMajor(schema::FORMAT_MAJOR);
  format.setMinor(schema::FORMAT_MINOR);
  format.setCreated(created);
  return flat_bytes(message);
}

Status JournalImpl::write_format(int64_t created) {
  rocksdb::WriteOptions write;
  write.sync = options_.sync;
  rocksdb::Status s = db_->Put(write, meta_, kFormatKey, format_bytes(created));
  if (!s.ok()) return from_rocks(s, fmt::format("cannot write journal '{}'", path_.string()));
  recovery_.format_minor = schema::FORMAT_MINOR;
  return Status::ok();
}

Result<std::unique_ptr<Journal>> Journal::open(const fs::path& path, Options options) {
  auto journal = std::make_unique<JournalImpl>(path, std::move(options));
  if (Status st = journal->open(); !st) return Error{st.message()};
  return std::unique_ptr<Journal>(std::move(journal));
}

}  // namespace hq::journal
