#include "scheduler/task_table.h"

#include <algorithm>
#include <atomic>
#include <string>

#include <fmt/format.h>

#include "common/varint.h"
#include "scheduler/job.h"

namespace hq::sched {

// A packed chunk holds, per task in index order, three varints (more for a rare task):
//   zigzag(end_time - the previous task's end_time)            (the first against 0)
//   head = duration << 4 | kind << 2 | state code
//     kind 0: start_time = end_time - duration, no instance, no crashes
//     kind 1: never started (start_time 0), no instance, no crashes; duration 0
//     kind 2: then varint(start_time == 0 ? 0 : zigzag(end_time - start_time) + 1),
//             varint(instance), varint(crashes); duration 0
//   zigzag(worker - the previous task's worker)
// The state code is the ended state (kFinished..kAborted) minus kFinished. Tasks that ran a
// few milliseconds, ended in id order on a few workers take three bytes each.

namespace {

constexpr uint8_t kFirstEnded = static_cast<uint8_t>(TaskState::kFinished);
static_assert(static_cast<uint8_t>(TaskState::kAborted) - kFirstEnded == 3,
              "four ended states fit the two bits of the state code");

std::atomic<uint64_t> next_serial{1};

// The last packed chunk read by get(): ended-task listings read chunks in order.
struct DecodeCache {
  uint64_t serial = 0;
  uint32_t chunk = 0;
  std::vector<TaskSlot> slots;
};
thread_local DecodeCache cache;

// The most bytes encode() writes per task: six varints.
constexpr size_t kMaxTaskBytes = 60;

// Writes the records at `out` (room for kMaxTaskBytes each); returns the end.
uint8_t* encode(const TaskSlot* slots, uint32_t n, uint8_t* out) {
  int64_t prev_end = 0;
  int64_t prev_worker = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const TaskSlot& s = slots[i];
    out = put_varint(out, zigzag(s.end_time - prev_end));
    prev_end = s.end_time;
    const uint64_t code = static_cast<uint8_t>(s.state) - kFirstEnded;
    if (s.instance == 0 && s.crashes == 0 && s.start_time != 0 && s.start_time <= s.end_time) {
      out = put_varint(out, static_cast<uint64_t>(s.end_time - s.start_time) << 4 | code);
    } else if (s.instance == 0 && s.crashes == 0 && s.start_time == 0) {
      out = put_varint(out, 1u << 2 | code);
    } else {
      out = put_varint(out, 2u << 2 | code);
      out = put_varint(out, s.start_time == 0 ? 0 : zigzag(s.end_time - s.start_time) + 1);
      out = put_varint(out, s.instance);
      out = put_varint(out, s.crashes);
    }
    out = put_varint(out, zigzag(static_cast<int64_t>(s.worker) - prev_worker));
    prev_worker = s.worker;
  }
  return out;
}

void decode(const uint8_t* data, size_t size, uint32_t n, TaskSlot* out) {
  size_t pos = 0;
  int64_t prev_end = 0;
  int64_t prev_worker = 0;
  auto next = [&] {
    std::optional<uint64_t> v = get_varint(data, size, pos);
    if (!v) invariant_failed("a packed chunk of task records is cut short");
    return *v;
  };
  for (uint32_t i = 0; i < n; ++i) {
    TaskSlot s;
    s.end_time = prev_end + unzigzag(next());
    prev_end = s.end_time;
    const uint64_t head = next();
    s.state = static_cast<TaskState>(kFirstEnded + (head & 3));
    switch ((head >> 2) & 3) {
      case 0:
        s.start_time = s.end_time - static_cast<int64_t>(head >> 4);
        break;
      case 1:
        break;
      default: {
        const uint64_t start = next();
        s.start_time = start == 0 ? 0 : s.end_time - unzigzag(start - 1);
        s.instance = static_cast<InstanceId>(next());
        s.crashes = static_cast<uint16_t>(next());
      }
    }
    s.worker = static_cast<WorkerId>(prev_worker + unzigzag(next()));
    prev_worker = s.worker;
    out[i] = s;
  }
  if (pos != size) invariant_failed("a packed chunk of task records has bytes left over");
}

}  // namespace

TaskTable::TaskTable(uint32_t size)
    : size_(size), serial_(next_serial.fetch_add(1, std::memory_order_relaxed)) {
  chunks_.resize((static_cast<size_t>(size) + kChunkSize - 1) >> kChunkShift);
}

TaskTable::TaskTable(TaskTable&&) noexcept = default;
TaskTable& TaskTable::operator=(TaskTable&&) noexcept = default;
TaskTable::~TaskTable() {
  if (cache.serial == serial_) cache.serial = 0;
}

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
    decode(ch.packed.get(), ch.packed_size, n, ch.dense.get());
    ch.packed.reset();
    ch.packed_size = 0;
    if (cache.serial == serial_ && cache.chunk == c) cache.serial = 0;
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
  thread_local std::vector<uint8_t> scratch;
  scratch.resize(static_cast<size_t>(n) * kMaxTaskBytes);
  const size_t size = static_cast<size_t>(encode(slots, n, scratch.data()) - scratch.data());
  ch.packed.reset(new uint8_t[size]);
  std::copy_n(scratch.data(), size, ch.packed.get());
  ch.packed_size = static_cast<uint32_t>(size);
  ch.dense.reset();
  return true;
}

const TaskSlot* TaskTable::decoded(uint32_t c) const {
  if (cache.serial != serial_ || cache.chunk != c) {
    const Chunk& ch = chunks_[c];
    const uint32_t n = chunk_end(c) - chunk_begin(c);
    cache.slots.resize(n);
    decode(ch.packed.get(), ch.packed_size, n, cache.slots.data());
    cache.serial = serial_;
    cache.chunk = c;
  }
  return cache.slots.data();
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
