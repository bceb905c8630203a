#include "scheduler/job.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <limits>

#include <fmt/format.h>

namespace hq::sched {

void invariant_failed(const std::string& message) {
  std::fprintf(stderr, "hq scheduler: invariant violated: %s\n", message.c_str());
  std::fflush(stderr);
  std::abort();
}

Result<TaskIdMap> TaskIdMap::build(const IdSet& ids) {
  if (ids.empty()) return Error{"a job needs at least one task id"};
  std::vector<IdRange> ranges;
  ranges.reserve(ids.ranges().size());
  uint64_t total = 0;
  for (IdRange r : ids.ranges()) {
    if (r.step == 0) return Error{fmt::format("zero step in task id range {}-{}", r.start, r.end)};
    if (r.end < r.start) {
      return Error{fmt::format("reversed task id range {}-{}: the end is smaller than the start",
                               r.start, r.end)};
    }
    r.end = r.last();
    if (r.start == r.end) r.step = 1;
    total += r.size();
    ranges.push_back(r);
  }
  if (total > std::numeric_limits<uint32_t>::max()) {
    return Error{fmt::format("a job holds at most {} tasks, not {}",
                             std::numeric_limits<uint32_t>::max(), total)};
  }
  std::sort(ranges.begin(), ranges.end(), [](const IdRange& a, const IdRange& b) {
    return a.start != b.start ? a.start < b.start : a.end < b.end;
  });
  bool disjoint = true;
  for (size_t i = 1; i < ranges.size() && disjoint; ++i) {
    disjoint = ranges[i - 1].end < ranges[i].start;
  }

  TaskIdMap map;
  if (disjoint) {
    // The usual case: no range reaches into the next one. Merge touching step-1 ranges.
    for (const IdRange& r : ranges) {
      if (!map.ranges_.empty()) {
        IdRange& back = map.ranges_.back();
        if (back.step == 1 && r.step == 1 && back.end + 1 == r.start) {
          back.end = r.end;
          continue;
        }
      }
      map.ranges_.push_back(r);
    }
  } else {
    // Interleaved or overlapping ranges: list the ids to find duplicates.
    std::vector<uint32_t> all;
    all.reserve(total);
    IdSet(ranges).for_each([&](uint32_t id) { all.push_back(id); });
    std::sort(all.begin(), all.end());
    auto dup = std::adjacent_find(all.begin(), all.end());
    if (dup != all.end()) {
      return Error{fmt::format("task id {} is listed more than once", *dup)};
    }
    IdSetBuilder builder;
    for (uint32_t id : all) builder.add(id);
    map.ranges_ = std::move(builder).build().ranges();
  }
  map.ranges_.shrink_to_fit();
  map.first_.reserve(map.ranges_.size() + 1);
  uint32_t first = 0;
  for (const IdRange& r : map.ranges_) {
    map.first_.push_back(first);
    first += r.size();
  }
  map.first_.push_back(first);
  return map;
}

TaskId TaskIdMap::id_at(uint32_t index) const {
  // The last range whose first index is <= index.
  size_t r = std::upper_bound(first_.begin(), first_.end() - 1, index) - first_.begin() - 1;
  return ranges_[r].start + (index - first_[r]) * ranges_[r].step;
}

std::optional<uint32_t> TaskIdMap::index_of(TaskId id) const {
  if (ranges_.size() == 1 && ranges_[0].step == 1) {  // an array job's usual `--array a-b`
    if (id < ranges_[0].start || id > ranges_[0].end) return std::nullopt;
    return id - ranges_[0].start;
  }
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), id,
                             [](TaskId v, const IdRange& r) { return v < r.start; });
  if (it == ranges_.begin()) return std::nullopt;
  --it;
  if (id > it->end || (id - it->start) % it->step != 0) return std::nullopt;
  return first_[it - ranges_.begin()] + (id - it->start) / it->step;
}

