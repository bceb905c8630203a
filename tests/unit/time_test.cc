#include "common/time.h"

#include <gtest/gtest.h>

namespace hq {
namespace {

TEST(Duration, ParsesUnits) {
  EXPECT_EQ(parse_duration("500ms")->count(), 500);
  EXPECT_EQ(parse_duration("30s")->count(), 30'000);
  EXPECT_EQ(parse_duration("5m")->count(), 300'000);
  EXPECT_EQ(parse_duration("2h")->count(), 7'200'000);
  EXPECT_EQ(parse_duration("1h30m")->count(), 5'400'000);
  EXPECT_EQ(parse_duration("1d")->count(), 86'400'000);
  EXPECT_EQ(parse_duration("12")->count(), 12'000);
}

// The spellings HyperQueue users write: spaces between parts, long unit names, HH:MM:SS.
TEST(Duration, ParsesHyperQueueSpellings) {
  EXPECT_EQ(parse_duration("1s 200ms")->count(), 1'200);
  EXPECT_EQ(parse_duration("1h 30m")->count(), 5'400'000);
  EXPECT_EQ(parse_duration("90s")->count(), 90'000);
  EXPECT_EQ(parse_duration(" 2 hours 5 minutes ")->count(), 7'500'000);
  EXPECT_EQ(parse_duration("1w")->count(), 604'800'000);
  EXPECT_EQ(parse_duration("00:10:00")->count(), 600'000);
  EXPECT_EQ(parse_duration("48:00:00")->count(), 172'800'000);
  EXPECT_EQ(parse_duration("05:30")->count(), 330'000);
  for (const char* text : {"00:60:00", "1:2:3:4", "1:", ":5", "1h:5", "10:xx"}) {
    EXPECT_FALSE(parse_duration(text).is_ok()) << text;
  }
}

TEST(Duration, RejectsBadInput) {
  for (const char* text : {"", "abc", "5x", "1h30", "-5s", "99999999999999999999s"}) {
    auto d = parse_duration(text);
    EXPECT_FALSE(d.is_ok()) << text;
  }
  EXPECT_NE(parse_duration("5x").message().find("unknown unit 'x'"), std::string::npos);
}

TEST(Duration, Formats) {
  EXPECT_EQ(format_duration(Millis(250)), "250ms");
  EXPECT_EQ(format_duration(Millis(61'000)), "1m 1s");
  EXPECT_EQ(format_duration(Millis(3'600'000)), "1h 0m 0s");
}

TEST(Iso8601, FormatsUtcWithMillis) {
  EXPECT_EQ(format_iso8601(0), "");
  EXPECT_EQ(format_iso8601(1'700'000'000'123), "2023-11-14T22:13:20.123Z");
}

}  // namespace
}  // namespace hq
