#include "common/id_set.h"

#include <gtest/gtest.h>

namespace hq {
namespace {

std::vector<uint32_t> ids(std::string_view text) {
  auto set = IdSet::parse(text);
  EXPECT_TRUE(set.is_ok()) << set.message();
  return set ? set->to_vector() : std::vector<uint32_t>{};
}

TEST(IdSet, ParsesSinglesRangesAndSteps) {
  EXPECT_EQ(ids("7"), (std::vector<uint32_t>{7}));
  EXPECT_EQ(ids("1-3"), (std::vector<uint32_t>{1, 2, 3}));
  EXPECT_EQ(ids("1-10,20,30-40:5"),
            (std::vector<uint32_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 20, 30, 35, 40}));
  EXPECT_EQ(ids("30-41:5"), (std::vector<uint32_t>{30, 35, 40}));
  EXPECT_EQ(ids(" 2 , 0 "), (std::vector<uint32_t>{2, 0}));
  EXPECT_EQ(ids("4294967295"), (std::vector<uint32_t>{4294967295u}));
}

TEST(IdSet, KeepsWrittenOrder) { EXPECT_EQ(ids("3-4,2"), (std::vector<uint32_t>{3, 4, 2})); }

TEST(IdSet, RejectsBadInputWithMessage) {
  struct Case {
    const char* text;
    const char* message;
  } cases[] = {
      {"", "empty id set"},          {"1,,2", "empty item"},  {"5-2", "reversed range"},
      {"1-5:0", "zero step"},        {"a", "invalid id 'a'"}, {"1-", "invalid id ''"},
      {"4294967296", "invalid id"},  {"-3", "invalid id ''"}, {"3:2", "a step needs a range"},
      {"1-2-3", "invalid id '2-3'"},
  };
  for (const auto& c : cases) {
    auto r = IdSet::parse(c.text);
    ASSERT_FALSE(r.is_ok()) << c.text;
    EXPECT_NE(r.message().find(c.message), std::string::npos) << c.text << " -> " << r.message();
  }
}

TEST(IdSet, SizeContainsAndNormalize) {
  IdSet s = *IdSet::parse("5,1-3,2,10-20:5");
  EXPECT_EQ(s.size(), 8u);
  EXPECT_TRUE(s.contains(15));
  EXPECT_FALSE(s.contains(16));
  EXPECT_FALSE(s.contains(4));
  IdSet n = s.normalized();
  EXPECT_EQ(n.to_vector(), (std::vector<uint32_t>{1, 2, 3, 5, 10, 15, 20}));
  EXPECT_EQ(s.to_string(), "1-3,5-20:5");
  EXPECT_EQ(IdSet::parse("10-20:5,5,1-3")->to_string(), "1-3,5,10-20:5");
}

TEST(IdSet, ToStringRoundTrips) {
  for (const char* text : {"0", "1-3,7,9-13:2", "1-1000000", "2,4,7,8,9"}) {
    IdSet set = *IdSet::parse(text);
    IdSet again = *IdSet::parse(set.to_string());
    EXPECT_EQ(set.normalized().to_vector(), again.to_vector()) << text;
  }
  EXPECT_EQ(IdSet::parse("1,2,3,5,7,9")->to_string(), "1-3,5-9:2");
}

TEST(IdSet, LargeRangeIsCompact) {
  IdSet set = *IdSet::parse("0-99999999");
  EXPECT_EQ(set.size(), 100000000u);
  EXPECT_EQ(set.ranges().size(), 1u);
  EXPECT_EQ(set.normalized().ranges().size(), 1u);
  // Overlapping unit ranges merge without listing their ids.
  IdSet merged = IdSet::parse("0-99999999,50-200000000,200000001").value().normalized();
  EXPECT_EQ(merged.to_string(), "0-200000001");
  // The full 32-bit range has 2^32 ids.
  EXPECT_EQ(IdSet::parse("0-4294967295")->size(), 4294967296u);
}

TEST(IdSet, NormalizedDropsDuplicatesOfOverlappingRanges) {
  IdSet set = *IdSet::parse("1,3,3-5");
  EXPECT_EQ(set.size(), 5u);
  EXPECT_EQ(set.normalized().size(), 4u);
  EXPECT_EQ(set.normalized().to_vector(), (std::vector<uint32_t>{1, 3, 4, 5}));
  EXPECT_EQ(IdSet::parse("2-9,1-3,4")->normalized().to_string(), "1-9");
}

}  // namespace
}  // namespace hq
