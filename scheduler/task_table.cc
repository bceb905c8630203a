#include "scheduler/task_table.h"

#include <algorithm>
#include <atomic>
#include <iterator>
#include <optional>
#include <string>

#include <fmt/format.h>

#include "common/varint.h"
#include "scheduler/job.h"

namespace hq::sched {

// A packed chunk is blocks of kBlock tasks, each decodable alone: first the chunk's first
// end_time (8 bytes) and the byte offset of every block but the first (4 bytes each; all
// little-endian, offsets counted from the first block), then the blocks. A block holds, per task
// in index order, three varints (more for a rare task):
//   zigzag(end_time - the previous task's end_time)  (the block's first against the chunk's)
//   head = duration << 4 | kind << 2 | state code
//     kind 0: start_time = end_time - duration, no instance, no crashes
//     kind 1: never started (start_time 0), no instance, no crashes; duration 0
//     kind 2: then varint(start_time == 0 ? 0 : zigzag(end_time - start_time) + 1),
//             varint(instance), varint(crashes); duration 0
//   zigzag(worker - the previous task's worker)                (the block's first against 0)
// The state code is the ended state (kFinished..kAborted) minus kFinished. Differences are taken
// modulo 2^64, so that any times round-trip. Tasks that ran a few milliseconds, ended in id order
// on a few workers take three bytes each.

namespace {

constexpr uint8_t kFirstEnded = static_cast<uint8_t>(TaskState::kFinished);
static_assert(static_cast<uint8_t>(TaskState::kAborted) - kFirstEnded == 3,
              "four ended states fit the two bits of the state code");
constexpr uint32_t kBlock = 64;
static_assert(TaskTable::kChunkSize % kBlock == 0);
constexpr uint64_t kMaxDuration = uint64_t{1} << 59;  // kind 0 above it would lose bits

std::atomic<uint64_t> next_serial{1};

// The last blocks read by get(), round robin: listings read in order, and lookups that go back
// and forth between a few chunks (dependencies, causes) find theirs too.
struct DecodedBlock {
  uint64_t serial = 0;  // 0: empty
  uint32_t chunk = 0;
  uint32_t block = 0;
  TaskSlot slots[kBlock];
};
struct DecodeCache {
  DecodedBlock blocks[8];
  uint32_t next = 0;
  void forget(uint64_t serial, int64_t chunk = -1) {
    for (DecodedBlock& b : blocks) {
      if (b.serial == serial && (chunk < 0 || b.chunk == static_cast<uint32_t>(chunk))) {
        b.serial = 0;
      }
    }
  }
};
thread_local DecodeCache cache;

// The most bytes encode() writes per task (six varints), and per block of the header.
constexpr size_t kMaxTaskBytes = 60;
constexpr size_t kOffsetBytes = 4;
constexpr size_t kBaseBytes = 8;

uint8_t* encode_block(const TaskSlot* slots, uint32_t n, int64_t base, uint8_t* out) {
  int64_t prev_end = base;
  int64_t prev_worker = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const TaskSlot& s = slots[i];
    out = put_varint(out, zigzag(wrap_sub(s.end_time, prev_end)));
    prev_end = s.end_time;
    const uint64_t code = static_cast<uint8_t>(s.state) - kFirstEnded;
    const uint64_t duration = static_cast<uint64_t>(wrap_sub(s.end_time, s.start_time));
    const bool plain = s.instance == 0 && s.crashes == 0;
    if (plain && s.start_time != 0 && s.start_time <= s.end_time && duration < kMaxDuration) {
      out = put_varint(out, duration << 4 | code);
    } else if (plain && s.start_time == 0) {
      out = put_varint(out, 1u << 2 | code);
    } else {
      out = put_varint(out, 2u << 2 | code);
      out = put_varint(out, s.start_time == 0 ? 0 : zigzag(wrap_sub(s.end_time, s.start_time)) + 1);
      out = put_varint(out, s.instance);
      out = put_varint(out, s.crashes);
    }
    out = put_varint(out, zigzag(wrap_sub(static_cast<int64_t>(s.worker), prev_worker)));
    prev_worker = s.worker;
  }
  return out;
}

void put_le(uint8_t* out, uint64_t v, size_t bytes) {
  for (size_t k = 0; k < bytes; ++k) out[k] = static_cast<uint8_t>(v >> (8 * k));
}
uint64_t get_le(const uint8_t* in, size_t bytes) {
  uint64_t v = 0;
  for (size_t k = 0; k < bytes; ++k) v |= static_cast<uint64_t>(in[k]) << (8 * k);
  return v;
}

// The most bytes encode() writes for n records.
size_t max_encoded(uint32_t n) {
  return kBaseBytes + static_cast<size_t>(n) * (kMaxTaskBytes + kOffsetBytes);
}

// Writes the n records at `out` (room for max_encoded(n)); returns the end.
uint8_t* encode(const TaskSlot* slots, uint32_t n, uint8_t* out) {
  const uint32_t blocks = (n + kBlock - 1) / kBlock;
  const int64_t base = slots[0].end_time;
  put_le(out, static_cast<uint64_t>(base), kBaseBytes);
  uint8_t* header = out + kBaseBytes;
  uint8_t* first = header + kOffsetBytes * (blocks - 1);
  out = first;
  for (uint32_t b = 0; b < blocks; ++b) {
    if (b > 0) {
      put_le(header, static_cast<uint64_t>(out - first), kOffsetBytes);
      header += kOffsetBytes;
    }
    out = encode_block(slots + b * kBlock, std::min(kBlock, n - b * kBlock), base, out);
  }
  return out;
}

// Decodes block `b` of a packed chunk of n records into out[0, its size).
void decode_block(const uint8_t* data, size_t size, uint32_t n, uint32_t b, TaskSlot* out) {
  const uint32_t blocks = (n + kBlock - 1) / kBlock;
  auto offset = [&](uint32_t k) -> size_t {
    return k == 0 ? 0 : get_le(data + kBaseBytes + kOffsetBytes * (k - 1), kOffsetBytes);
  };
  const size_t header = kBaseBytes + kOffsetBytes * (blocks - 1);
  const uint8_t* block = data + header + offset(b);
  const size_t block_size = (b + 1 < blocks ? offset(b + 1) : size - header) - offset(b);
  size_t pos = 0;
  int64_t prev_end = static_cast<int64_t>(get_le(data, kBaseBytes));
  int64_t prev_worker = 0;
  auto next = [&] {
    std::optional<uint64_t> v = get_varint(block, block_size, pos);
    if (!v) invariant_failed("a packed block of task records is cut short");
    return *v;
  };
  const uint32_t count = std::min(kBlock, n - b * kBlock);
  for (uint32_t i = 0; i < count; ++i) {
    TaskSlot s;
    s.end_time = wrap_add(prev_end, unzigzag(next()));
    prev_end = s.end_time;
    const uint64_t head = next();
    s.state = static_cast<TaskState>(kFirstEnded + (head & 3));
    switch ((head >> 2) & 3) {
      case 0:
        s.start_time = wrap_sub(s.end_time, static_cast<int64_t>(head >> 4));
        break;
      case 1:
        break;
      default: {
        const uint64_t start = next();
        s.start_time = start == 0 ? 0 : wrap_sub(s.end_time, unzigzag(start - 1));
        s.instance = static_cast<InstanceId>(next());
        s.crashes = static_cast<uint16_t>(next());
      }
    }
    s.worker = static_cast<WorkerId>(wrap_add(prev_worker, unzigzag(next())));
    prev_worker = s.worker;
    out[i] = s;
  }
  if (pos != block_size) invariant_failed("a packed block of task records has bytes left over");
}

}  // namespace

