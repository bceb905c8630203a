// StreamReader: a stream directory as one stream, through per-file indexes.

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <map>
#include <random>
#include <tuple>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "output-stream/crc32c.h"
#include "output-stream/format.h"
#include "output-stream/index.h"
#include "output-stream/stream.h"

namespace hq::stream {
namespace {

// A read-only mapping of a whole file, at the size it had when opened.
class MappedFile {
 public:
  static Result<MappedFile> open(const fs::path& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return Error{fmt::format("cannot open '{}': {}", path.string(), std::strerror(errno))};
    }
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      int err = errno;
      ::close(fd);
      return Error{fmt::format("cannot stat '{}': {}", path.string(), std::strerror(err))};
    }
    MappedFile m;
    m.size_ = static_cast<size_t>(st.st_size);
    if (m.size_ > 0) {
      void* p = ::mmap(nullptr, m.size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        int err = errno;
        ::close(fd);
        return Error{fmt::format("cannot map '{}': {}", path.string(), std::strerror(err))};
      }
      m.data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
    return m;
  }
  MappedFile() = default;
  MappedFile(MappedFile&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  MappedFile& operator=(MappedFile&& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ~MappedFile() {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
  }
  std::span<const uint8_t> bytes() const { return {data_, size_}; }

  // Tells the kernel how [offset, end) will be read: MADV_RANDOM for lookups through an index
  // (readahead would load megabytes to serve a few pages), MADV_SEQUENTIAL for scans.
  void advise(int advice, uint64_t offset = 0) const {
    const uint64_t page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
    const uint64_t start = offset / page * page;
    if (data_ && start < size_) {
      ::madvise(const_cast<uint8_t*>(data_) + start, size_ - start, advice);
    }
  }

 private:
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Writes a sidecar next to its stream file: to a temporary name, then renamed over, so that a
// reader never sees half of one.
Status save_sidecar(const fs::path& path, const std::vector<uint8_t>& bytes) {
  std::random_device random;
  fs::path tmp = path;
  tmp += fmt::format(".tmp-{}-{:08x}", ::getpid(), random());
  // Private like the stream files it indexes (it tells which tasks wrote how much).
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return Status::error(std::strerror(errno));
  if (::fchmod(fd, 0600) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    return Status::error(std::strerror(err));
  }
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int err = n < 0 ? errno : EIO;
      ::close(fd);
      ::unlink(tmp.c_str());
      return Status::error(std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return Status::error(std::strerror(err));
  }
  return Status::ok();
}

// One stream file: its bytes, header, index parts and damage. Not movable once its parts point
// into `tail`; held by unique_ptr.
struct StreamFile {
  std::string name;
  fs::path path;  // empty for files given as bytes
  MappedFile map;
  MappedFile index_map;
  std::span<const uint8_t> bytes;
  std::span<const uint8_t> index_bytes;
  HeaderParse header;
  uint64_t records = 0;
  BuiltIndex tail;
  std::vector<IndexView> parts;  // the sidecar's view, then the tail's, in file order
};

// Loads the sidecar (when valid), scans what it does not cover, and saves a new sidecar when
// the scan was long enough.
void index_file(StreamFile& f, const ReaderOptions& options, ReadStats& stats,
                std::vector<Damage>& damage) {
  uint64_t covered = f.header.end;
  if (!f.index_bytes.empty()) {
    auto parsed = parse_index(f.index_bytes, f.header.header.file_id, f.header.end, f.bytes.size());
    if (parsed) {
      covered = parsed->covered;
      f.records = parsed->records;
      f.parts.push_back(parsed->view);
    } else {
      spdlog::debug("ignoring index of '{}': {}", f.name, parsed.message());
    }
  }
  IndexBuilder builder;
  f.map.advise(MADV_SEQUENTIAL, covered);
  ScanResult scan = scan_records(f.bytes, covered, builder, stats.records_decoded);
  f.map.advise(MADV_RANDOM);
  f.records += scan.records;
  f.tail = std::move(builder).finish();
  if (!f.tail.tasks.empty()) f.parts.push_back(f.tail.view());
  if (scan.damage) damage.push_back({f.name, scan.end, *scan.damage});

  const uint64_t scanned = scan.end - covered;
  if (!options.save_index || f.path.empty() || scanned == 0 ||
      scanned < options.save_index_min_bytes) {
    return;
  }
  IndexBuilder merged;
  for (const IndexView& part : f.parts) merged.add(part);
  BuiltIndex whole = std::move(merged).finish();
  fs::path sidecar_path = stream_index_path(f.path);
  Status saved =
      save_sidecar(sidecar_path, encode_index(whole, f.header.header.file_id, scan.end, f.records));
  if (!saved) spdlog::debug("cannot save index '{}': {}", sidecar_path.string(), saved.message());
}

// The entries of one (job, task) across all parts, sorted by instance, then part.
struct GroupEntry {
  uint32_t part = 0;
  TaskEntry entry;
};

TaskInfo make_info(const std::vector<GroupEntry>& group) {
  TaskInfo t;
  const TaskEntry& last = group.back().entry;
  t.job = last.job;
  t.task = last.task;
  t.instance = last.instance;
  std::optional<InstanceId> counted;
  for (const GroupEntry& g : group) {
    const TaskEntry& e = g.entry;
    if (e.instance != t.instance) {
      if (counted != e.instance) ++t.superseded;
      counted = e.instance;
      for (size_t c = 0; c < kChannels; ++c) t.superseded_bytes[c] += e.bytes[c];
      continue;
    }
    if ((e.flags & kEntryStarted) && !t.started) {
      t.started = true;
      t.start_ms = e.start_ms;
    }
    if (e.flags & kEntryEnded) {
      t.finished = true;
      t.ok = e.flags & kEntryOk;
      t.exit_code = e.exit_code;
      t.end_ms = e.end_ms;
    }
    for (size_t c = 0; c < kChannels; ++c) t.bytes[c] += e.bytes[c];
    t.chunks += e.chunk_count;
  }
  return t;
}

}  // namespace

struct StreamReader::Impl {
  std::string server_uid;
  std::vector<std::unique_ptr<StreamFile>> files;
  std::vector<Damage> damage;
  mutable ReadStats stats;

  struct Part {
    uint32_t file;
    IndexView view;
  };
  std::vector<Part> parts;  // every file's parts, files in order

  static Result<std::unique_ptr<Impl>> build(std::vector<std::unique_ptr<StreamFile>> candidates,
                                             const std::string& where,
                                             const ReaderOptions& options);

  // Calls f(group) for each (job, task) of `job` (of all jobs when empty), in (job, task) order,
  // with the group's entries of every part: a k-way merge of the parts' sorted entries.
  template <typename F>
  void for_each_group(std::optional<JobId> job, F&& f) const {
    struct Cursor {
      size_t pos, end;
      uint32_t part;
      TaskEntry head;
    };
    auto later = [](const Cursor& a, const Cursor& b) {
      return std::tie(a.head.job, a.head.task, a.head.instance, a.part) >
             std::tie(b.head.job, b.head.task, b.head.instance, b.part);
    };
    std::vector<Cursor> heap;
    for (uint32_t p = 0; p < parts.size(); ++p) {
      const IndexView& v = parts[p].view;
      auto [first, last] = job ? v.find(*job) : std::pair<size_t, size_t>{0, v.task_count()};
      if (first < last) heap.push_back({first, last, p, v.task(first)});
    }
    std::make_heap(heap.begin(), heap.end(), later);
    std::vector<GroupEntry> group;
    while (!heap.empty()) {
      const JobId j = heap.front().head.job;
      const TaskId t = heap.front().head.task;
      group.clear();
      while (!heap.empty() && heap.front().head.job == j && heap.front().head.task == t) {
        std::pop_heap(heap.begin(), heap.end(), later);
        Cursor& c = heap.back();
        group.push_back({c.part, c.head});
        if (++c.pos < c.end) {
          c.head = parts[c.part].view.task(c.pos);
          std::push_heap(heap.begin(), heap.end(), later);
        } else {
          heap.pop_back();
        }
      }
      f(group);
    }
  }

  std::vector<GroupEntry> group_of(JobId job, TaskId task) const {
    std::vector<GroupEntry> group;
    for (uint32_t p = 0; p < parts.size(); ++p) {
      auto [first, last] = parts[p].view.find(job, task);
      for (size_t i = first; i < last; ++i) group.push_back({p, parts[p].view.task(i)});
    }
    std::stable_sort(group.begin(), group.end(), [](const GroupEntry& a, const GroupEntry& b) {
      return a.entry.instance < b.entry.instance;
    });
    return group;
  }

  // The payload of a chunk, after checking that the record there is the one the index names.
  Result<std::string_view> payload(uint32_t part, const TaskKey& key, const ChunkEntry& c) const {
    const StreamFile& f = *files[parts[part].file];
    RecordParse r = parse_record(f.bytes, c.record_offset);
    ++stats.records_decoded;
    if (r.status != ParseStatus::kOk || r.record.kind != RecordKind::kData || r.record.key != key ||
        static_cast<uint8_t>(r.record.channel) != c.channel || r.record.size != c.size) {
      return Error{fmt::format(
          "stream file '{}': the record at byte {} is not the one its index names (delete '{}' "
          "to rebuild the index)",
          f.name, c.record_offset, stream_index_path(f.name).string())};
    }
    auto bytes = f.bytes.subspan(r.payload_offset, r.record.size);
    stats.payload_bytes += bytes.size();
    if (crc32c(bytes) != r.record.crc) {
      return Error{
          fmt::format("stream file '{}': checksum mismatch in the output of {}.{} at byte "
                      "{} (the file is damaged)",
                      f.name, key.job, key.task, r.payload_offset)};
    }
    return std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }
};

Result<std::unique_ptr<StreamReader::Impl>> StreamReader::Impl::build(
    std::vector<std::unique_ptr<StreamFile>> candidates, const std::string& where,
    const ReaderOptions& options) {
  auto impl = std::make_unique<Impl>();
  std::map<std::string, size_t> uids;  // UID -> files
  for (auto& f : candidates) {
    f->header = parse_file_header(f->bytes);
    if (is_fatal_header(f->header)) {
      return Error{fmt::format("stream file '{}': {}", f->name, f->header.reason)};
    }
    if (f->header.status == ParseStatus::kOk) ++uids[f->header.header.server_uid];
  }
  if (options.server_uid) {
    if (!uids.count(*options.server_uid)) {
      std::vector<std::string> found;
      for (const auto& [uid, n] : uids) found.push_back("'" + uid + "'");
      return Error{fmt::format("{} holds no stream of server '{}' (found: {})", where,
                               *options.server_uid,
                               found.empty() ? "none" : fmt::format("{}", fmt::join(found, ", ")))};
    }
    impl->server_uid = *options.server_uid;
  } else if (uids.size() > 1) {
    std::vector<std::string> found;
    for (const auto& [uid, n] : uids) found.push_back(fmt::format("'{}' ({} files)", uid, n));
    return Error{
        fmt::format("{} holds the streams of {} servers: {}; choose one with "
                    "--server-uid",
                    where, uids.size(), fmt::join(found, ", "))};
  } else if (uids.size() == 1) {
    impl->server_uid = uids.begin()->first;
  }

  for (auto& f : candidates) {
    if (f->header.status != ParseStatus::kOk) {
      // Nothing of this file is readable; it belongs to no known server.
      impl->damage.push_back({f->name, 0, f->header.reason});
      impl->files.push_back(std::move(f));
      continue;
    }
    if (f->header.header.server_uid != impl->server_uid) continue;
    index_file(*f, options, impl->stats, impl->damage);
    const auto index = static_cast<uint32_t>(impl->files.size());
    for (const IndexView& v : f->parts) impl->parts.push_back({index, v});
    impl->files.push_back(std::move(f));
  }
  return impl;
}

StreamReader::StreamReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
StreamReader::~StreamReader() = default;

Result<std::unique_ptr<StreamReader>> StreamReader::open(const fs::path& dir,
                                                         const ReaderOptions& options) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    return Error{fmt::format("'{}' is not a stream directory (no such directory)", dir.string())};
  }
  std::vector<fs::path> paths;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    if (is_stream_file_name(it->path()) && it->is_regular_file(ec)) paths.push_back(it->path());
  }
  if (ec)
    return Error{fmt::format("cannot read stream directory '{}': {}", dir.string(), ec.message())};
  std::sort(paths.begin(), paths.end());

