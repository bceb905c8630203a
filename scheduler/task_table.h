#pragma once
// Private to scheduler/: the per-task records of one job part, kept in chunks of kChunkSize
// tasks. A chunk is one of three forms:
//   uniform: one record stands for all its tasks (never touched: waiting, never run; or ended
//            together, as when a job is canceled before its tasks ran). Costs no per-task byte.
//   dense:   a TaskSlot per task (32 bytes), while any of its tasks is held, has run or changes.
//   packed:  every task ended and none held: the records as a few bytes each (varints of time
//            and worker deltas in blocks of 64, see task_table.cc), read back a block at a
//            time through a small cache.
// So a job costs O(chunks) while it waits, 32 bytes per task only where tasks are in flight,
// and a few bytes per ended task. Any change goes through at(), which makes the chunk dense; a
// dense chunk whose tasks have all ended is packed again by pack() at a safe point (no
// reference into it is kept across Scheduler calls).

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/ids.h"
#include "scheduler/scheduler.h"

namespace hq::sched {

// TaskSlot::flags.
inline constexpr uint8_t kHeld = 1;        // a worker holds it (queued, running, or ended by a
                                           // cancel and not yet reported by the worker)
inline constexpr uint8_t kRetracting = 2;  // a retraction was sent and not answered yet
inline constexpr uint8_t kPlaced = 4;      // held with an allocation in its worker's pool
inline constexpr uint8_t kOutside = 8;     // started by its worker beyond the model's pool
inline constexpr uint8_t kOrphan = 16;     // after a restart: may be running on a worker that
                                           // has not reattached yet; held by nobody, never
                                           // handed out (scheduler/reattach.cc)

// Everything the scheduler keeps per task.
struct TaskSlot {
  int64_t start_time = 0;  // 0: not started (in this instance)
  int64_t end_time = 0;    // 0: not ended
  WorkerId worker = 0;     // the holder while kHeld; else the last worker that held it, or 0
  InstanceId instance = 0;
  uint32_t held_pos = 0;  // index in the holder's held list; meaningful only while kHeld
  uint16_t crashes = 0;   // times a worker was lost while running it (saturates)
  TaskState state = TaskState::kWaiting;
  uint8_t flags = 0;
};
static_assert(sizeof(TaskSlot) == 32, "TaskSlot is the record of a task in flight");

inline bool ended(TaskState s) { return s != TaskState::kWaiting && s != TaskState::kRunning; }

class TaskTable {
 public:
  static constexpr uint32_t kChunkShift = 14;
  static constexpr uint32_t kChunkSize = 1u << kChunkShift;

  // `size` waiting tasks that never ran, in uniform chunks.
  explicit TaskTable(uint32_t size);
  TaskTable(TaskTable&&) noexcept;
  TaskTable& operator=(TaskTable&&) noexcept;
  ~TaskTable();

  uint32_t size() const { return size_; }

  // The record to change; its chunk becomes dense. Valid until pack() or the table's end.
  TaskSlot& at(uint32_t index) {
    Chunk& c = chunks_[index >> kChunkShift];
    if (!c.dense) unpack(index >> kChunkShift);
    return c.dense[index & (kChunkSize - 1)];
  }
  // The record when its chunk is dense, else null (its task is not held, has no flags).
  TaskSlot* dense_at(uint32_t index) {
    Chunk& c = chunks_[index >> kChunkShift];
    return c.dense ? &c.dense[index & (kChunkSize - 1)] : nullptr;
  }
  // Whether at() would unpack a chunk whose tasks have all ended (to be packed again).
  bool unpacks_ended(uint32_t index) const {
    const Chunk& c = chunks_[index >> kChunkShift];
    return !c.dense && c.ended != 0;
  }
  // A copy of the record, whatever the chunk's form.
  TaskSlot get(uint32_t index) const {
    const Chunk& c = chunks_[index >> kChunkShift];
    if (c.dense) return c.dense[index & (kChunkSize - 1)];
    if (!c.packed) return c.uniform;
    return decoded(index);
  }

  uint32_t chunks() const { return static_cast<uint32_t>(chunks_.size()); }
  uint32_t chunk_begin(uint32_t c) const { return c << kChunkShift; }
  uint32_t chunk_end(uint32_t c) const {
    return c + 1 == chunks() ? size_ : (c + 1) << kChunkShift;
  }
  // The record that stands for every task of a uniform chunk, to change them all at once; null
  // when the chunk is dense or packed.
  TaskSlot* uniform(uint32_t c) {
    Chunk& ch = chunks_[c];
    return ch.dense || ch.packed ? nullptr : &ch.uniform;
  }

  // Called by Job::set_state on every state change of task `index`; returns true when the
  // change ended the last task of its chunk (a candidate for pack()).
  bool note_state(uint32_t index, TaskState from, TaskState to);
  // A chunk's whole-chunk change through uniform(): its tasks ended (or not) together.
  void note_uniform(uint32_t c);
  // Packs chunk `c` when it is dense, every task ended and none has flags; returns false when
  // some task is still held (try again later), true otherwise.
  bool pack(uint32_t c);

  // Empty when every chunk's form and ended count agree with its records; else what is wrong.
  std::string check() const;

  // Heap bytes held by the table.
  size_t bytes() const;

 private:
  struct Chunk {
    std::unique_ptr<TaskSlot[]> dense;
    std::unique_ptr<uint8_t[]> packed;
    uint32_t packed_size = 0;
    uint32_t ended = 0;  // tasks of the chunk in an ended state
    TaskSlot uniform;    // the record of all tasks when neither dense nor packed
  };
  void unpack(uint32_t c);
  // The record of a task of a packed chunk, through a small cache of decoded blocks.
  const TaskSlot& decoded(uint32_t index) const;

  uint32_t size_ = 0;
  uint64_t serial_ = 0;  // names the table in the decoding cache
  std::vector<Chunk> chunks_;
};

}  // namespace hq::sched