TaskTable::TaskTable(uint32_t size)
    : size_(size), serial_(next_serial.fetch_add(1, std::memory_order_relaxed)) {
  chunks_.resize((static_cast<size_t>(size) + kChunkSize - 1) >> kChunkShift);
}

TaskTable::TaskTable(TaskTable&&) noexcept = default;
TaskTable& TaskTable::operator=(TaskTable&&) noexcept = default;
TaskTable::~TaskTable() { cache.forget(serial_); }

bool TaskTable::note_state(uint32_t index, TaskState from, TaskState to) {
  if (ended(from) == ended(to)) return false;
  Chunk& c = chunks_[index >> kChunkShift];
  if (ended(to)) {
    const uint32_t k = index >> kChunkShift;
    return ++c.ended == chunk_end(k) - chunk_begin(k);
  }
  --c.ended;
  return false;
}

void TaskTable::note_uniform(uint32_t c) {
  Chunk& ch = chunks_[c];
  ch.ended = ended(ch.uniform.state) ? chunk_end(c) - chunk_begin(c) : 0;
}

void TaskTable::unpack(uint32_t c) {
  Chunk& ch = chunks_[c];
  const uint32_t n = chunk_end(c) - chunk_begin(c);
  ch.dense.reset(new TaskSlot[n]);
  if (ch.packed) {
    for (uint32_t b = 0; b * kBlock < n; ++b) {
      decode_block(ch.packed.get(), ch.packed_size, n, b, ch.dense.get() + b * kBlock);
    }
    ch.packed.reset();
    ch.packed_size = 0;
    cache.forget(serial_, c);
  } else {
    std::fill_n(ch.dense.get(), n, ch.uniform);
  }
  ch.uniform = TaskSlot{};
}