  std::vector<std::unique_ptr<StreamFile>> files;
  for (const fs::path& path : paths) {
    auto f = std::make_unique<StreamFile>();
    f->path = path;
    f->name = path.string();
    auto map = MappedFile::open(path);
    if (!map) return map.error();
    f->map = std::move(*map);
    f->map.advise(MADV_RANDOM);
    f->bytes = f->map.bytes();
    fs::path index_path = stream_index_path(path);
    if (fs::exists(index_path, ec)) {
      if (auto index = MappedFile::open(index_path)) {
        f->index_map = std::move(*index);
        f->index_map.advise(MADV_RANDOM);
        f->index_bytes = f->index_map.bytes();
      }
    }
    files.push_back(std::move(f));
  }
  auto impl = Impl::build(std::move(files), fmt::format("'{}'", dir.string()), options);
  if (!impl) return impl.error();
  return std::unique_ptr<StreamReader>(new StreamReader(std::move(*impl)));
}

Result<std::unique_ptr<StreamReader>> StreamReader::open_bytes(std::vector<StreamBytes> given,
                                                               const ReaderOptions& options) {
  std::vector<std::unique_ptr<StreamFile>> files;
  for (StreamBytes& g : given) {
    auto f = std::make_unique<StreamFile>();
    f->name = std::move(g.name);
    f->bytes = g.bytes;
    f->index_bytes = g.index;
    files.push_back(std::move(f));
  }
  auto impl = Impl::build(std::move(files), "the stream", options);
  if (!impl) return impl.error();
  return std::unique_ptr<StreamReader>(new StreamReader(std::move(*impl)));
}

