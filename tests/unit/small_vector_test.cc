#include "common/small_vector.h"

#include <cstdint>
#include <utility>
#include <vector>

#include <gtest/gtest.h>

namespace hq {
namespace {

struct Entry {
  uint32_t a = 0;
  uint64_t b = 0;
  bool operator==(const Entry&) const = default;
};
using Small = SmallVector<Entry, 2>;

std::vector<Entry> contents(const Small& v) { return {v.begin(), v.end()}; }

Small filled(uint32_t n) {
  Small v;
  for (uint32_t i = 0; i < n; ++i) v.push_back({i, uint64_t{i} * 10});
  return v;
}

TEST(SmallVector, KeepsItsFirstEntriesInline) {
  Small v = filled(2);
  EXPECT_EQ(v.capacity(), 2u);
  // Inline storage lies inside the object itself.
  auto* self = reinterpret_cast<const unsigned char*>(&v);
  auto* first = reinterpret_cast<const unsigned char*>(v.data());
  EXPECT_TRUE(first >= self && first < self + sizeof(v));
  EXPECT_EQ(contents(v), (std::vector<Entry>{{0, 0}, {1, 10}}));
}

TEST(SmallVector, GrowsOntoTheHeapKeepingItsEntries) {
  Small v = filled(9);
  EXPECT_EQ(v.size(), 9u);
  EXPECT_GE(v.capacity(), 9u);
  for (uint32_t i = 0; i < 9; ++i) EXPECT_EQ(v[i], (Entry{i, uint64_t{i} * 10}));
  v.clear();
  EXPECT_TRUE(v.empty());
  v.push_back({7, 7});
  EXPECT_EQ(contents(v), (std::vector<Entry>{{7, 7}}));
}

TEST(SmallVector, CopiesAndMovesInlineAndHeapContents) {
  for (uint32_t n : {0u, 1u, 2u, 3u, 17u}) {
    const Small original = filled(n);
    Small copy = original;
    EXPECT_EQ(contents(copy), contents(original)) << n;
    Small moved = std::move(copy);
    EXPECT_EQ(contents(moved), contents(original)) << n;
    EXPECT_TRUE(copy.empty()) << n;  // a moved-from vector is left empty
    Small assigned = filled(5);
    assigned = original;
    EXPECT_EQ(contents(assigned), contents(original)) << n;
    Small move_assigned = filled(4);
    move_assigned = std::move(assigned);
    EXPECT_EQ(contents(move_assigned), contents(original)) << n;
    EXPECT_TRUE(move_assigned == original) << n;
    // Still usable after being moved from.
    assigned.push_back({1, 1});
    EXPECT_EQ(assigned.size(), 1u) << n;
  }
}

TEST(SmallVector, AppendsItsOwnEntryWhileGrowing) {
  // Full inline (the heap pointer takes the inline bytes) and full on the heap (the old block is
  // freed): the value pushed is one of the vector's own entries.
  for (uint32_t n : {2u, 4u}) {
    Small v = filled(n);
    ASSERT_EQ(v.size(), v.capacity());
    v.push_back(v[0]);
    v.push_back(v[n]);
    EXPECT_EQ(v[n], (Entry{0, 0})) << n;
    EXPECT_EQ(v[n + 1], (Entry{0, 0})) << n;
    EXPECT_EQ(v[1], (Entry{1, 10})) << n;
  }
}

TEST(SmallVector, BuildsFromAListAndReservesAhead) {
  Small v{{1, 2}, {3, 4}, {5, 6}};
  EXPECT_EQ(contents(v), (std::vector<Entry>{{1, 2}, {3, 4}, {5, 6}}));
  Small r;
  r.reserve(40);
  const Entry* before = r.data();
  for (uint32_t i = 0; i < 40; ++i) r.push_back({i, i});
  EXPECT_EQ(r.data(), before);  // no reallocation within the reserved capacity
  EXPECT_FALSE(r == v);
}

}  // namespace
}  // namespace hq
