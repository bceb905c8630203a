#include "output-stream/index.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <tuple>

#include <fmt/format.h>

namespace hq::stream {
namespace {

constexpr char kIndexMagic[8] = {'H', 'Q', 'S', 'I', 'N', 'D', 'E', 'X'};
constexpr uint32_t kIndexVersion = 1;
constexpr uint32_t kByteOrderMark = 0x01020304;

struct IndexHeader {
  char magic[8];
  uint32_t version;
  uint32_t byte_order;  // kByteOrderMark as written by the machine that wrote the sidecar
  uint64_t file_id;
  uint64_t covered;
  uint64_t records;
  uint64_t task_count;
  uint64_t chunk_count;
  uint64_t reserved;
};
static_assert(sizeof(IndexHeader) == 64 && std::is_trivially_copyable_v<IndexHeader>);

bool key_less(const TaskEntry& a, const TaskEntry& b) {
  return std::tie(a.job, a.task, a.instance) < std::tie(b.job, b.task, b.instance);
}

template <typename T>
std::span<const uint8_t> bytes_of(const std::vector<T>& v) {
  return {reinterpret_cast<const uint8_t*>(v.data()), v.size() * sizeof(T)};
}

}  // namespace

IndexView::IndexView(std::span<const uint8_t> tasks, std::span<const uint8_t> chunks)
    : tasks_(tasks.first(tasks.size() / sizeof(TaskEntry) * sizeof(TaskEntry))),
      chunks_(chunks.first(chunks.size() / sizeof(ChunkEntry) * sizeof(ChunkEntry))) {}

TaskEntry IndexView::task(size_t i) const {
  TaskEntry e;
  std::memcpy(&e, tasks_.data() + i * sizeof(TaskEntry), sizeof(TaskEntry));
  return e;
}

ChunkEntry IndexView::chunk(size_t i) const {
  ChunkEntry c;
  std::memcpy(&c, chunks_.data() + i * sizeof(ChunkEntry), sizeof(ChunkEntry));
  return c;
}

bool IndexView::chunks_valid(const TaskEntry& e) const {
  return e.first_chunk <= chunk_count() && e.chunk_count <= chunk_count() - e.first_chunk;
}

size_t IndexView::lower_bound(JobId job, TaskId task) const {
  size_t lo = 0, hi = task_count();
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    TaskEntry e = this->task(mid);
    if (std::tie(e.job, e.task) < std::tie(job, task)) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

std::pair<size_t, size_t> IndexView::find(JobId job) const {
  size_t first = lower_bound(job, 0);
  size_t last = job == UINT32_MAX ? task_count() : lower_bound(job + 1, 0);
  return {first, std::max(first, last)};
}

std::pair<size_t, size_t> IndexView::find(JobId job, TaskId task) const {
  size_t first = lower_bound(job, task);
  size_t last = first;
  while (last < task_count()) {
    TaskEntry e = this->task(last);
    if (e.job != job || e.task != task) break;
    ++last;
  }
  return {first, last};
}

IndexView BuiltIndex::view() const { return IndexView(bytes_of(tasks), bytes_of(chunks)); }

namespace {

size_t hash_key(const TaskKey& k) {
  uint64_t h = (uint64_t{k.job} << 32 | k.task) * 0x9E3779B97F4A7C15ull;
  h ^= (h >> 29) ^ (uint64_t{k.instance} * 0xC2B2AE3D27D4EB4Full);
  return static_cast<size_t>(h ^ (h >> 32));
}

}  // namespace

void IndexBuilder::grow() {
  std::vector<Cell> old = std::move(cells_);
  cells_.assign(std::max<size_t>(1024, old.size() * 2), Cell{});
  const size_t mask = cells_.size() - 1;
  for (const Cell& c : old) {
    if (!c.slot_plus_one) continue;
    size_t i = hash_key(c.key) & mask;
    while (cells_[i].slot_plus_one) i = (i + 1) & mask;
    cells_[i] = c;
  }
}

uint32_t IndexBuilder::slot(const TaskKey& key) {
  // Records of one task come in runs: most lookups are for the key just seen.
  if (last_slot_ != UINT32_MAX && key == last_key_) return last_slot_;
  if ((tasks_.size() + 1) * 2 > cells_.size()) grow();
  const size_t mask = cells_.size() - 1;
  size_t i = hash_key(key) & mask;
  while (cells_[i].slot_plus_one && cells_[i].key != key) i = (i + 1) & mask;
  if (!cells_[i].slot_plus_one) {
    cells_[i] = {key, static_cast<uint32_t>(tasks_.size()) + 1};
    TaskEntry e;
    e.job = key.job;
    e.task = key.task;
    e.instance = key.instance;
    tasks_.push_back(e);
  }
  last_key_ = key;
  last_slot_ = cells_[i].slot_plus_one - 1;
  return last_slot_;
}

void IndexBuilder::add(const Record& record, uint64_t record_offset) {
  const uint32_t s = slot(record.key);
  TaskEntry& e = tasks_[s];
  switch (record.kind) {
    case RecordKind::kStart:
      if (!(e.flags & kEntryStarted)) e.start_ms = record.time_ms;
      e.flags |= kEntryStarted;
      break;
    case RecordKind::kData: {
      ChunkEntry c;
      c.record_offset = record_offset;
      c.size = record.size;
      c.channel = static_cast<uint8_t>(record.channel);
      c.time_ms = record.time_ms;
      e.bytes[c.channel] += c.size;
      chunks_.emplace_back(s, c);
      break;
    }
    case RecordKind::kEnd:
      e.flags = (e.flags | kEntryEnded) & ~kEntryOk;
      if (record.ok) e.flags |= kEntryOk;
      e.exit_code = record.exit_code;
      e.end_ms = record.time_ms;
      break;
  }
}

void IndexBuilder::add(const IndexView& index) {
  for (size_t i = 0; i < index.task_count(); ++i) {
    const TaskEntry from = index.task(i);
    const uint32_t s = slot(from.key());
    TaskEntry& e = tasks_[s];
    if ((from.flags & kEntryStarted) && !(e.flags & kEntryStarted)) e.start_ms = from.start_ms;
    if (from.flags & kEntryEnded) {
      e.flags = (e.flags & ~kEntryOk) | (from.flags & kEntryOk);
      e.exit_code = from.exit_code;
      e.end_ms = from.end_ms;
    }
    e.flags |= from.flags & (kEntryStarted | kEntryEnded);
    if (!index.chunks_valid(from)) continue;
    for (uint64_t c = from.first_chunk; c < from.first_chunk + from.chunk_count; ++c) {
      ChunkEntry chunk = index.chunk(c);
      if (chunk.channel >= kChannels) continue;
      tasks_[s].bytes[chunk.channel] += chunk.size;
      chunks_.emplace_back(s, chunk);
    }
  }
}

BuiltIndex IndexBuilder::finish() && {
  const size_t n = tasks_.size();
  std::vector<uint32_t> order(n);
  std::iota(order.begin(), order.end(), 0u);
  std::sort(order.begin(), order.end(),
            [&](uint32_t a, uint32_t b) { return key_less(tasks_[a], tasks_[b]); });
  std::vector<uint32_t> rank(n);
  for (uint32_t r = 0; r < n; ++r) rank[order[r]] = r;

  // Counting sort of the chunks by their task's rank; stable, so each task keeps file order.
  std::vector<uint64_t> first(n + 1, 0);
  for (const auto& [s, c] : chunks_) ++first[rank[s] + 1];
  std::partial_sum(first.begin(), first.end(), first.begin());

  BuiltIndex out;
  out.tasks.resize(n);
  for (uint32_t r = 0; r < n; ++r) {
    TaskEntry e = tasks_[order[r]];
    e.first_chunk = first[r];
    e.chunk_count = first[r + 1] - first[r];
    out.tasks[r] = e;
  }
  out.chunks.resize(chunks_.size());
  std::vector<uint64_t> next(first.begin(), first.end() - 1);
  for (const auto& [s, c] : chunks_) out.chunks[next[rank[s]]++] = c;
  return out;
}

ScanResult scan_records(std::span<const uint8_t> file, uint64_t offset, IndexBuilder& builder,
                        uint64_t& records_decoded) {
  ScanResult result;
  result.end = offset;
  while (result.end < file.size()) {
    RecordParse r = parse_record(file, result.end);
    ++records_decoded;
    if (r.status != ParseStatus::kOk) {
      result.damage = std::move(r.reason);
      break;
    }
    builder.add(r.record, result.end);
    ++result.records;
    result.end = r.next_offset;
  }
  return result;
}

std::vector<uint8_t> encode_index(const BuiltIndex& index, uint64_t file_id, uint64_t covered,
                                  uint64_t records) {
  IndexHeader h{};
  std::memcpy(h.magic, kIndexMagic, sizeof(h.magic));
  h.version = kIndexVersion;
  h.byte_order = kByteOrderMark;
  h.file_id = file_id;
  h.covered = covered;
  h.records = records;
  h.task_count = index.tasks.size();
  h.chunk_count = index.chunks.size();
  auto tasks = bytes_of(index.tasks);
  auto chunks = bytes_of(index.chunks);
  std::vector<uint8_t> out(sizeof(h) + tasks.size() + chunks.size());
  std::memcpy(out.data(), &h, sizeof(h));
  if (!tasks.empty()) std::memcpy(out.data() + sizeof(h), tasks.data(), tasks.size());
  if (!chunks.empty()) {
    std::memcpy(out.data() + sizeof(h) + tasks.size(), chunks.data(), chunks.size());
  }
  return out;
}

Result<IndexParse> parse_index(std::span<const uint8_t> bytes, uint64_t file_id,
                               uint64_t first_record, uint64_t file_size) {
  IndexHeader h;
  if (bytes.size() < sizeof(h)) {
    return Error{fmt::format("index of {} bytes is shorter than its header", bytes.size())};
  }
  std::memcpy(&h, bytes.data(), sizeof(h));
  if (std::memcmp(h.magic, kIndexMagic, sizeof(h.magic)) != 0) return Error{"bad index magic"};
  if (h.version != kIndexVersion) return Error{fmt::format("index version {}", h.version)};
  if (h.byte_order != kByteOrderMark) return Error{"index written with another byte order"};
  if (h.file_id != file_id) return Error{"index of another stream file"};
  if (h.covered < first_record || h.covered > file_size || h.covered % 8 != 0) {
    return Error{
        fmt::format("index covers {} bytes of a file of {} (stale)", h.covered, file_size)};
  }
  const uint64_t body = bytes.size() - sizeof(h);
  if (h.task_count > body / sizeof(TaskEntry) || h.chunk_count > body / sizeof(ChunkEntry) ||
      h.task_count * sizeof(TaskEntry) + h.chunk_count * sizeof(ChunkEntry) != body) {
    return Error{fmt::format("index of {} bytes does not hold {} tasks and {} chunks", bytes.size(),
                             h.task_count, h.chunk_count)};
  }
  IndexParse p;
  const size_t task_bytes = h.task_count * sizeof(TaskEntry);
  p.view = IndexView(bytes.subspan(sizeof(h), task_bytes), bytes.subspan(sizeof(h) + task_bytes));
  p.covered = h.covered;
  p.records = h.records;
  return p;
}

}  // namespace hq::stream