const std::string& StreamReader::server_uid() const { return impl_->server_uid; }

const std::vector<Damage>& StreamReader::damage() const { return impl_->damage; }

Summary StreamReader::summary() const {
  Summary s;
  s.server_uid = impl_->server_uid;
  s.files = impl_->files.size();
  for (const auto& f : impl_->files) {
    s.file_bytes += f->bytes.size();
    s.records += f->records;
  }
  std::optional<JobId> job;
  impl_->for_each_group(std::nullopt, [&](const std::vector<GroupEntry>& group) {
    TaskInfo t = make_info(group);
    if (job != t.job) ++s.jobs;
    job = t.job;
    ++s.tasks;
    if (t.finished) {
      ++s.finished;
    } else {
      ++s.open;
    }
    for (size_t c = 0; c < kChannels; ++c) s.bytes[c] += t.bytes[c];
    s.superseded_instances += t.superseded;
    for (size_t c = 0; c < kChannels; ++c) s.superseded_bytes[c] += t.superseded_bytes[c];
  });
  s.damage = impl_->damage;
  return s;
}

std::vector<JobInfo> StreamReader::jobs() const {
  std::vector<JobInfo> jobs;
  impl_->for_each_group(std::nullopt, [&](const std::vector<GroupEntry>& group) {
    TaskInfo t = make_info(group);
    if (jobs.empty() || jobs.back().id != t.job) jobs.push_back(JobInfo{.id = t.job});
    JobInfo& j = jobs.back();
    ++j.tasks;
    if (t.finished) ++j.finished;
    for (size_t c = 0; c < kChannels; ++c) j.bytes[c] += t.bytes[c];
  });
  return jobs;
}