bool TaskTable::pack(uint32_t c) {
  Chunk& ch = chunks_[c];
  if (!ch.dense) return true;
  const uint32_t n = chunk_end(c) - chunk_begin(c);
  if (ch.ended != n) return true;  // a task came back meanwhile: packed when it ends again
  const TaskSlot* slots = ch.dense.get();
  for (uint32_t i = 0; i < n; ++i) {
    if (slots[i].flags != 0) return false;
  }
  auto same = [](const TaskSlot& a, const TaskSlot& b) {
    return a.start_time == b.start_time && a.end_time == b.end_time && a.worker == b.worker &&
           a.instance == b.instance && a.crashes == b.crashes && a.state == b.state;
  };
  if (std::all_of(slots, slots + n, [&](const TaskSlot& s) { return same(s, slots[0]); })) {
    ch.uniform = slots[0];  // ended together, as by a cancel: no byte per task
    ch.uniform.held_pos = 0;
    ch.dense.reset();
    return true;
  }
  std::unique_ptr<uint8_t[]> scratch(new uint8_t[max_encoded(n)]);
  const size_t size = static_cast<size_t>(encode(slots, n, scratch.get()) - scratch.get());
  ch.packed.reset(new uint8_t[size]);
  std::copy_n(scratch.get(), size, ch.packed.get());
  ch.packed_size = static_cast<uint32_t>(size);
  ch.dense.reset();
  return true;
}

const TaskSlot& TaskTable::decoded(uint32_t index) const {
  const uint32_t c = index >> kChunkShift;
  const uint32_t b = (index & (kChunkSize - 1)) / kBlock;
  for (const DecodedBlock& d : cache.blocks) {
    if (d.serial == serial_ && d.chunk == c && d.block == b) return d.slots[index % kBlock];
  }
  DecodedBlock& d = cache.blocks[cache.next];
  cache.next = (cache.next + 1) % std::size(cache.blocks);
  const Chunk& ch = chunks_[c];
  decode_block(ch.packed.get(), ch.packed_size, chunk_end(c) - chunk_begin(c), b, d.slots);
  d.serial = serial_;
  d.chunk = c;
  d.block = b;
  return d.slots[index % kBlock];
}

std::string TaskTable::check() const {
  for (uint32_t c = 0; c < chunks(); ++c) {
    const Chunk& ch = chunks_[c];
    uint32_t ended_now = 0;
    for (uint32_t i = chunk_begin(c); i < chunk_end(c); ++i) {
      const TaskSlot s = get(i);
      ended_now += ended(s.state);
      if (!ch.dense && (s.flags != 0 || (ch.packed && !ended(s.state)))) {
        return fmt::format("task #{} has flags {} or has not ended in a {} chunk", i, s.flags,
                           ch.packed ? "packed" : "uniform");
      }
    }
    if (ended_now != ch.ended) {
      return fmt::format("chunk {} counts {} ended tasks but holds {}", c, ch.ended, ended_now);
    }
  }
  return {};
}

size_t TaskTable::bytes() const {
  size_t n = chunks_.capacity() * sizeof(Chunk);
  for (uint32_t c = 0; c < chunks(); ++c) {
    const Chunk& ch = chunks_[c];
    if (ch.dense) n += (chunk_end(c) - chunk_begin(c)) * sizeof(TaskSlot);
    n += ch.packed_size;
  }
  return n;
}

}  // namespace hq::sched
