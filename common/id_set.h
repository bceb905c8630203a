#pragma once
// Sets of task or job ids written as "1-10,20,30-40:2", stored as ranges.

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace hq {

// An inclusive range start, start+step, ..., <= end.
struct IdRange {
  uint32_t start = 0;
  uint32_t end = 0;
  uint32_t step = 1;
  uint64_t size() const { return uint64_t{end - start} / step + 1; }
  uint32_t last() const { return static_cast<uint32_t>(start + (size() - 1) * step); }
  bool operator==(const IdRange&) const = default;
};

// An ordered list of id ranges, as the user wrote it. The order is kept (`--task 3-4,2` lists 3, 4,
// then 2); normalized() sorts and removes duplicates.
class IdSet {
 public:
  IdSet() = default;
  explicit IdSet(std::vector<IdRange> ranges);

  // Parses "1-10,20,30-40:2". Rejects empty items, reversed ranges, a zero step and numbers that
  // do not fit 32 bits, with a message naming the offending item.
  static Result<IdSet> parse(std::string_view text);
  static IdSet single(uint32_t id) { return IdSet({IdRange{id, id, 1}}); }
  static IdSet range(uint32_t first, uint32_t last) { return IdSet({IdRange{first, last, 1}}); }

  const std::vector<IdRange>& ranges() const { return ranges_; }
  bool empty() const { return ranges_.empty(); }
  // Number of ids counted with repetition.
  uint64_t size() const;
  bool contains(uint32_t id) const;
  // Calls f(id) for each id in the written order.
  template <typename F>
  void for_each(F&& f) const {
    for (const IdRange& r : ranges_) {
      for (uint64_t id = r.start; id <= r.end; id += r.step) f(static_cast<uint32_t>(id));
    }
  }
  std::vector<uint32_t> to_vector() const;

  // Sorted, duplicate-free, with adjacent ids merged into ranges.
  IdSet normalized() const;
  // Compact text form of the normalized set: "1-3,7,9-13:2".
  std::string to_string() const;

  bool operator==(const IdSet&) const = default;

 private:
  std::vector<IdRange> ranges_;
};

// Builds a compact IdSet from ids (or ranges) given in increasing order.
class IdSetBuilder {
 public:
  void add(uint32_t id);
  // Adds a whole range; its start must not be below the last id added, except that a step-1
  // range may overlap the previous range (the overlap is dropped).
  void add_range(IdRange range);
  IdSet build() &&;

 private:
  std::vector<IdRange> ranges_;
};

}  // namespace hq