std::vector<TaskInfo> StreamReader::tasks(JobId job) const {
  std::vector<TaskInfo> tasks;
  impl_->for_each_group(
      job, [&](const std::vector<GroupEntry>& group) { tasks.push_back(make_info(group)); });
  return tasks;
}

std::optional<TaskInfo> StreamReader::task(JobId job, TaskId task) const {
  auto group = impl_->group_of(job, task);
  if (group.empty()) return std::nullopt;
  return make_info(group);
}

Status StreamReader::read(const TaskInfo& task, Channel channel,
                          const std::function<Status(std::string_view)>& sink) const {
  const TaskKey key{task.job, task.task, task.instance};
  for (const GroupEntry& g : impl_->group_of(task.job, task.task)) {
    if (g.entry.instance != task.instance) continue;
    const IndexView& view = impl_->parts[g.part].view;
    if (!view.chunks_valid(g.entry)) {
      const auto& f = *impl_->files[impl_->parts[g.part].file];
      return Status::error(fmt::format("the index of '{}' is damaged (delete '{}' to rebuild it)",
                                       f.name, stream_index_path(f.name).string()));
    }
    for (uint64_t i = g.entry.first_chunk; i < g.entry.first_chunk + g.entry.chunk_count; ++i) {
      ChunkEntry c = view.chunk(i);
      if (c.channel != static_cast<uint8_t>(channel)) continue;
      auto bytes = impl_->payload(g.part, key, c);
      if (!bytes) return bytes.status();
      if (auto s = sink(*bytes); !s) return s;
    }
  }
  return Status::ok();
}

