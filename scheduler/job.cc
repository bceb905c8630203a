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
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), id,
                             [](TaskId v, const IdRange& r) { return v < r.start; });
  if (it == ranges_.begin()) return std::nullopt;
  --it;
  if (id > it->end || (id - it->start) % it->step != 0) return std::nullopt;
  return first_[it - ranges_.begin()] + (id - it->start) / it->step;
}

Job::Job(JobId job_id, uint32_t job_cpus, int32_t job_priority, TaskIdMap task_ids)
    : id(job_id), cpus(job_cpus), priority(job_priority), ids(std::move(task_ids)) {
  slots.resize(ids.size());
  counts.by_state[static_cast<int>(TaskState::kWaiting)] = size();
}

void Job::set_state(TaskSlot& slot, TaskState to) {
  --counts.by_state[static_cast<int>(slot.state)];
  ++counts.by_state[static_cast<int>(to)];
  slot.state = to;
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

void Job::set_graph(std::unique_ptr<DepGraph> g) {
  graph = std::move(g);
  rebuild_ready();
}

void Job::rebuild_ready() {
  uint32_t fresh = size();
  while (fresh > 0 && !graph) {
    const TaskSlot& s = slots[fresh - 1];
    if (s.state != TaskState::kWaiting || s.flags != 0 || s.instance != 0) break;
    --fresh;
  }
  requeued_.clear();
  for (uint32_t i = 0; i < fresh; ++i) {
    // Increasing: a heap.
    if (slots[i].state == TaskState::kWaiting && !(slots[i].flags & (kHeld | kOrphan)) &&
        deps_done(i)) {
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
  if (graph && fresh_ != size()) {
    invariant_failed(fmt::format("job {}: a graph job with a fresh cursor at {}", id, fresh_));
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

}  // namespace hq::sched
