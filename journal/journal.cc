#include "journal/journal.h"

#include <stdlib.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

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
  std::shared_ptr<const std::string> server_uid;
};

enum class TaskKind : uint8_t { kFlush, kCompact, kCompactPruned };

// Work for the maintenance thread.
struct Task {
  TaskKind kind = TaskKind::kFlush;
  Done done;  // may be empty
  // kCompactPruned: the key ranges to compact, [begin, end).
  std::optional<std::pair<std::string, std::string>> jobs_range;
  std::optional<std::pair<std::string, std::string>> global_range;
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

  const RecoveryInfo& recovery() const override { return recovery_; }
  Result<Seq> append(capnp::MessageBuilder& event) override;
  Status prune(const IdSet& jobs) override;
  Status prune_global(Seq before) override;
  void commit(Done done) override;
  void flush(Done done) override { enqueue(Task{TaskKind::kFlush, std::move(done), {}, {}}); }
  void compact(Done done) override { enqueue(Task{TaskKind::kCompact, std::move(done), {}, {}}); }
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
  // No key in any family.
  bool empty();
  void add_op(OpKind kind, const std::string& key, const std::string& value);

  const fs::path path_;
  const Options options_;
  fs::path secondary_dir_;  // read-only: the secondary instance's own directory
  std::shared_ptr<RocksLogger> logger_;
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

  rocksdb::DBOptions db_options;
  logger_ = std::make_shared<RocksLogger>();
  db_options.info_log = logger_;
  if (options_.env) db_options.env = options_.env;
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
  // Flushes write plain tables, so that they keep up with bursts of events; the bottom level,
  // where the bulk of the journal settles, is compressed by background compactions (LZ4: cores
  // are scarcer than disk).
  family_options.compression = rocksdb::kNoCompression;
  family_options.bottommost_compression =
      pick(supported, {rocksdb::kLZ4Compression, rocksdb::kSnappyCompression});
  family_options.level_compaction_dynamic_level_bytes = true;
  family_options.write_buffer_size = 16u << 20;
  family_options.max_write_buffer_number = 4;  // absorbs bursts while a flush runs

  std::vector<std::string> names;
  if (exists) {
    auto s = rocksdb::DB::ListColumnFamilies(db_options, path_.string(), &names);
    if (!s.ok()) {
      return from_rocks(s, fmt::format("cannot read journal '{}'", path_.string()));
    }
  } else {
    names.push_back(rocksdb::kDefaultColumnFamilyName);
  }
  if (!options_.read_only) {
    for (const char* name : {kJobsFamily, kGlobalFamily}) {
      if (std::find(names.begin(), names.end(), name) == names.end()) names.emplace_back(name);
    }
  }
  std::vector<rocksdb::ColumnFamilyDescriptor> families;
  for (const auto& name : names) families.emplace_back(name, family_options);
  db_options_ = db_options;  // for reopen()
  families_ = families;

  rocksdb::DB* db = nullptr;
  rocksdb::Status s;
  if (!options_.read_only) {
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
    return from_rocks(s, fmt::format("cannot open journal '{}'", path_.string()));
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
    capnp::MallocMessageBuilder message(32);
    auto format = message.initRoot<schema::Format>();
    format.setMagic(schema::FORMAT_MAGIC.get());
    format.setMajor(schema::FORMAT_MAJOR);
    format.setMinor(schema::FORMAT_MINOR);
    format.setCreated(unix_millis_now());
    rocksdb::WriteOptions write;
    write.sync = options_.sync;
    s = db_->Put(write, meta_, kFormatKey, flat_bytes(message));
    if (!s.ok()) return from_rocks(s, fmt::format("cannot create journal '{}'", path_.string()));
    recovery_.format_minor = schema::FORMAT_MINOR;
  } else if (!s.ok()) {
    return from_rocks(s, fmt::format("cannot read journal '{}'", path_.string()));
  } else {
    std::string magic;
    uint16_t major = 0, minor = 0;
    Status read = read_meta(value, "format", [&](capnp::MessageReader& reader) {
      auto format = reader.getRoot<schema::Format>();
      magic = format.getMagic().cStr();
      major = format.getMajor();
      minor = format.getMinor();
    });
    if (!read || magic != schema::FORMAT_MAGIC.get().cStr()) {
      return Status::error(fmt::format("'{}' is not an hq journal (bad format record{})",
                                       path_.string(), read ? "" : ": " + read.message()));
    }
    if (major != schema::FORMAT_MAJOR) {
      return Status::error(fmt::format(
          "journal '{}' has format version {}.{}, but this hq reads version {}.x only: use the "
          "hq release that wrote it",
          path_.string(), major, minor, schema::FORMAT_MAJOR));
    }
    recovery_.format_minor = minor;
  }

  // The state record: where numbering continues.
  s = db_->Get(rocksdb::ReadOptions(), meta_, kStateKey, &value);
  if (s.ok()) {
    Status read = read_meta(value, "state", [&](capnp::MessageReader& reader) {
      auto state = reader.getRoot<schema::State>();
      recovery_.last_seq = state.getLastSeq();
      recovery_.max_job_id = state.getMaxJob();
      recovery_.max_worker_id = state.getMaxWorker();
      recovery_.server_uid = state.getServerUid().cStr();
    });
    if (!read)
      return Status::error(fmt::format("journal '{}': {}", path_.string(), read.message()));
  } else if (!s.IsNotFound()) {
    return from_rocks(s, fmt::format("cannot read journal '{}'", path_.string()));
  }
  recovery_.damage = logger_->take_damage();
  for (auto& line : recovery_.damage) {
    line += fmt::format(" (recovered through seq {})", recovery_.last_seq);
  }

  next_seq_ = recovery_.last_seq + 1;
  max_job_ = recovery_.max_job_id;
  max_worker_ = recovery_.max_worker_id;
  server_uid_ = std::make_shared<const std::string>(recovery_.server_uid);
  last_seq_ = recovery_.last_seq;
  if (!options_.read_only) {
    writer_ = std::thread([this] { write_loop(); });
    maintainer_ = std::thread([this] { maintenance_loop(); });
  }
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
  appended_.fetch_add(1, std::memory_order_relaxed);
  switch (event.which()) {
    case schema::Event::JOB_SUBMITTED:
      max_job_ = std::max(max_job_, event.getJobSubmitted().getJob());
      break;
    case schema::Event::TASK_STARTED:
      max_worker_ = std::max(max_worker_, event.getTaskStarted().getWorker());
      break;
    case schema::Event::TASKS_STARTED:
      max_worker_ = std::max(max_worker_, event.getTasksStarted().getWorker());
      break;
    case schema::Event::WORKER_CONNECTED:
      max_worker_ = std::max(max_worker_, event.getWorkerConnected().getWorker());
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
  Task compaction{TaskKind::kCompactPruned, {}, {}, {}};
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
    if (last.server_uid) state.setServerUid(*last.server_uid);
    if (result) result = from_rocks(batch_.Put(meta_, kStateKey, flat_bytes(message)), "batch");
    if (result) {
      result = write_batch();
      if (!result) result = retry_write(result);
    }
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

Result<std::unique_ptr<Journal>> Journal::open(const fs::path& path, Options options) {
  auto journal = std::make_unique<JournalImpl>(path, std::move(options));
  if (Status st = journal->open(); !st) return Error{st.message()};
  return std::unique_ptr<Journal>(std::move(journal));
}

}  // namespace hq::journal