Job::Job(UserJob& job_owner, uint32_t part_number, uint32_t first, uint32_t job_cpus,
         int32_t job_priority, TaskIdMap task_ids, bool use_cursor)
    : owner(job_owner),
      id(job_owner.id),
      part(part_number),
      base(first),
      cpus(job_cpus),
      priority(job_priority),
      cursor(use_cursor),
      ids(std::move(task_ids)),
      tasks(ids.size()) {
  counts.by_state[static_cast<int>(TaskState::kWaiting)] = size();
  owner.counts.by_state[static_cast<int>(TaskState::kWaiting)] += size();
  if (!cursor) clear_ready();  // the caller queues the ready tasks (rebuild_ready)
}

bool Job::deps_done(uint32_t index) const {
  return !owner.graph || owner.graph->pending[base + index] == 0;
}

void Job::set_state(uint32_t index, TaskSlot& slot, TaskState to) {
  --counts.by_state[static_cast<int>(slot.state)];
  ++counts.by_state[static_cast<int>(to)];
  --owner.counts.by_state[static_cast<int>(slot.state)];
  ++owner.counts.by_state[static_cast<int>(to)];
  if (tasks.note_state(index, slot.state, to)) note_full(index >> TaskTable::kChunkShift);
  slot.state = to;
}

TaskSlot& Job::unpacked_task(uint32_t index) {
  if (tasks.unpacks_ended(index)) note_full(index >> TaskTable::kChunkShift);
  return tasks.at(index);
}

void Job::note_full(uint32_t chunk) {
  full_chunks_.push_back(chunk);
  if (pack_list && !in_pack_list) {
    pack_list->push_back(this);
    in_pack_list = true;
  }
}

void Job::set_uniform_state(uint32_t c, TaskState to) {
  TaskSlot& u = *tasks.uniform(c);
  const uint32_t n = tasks.chunk_end(c) - tasks.chunk_begin(c);
  counts.by_state[static_cast<int>(u.state)] -= n;
  counts.by_state[static_cast<int>(to)] += n;
  owner.counts.by_state[static_cast<int>(u.state)] -= n;
  owner.counts.by_state[static_cast<int>(to)] += n;
  u.state = to;
  tasks.note_uniform(c);
}

bool Job::pack_ended() {
  std::erase_if(full_chunks_, [this](uint32_t c) { return tasks.pack(c); });
  return full_chunks_.empty();
}

Job::Next Job::take_ready() {
  if (!requeued_.empty()) {
    std::pop_heap(requeued_.begin(), requeued_.end(), std::greater<>());
    uint32_t index = requeued_.back();
    requeued_.pop_back();
    return {index, ids.id_at(index)};
  }
  uint32_t index = fresh_++;
  const IdRange& r = ids.ranges()[fresh_range_];
  TaskId id = r.start + (index - ids.first_index(fresh_range_)) * r.step;
  if (fresh_ == ids.first_index(fresh_range_ + 1)) ++fresh_range_;
  return {index, id};
}

void Job::put_back(uint32_t index) {
  requeued_.push_back(index);
  std::push_heap(requeued_.begin(), requeued_.end(), std::greater<>());
}

void Job::clear_ready() {
  requeued_.clear();
  requeued_.shrink_to_fit();
  fresh_ = size();
  fresh_range_ = static_cast<uint32_t>(ids.ranges().size());
}

void Job::rebuild_ready() {
  uint32_t fresh = size();
  while (fresh > 0 && cursor) {
    const TaskSlot s = tasks.get(fresh - 1);
    if (s.state != TaskState::kWaiting || s.flags != 0 || s.instance != 0) break;
    --fresh;
  }
  requeued_.clear();
  for (uint32_t i = 0; i < fresh; ++i) {
    // Increasing: a heap.
    const TaskSlot s = tasks.get(i);
    if (s.state == TaskState::kWaiting && !(s.flags & (kHeld | kOrphan)) && deps_done(i)) {
      requeued_.push_back(i);
    }
  }
  requeued_.shrink_to_fit();
  fresh_ = fresh;
  fresh_range_ = 0;
  while (fresh_range_ < ids.ranges().size() && ids.first_index(fresh_range_ + 1) <= fresh_) {
    ++fresh_range_;
  }
}