Status StreamReader::for_each_chunk(std::optional<JobId> job, std::optional<Channel> channel,
                                    const std::function<Status(const Chunk&)>& f) const {
  struct Ref {
    ChunkEntry chunk;
    TaskKey key;
    uint32_t part;
    bool last;
  };
  // Per file, the chunks of last instances in file order.
  std::vector<std::vector<Ref>> per_file(impl_->files.size());
  impl_->for_each_group(job, [&](const std::vector<GroupEntry>& group) {
    const InstanceId instance = group.back().entry.instance;
    std::optional<std::pair<uint32_t, size_t>> last[kChannels];  // (file, position)
    for (const GroupEntry& g : group) {
      if (g.entry.instance != instance) continue;
      const IndexView& view = impl_->parts[g.part].view;
      if (!view.chunks_valid(g.entry)) continue;  // read() reports it
      const uint32_t file = impl_->parts[g.part].file;
      auto& refs = per_file[file];
      for (uint64_t i = g.entry.first_chunk; i < g.entry.first_chunk + g.entry.chunk_count; ++i) {
        ChunkEntry c = view.chunk(i);
        if (c.channel >= kChannels || (channel && c.channel != static_cast<uint8_t>(*channel))) {
          continue;
        }
        last[c.channel] = {file, refs.size()};
        refs.push_back({c, g.entry.key(), g.part, false});
      }
    }
    for (const auto& l : last) {
      if (l) per_file[l->first][l->second].last = true;
    }
  });
  for (auto& refs : per_file) {
    std::stable_sort(refs.begin(), refs.end(), [](const Ref& a, const Ref& b) {
      return a.chunk.record_offset < b.chunk.record_offset;
    });
  }
  // Merge the files by time; ties go to the earlier file.
  std::vector<size_t> next(per_file.size(), 0);
  auto later = [&](size_t a, size_t b) {
    const int64_t ta = per_file[a][next[a]].chunk.time_ms;
    const int64_t tb = per_file[b][next[b]].chunk.time_ms;
    return ta != tb ? ta > tb : a > b;
  };
  std::vector<size_t> heap;
  for (size_t i = 0; i < per_file.size(); ++i) {
    if (!per_file[i].empty()) heap.push_back(i);
  }
  std::make_heap(heap.begin(), heap.end(), later);
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), later);
    const size_t file = heap.back();
    const Ref& ref = per_file[file][next[file]];
    auto bytes = impl_->payload(ref.part, ref.key, ref.chunk);
    if (!bytes) return bytes.status();
    Chunk chunk{ref.key, static_cast<Channel>(ref.chunk.channel), ref.chunk.time_ms, *bytes,
                ref.last};
    if (auto s = f(chunk); !s) return s;
    if (++next[file] < per_file[file].size()) {
      std::push_heap(heap.begin(), heap.end(), later);
    } else {
      heap.pop_back();
    }
  }
  return Status::ok();
}

ReadStats StreamReader::stats() const { return impl_->stats; }

}  // namespace hq::stream
