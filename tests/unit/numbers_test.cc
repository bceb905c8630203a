#include "common/numbers.h"

#include <gtest/gtest.h>

namespace hq {
namespace {

TEST(ParseUnsigned, DigitsWithOrWithoutUnderscores) {
  EXPECT_EQ(parse_unsigned("0"), 0u);
  EXPECT_EQ(parse_unsigned("42"), 42u);
  EXPECT_EQ(parse_unsigned("10_000"), 10'000u);
  EXPECT_EQ(parse_unsigned("1000_000"), 1'000'000u);
  EXPECT_EQ(parse_unsigned("18446744073709551615"), UINT64_MAX);
  EXPECT_EQ(parse_unsigned("4294967295", UINT32_MAX), UINT32_MAX);
}

TEST(ParseUnsigned, RejectsEverythingElse) {
  for (const char* text : {"", "_1", "1_", "1__0", "-1", "+1", " 1", "1 ", "1.5", "0x10", "a"}) {
    EXPECT_FALSE(parse_unsigned(text).has_value()) << "'" << text << "'";
  }
  EXPECT_FALSE(parse_unsigned("18446744073709551616").has_value());
  EXPECT_FALSE(parse_unsigned("4294967296", UINT32_MAX).has_value());
}

}  // namespace
}  // namespace hq
