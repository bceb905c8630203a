#include "common/id_set.h"

#include <algorithm>

#include <fmt/format.h>

#include "common/numbers.h"

namespace hq {
namespace {

Result<uint32_t> parse_number(std::string_view text, std::string_view item) {
  std::optional<uint64_t> value = parse_unsigned(text, UINT32_MAX);
  if (!value) {
    return Error{fmt::format("invalid id '{}' in '{}': expected a number from 0 to {}", text, item,
                             UINT32_MAX)};
  }
  return static_cast<uint32_t>(*value);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

}  // namespace

IdSet::IdSet(std::vector<IdRange> ranges) : ranges_(std::move(ranges)) {}

Result<IdSet> IdSet::parse(std::string_view text) {
  std::vector<IdRange> ranges;
  if (trim(text).empty()) return Error{"empty id set: expected ids like 1-10,20,30-40:2"};
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    if (comma == std::string_view::npos) comma = text.size();
    std::string_view item = trim(text.substr(pos, comma - pos));
    pos = comma + 1;
    if (item.empty()) return Error{fmt::format("empty item in id set '{}'", text)};

    IdRange range;
    std::string_view body = item;
    size_t colon = item.find(':');
    if (colon != std::string_view::npos) {
      auto step = parse_number(item.substr(colon + 1), item);
      if (!step) return step.error();
      if (*step == 0) return Error{fmt::format("zero step in '{}'", item)};
      range.step = *step;
      body = item.substr(0, colon);
    }
    size_t dash = body.find('-');
    if (dash == std::string_view::npos) {
      if (colon != std::string_view::npos) {
        return Error{fmt::format("a step needs a range in '{}' (write START-END:STEP)", item)};
      }
      auto id = parse_number(body, item);
      if (!id) return id.error();
      range.start = range.end = *id;
    } else {
      auto first = parse_number(body.substr(0, dash), item);
      if (!first) return first.error();
      auto last = parse_number(body.substr(dash + 1), item);
      if (!last) return last.error();
      if (*last < *first) {
        return Error{fmt::format("reversed range '{}': the end is smaller than the start", item)};
      }
      range.start = *first;
      range.end = *last;
    }
    range.end = range.last();
    ranges.push_back(range);
    if (comma == text.size()) break;
  }
  return IdSet(std::move(ranges));
}

uint64_t IdSet::size() const {
  uint64_t n = 0;
  for (const IdRange& r : ranges_) n += r.size();
  return n;
}

bool IdSet::contains(uint32_t id) const {
  for (const IdRange& r : ranges_) {
    if (id >= r.start && id <= r.end && (id - r.start) % r.step == 0) return true;
  }
  return false;
}

std::vector<uint32_t> IdSet::to_vector() const {
  std::vector<uint32_t> out;
  out.reserve(size());
  for_each([&](uint32_t id) { out.push_back(id); });
  return out;
}

IdSet IdSet::normalized() const {
  std::vector<IdRange> sorted = ranges_;
  std::sort(sorted.begin(), sorted.end(), [](const IdRange& a, const IdRange& b) {
    return a.start != b.start ? a.start < b.start : a.end < b.end;
  });
  bool disjoint = true;
  bool unit_steps = true;
  for (size_t i = 0; i < sorted.size(); ++i) {
    if (i > 0 && sorted[i].start <= sorted[i - 1].end) disjoint = false;
    if (sorted[i].step != 1 && sorted[i].start != sorted[i].end) unit_steps = false;
  }
  IdSetBuilder builder;
  if (disjoint || unit_steps) {
    // Whole ranges are merged without listing their ids, so "1-100000000" stays one range.
    for (const IdRange& r : sorted) builder.add_range(r);
    return std::move(builder).build();
  }
  std::vector<uint32_t> ids = to_vector();
  std::sort(ids.begin(), ids.end());
  ids.erase(std::unique(ids.begin(), ids.end()), ids.end());
  for (uint32_t id : ids) builder.add(id);
  return std::move(builder).build();
}

std::string IdSet::to_string() const {
  IdSet n = normalized();
  std::string out;
  for (const IdRange& r : n.ranges_) {
    if (!out.empty()) out += ',';
    if (r.start == r.end) {
      out += fmt::format("{}", r.start);
    } else if (r.step == 1) {
      out += fmt::format("{}-{}", r.start, r.end);
    } else {
      out += fmt::format("{}-{}:{}", r.start, r.end, r.step);
    }
  }
  return out;
}

void IdSetBuilder::add(uint32_t id) {
  if (!ranges_.empty()) {
    IdRange& back = ranges_.back();
    if (back.start == back.end && id > back.end) {
      back.step = id - back.end;
      back.end = id;
      return;
    }
    if (id > back.end && id - back.end == back.step) {
      back.end = id;
      return;
    }
    // A two-element stepped range followed by a break is better written as singles when the
    // next id continues with step 1 from its last element.
    if (back.step > 1 && back.size() == 2 && id == back.end + 1) {
      uint32_t last = back.end;
      back.end = back.start;
      back.step = 1;
      ranges_.push_back({last, id, 1});
      return;
    }
  }
  ranges_.push_back({id, id, 1});
}

void IdSetBuilder::add_range(IdRange r) {
  if (!ranges_.empty() && r.step == 1 && r.start <= ranges_.back().end) {
    if (r.end <= ranges_.back().end) return;
    r.start = ranges_.back().end + 1;  // the overlap is already in
  }
  if (r.size() <= 2) {
    for (uint64_t id = r.start; id <= r.end; id += r.step) {
      if (ranges_.empty() || id > ranges_.back().end) add(static_cast<uint32_t>(id));
    }
    return;
  }
  if (!ranges_.empty()) {
    IdRange& back = ranges_.back();
    bool back_unit = back.step == 1 || back.start == back.end;
    if (r.step == 1 && back_unit && r.start == uint64_t{back.end} + 1) {
      back.step = 1;
      back.end = r.end;
      return;
    }
  }
  ranges_.push_back(r);
}

IdSet IdSetBuilder::build() && {
  for (IdRange& r : ranges_) {
    if (r.start == r.end) r.step = 1;
  }
  return IdSet(std::move(ranges_));
}

}  // namespace hq