void Job::check_queue() const {
  const size_t nranges = ids.ranges().size();
  if (fresh_ > size()) invariant_failed(fmt::format("job {}: fresh cursor past the end", id));
  if (!cursor && fresh_ != size()) {
    invariant_failed(
        fmt::format("job {} part {}: a part without a cursor has one at {}", id, part, fresh_));
  }
  if (fresh_ == size() ? fresh_range_ != nranges
                       : (fresh_range_ >= nranges || ids.first_index(fresh_range_) > fresh_ ||
                          ids.first_index(fresh_range_ + 1) <= fresh_)) {
    invariant_failed(
        fmt::format("job {}: fresh cursor {} is not in range {}", id, fresh_, fresh_range_));
  }
  if (!std::is_heap(requeued_.begin(), requeued_.end(), std::greater<>())) {
    invariant_failed(fmt::format("job {}: requeued tasks are not a heap", id));
  }
  for (size_t r = 0; r < nranges; ++r) {
    const IdRange& range = ids.ranges()[r];
    if (range.step == 0 || range.end != range.last() ||
        (r > 0 && ids.ranges()[r - 1].end >= range.start) ||
        ids.first_index(r + 1) - ids.first_index(r) != range.size()) {
      invariant_failed(fmt::format("job {}: task id range {} is malformed", id, r));
    }
  }
}

std::optional<UserJob::Loc> UserJob::find(TaskId task) const {
  if (parts.size() == 1) {
    std::optional<uint32_t> i = parts[0]->ids.index_of(task);
    if (!i) return std::nullopt;
    return Loc{parts[0].get(), *i};
  }
  // The entries that may hold `task`: starting at or before it, back while some range before
  // them still reaches it.
  auto it = std::upper_bound(index_.begin(), index_.end(), task,
                             [](TaskId v, const IdEntry& e) { return v < e.start; });
  for (size_t k = static_cast<size_t>(it - index_.begin()); k-- > 0;) {
    if (max_end_[k] < task) break;
    const IdEntry& e = index_[k];
    if (task > e.end) continue;
    const Job& p = *parts[e.part];
    const IdRange& r = p.ids.ranges()[e.range];
    if ((task - r.start) % r.step != 0) continue;
    return Loc{parts[e.part].get(), p.ids.first_index(e.range) + (task - r.start) / r.step};
  }
  return std::nullopt;
}

UserJob::Loc UserJob::at(uint32_t global) const {
  auto it = std::upper_bound(parts.begin(), parts.end(), global,
                             [](uint32_t g, const std::unique_ptr<Job>& p) { return g < p->base; });
  Job* p = (*std::prev(it)).get();
  return Loc{p, global - p->base};
}

void UserJob::index_part(const Job& part) {
  if (parts.size() < 2) return;
  if (index_.empty()) {
    // A second part: the first one's ranges are filed too.
    const Job& first = *parts[0];
    for (size_t r = 0; r < first.ids.ranges().size(); ++r) {
      index_.push_back(
          {first.ids.ranges()[r].start, first.ids.ranges()[r].end, 0, static_cast<uint32_t>(r)});
    }
  }
  for (size_t r = 0; r < part.ids.ranges().size(); ++r) {
    index_.push_back({part.ids.ranges()[r].start, part.ids.ranges()[r].end, part.part,
                      static_cast<uint32_t>(r)});
  }
  std::sort(index_.begin(), index_.end(), [](const IdEntry& a, const IdEntry& b) {
    return a.start != b.start ? a.start < b.start : a.end < b.end;
  });
  max_end_.resize(index_.size());
  TaskId m = 0;
  for (size_t k = 0; k < index_.size(); ++k) max_end_[k] = m = std::max(m, index_[k].end);
}

}  // namespace hq::sched
