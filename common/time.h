#pragma once
// Wall-clock helpers for the daemons and the CLI. The scheduler takes times as arguments and never
// reads a clock itself.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/result.h"

namespace hq {

using Millis = std::chrono::milliseconds;

// Milliseconds since the Unix epoch.
int64_t unix_millis_now();

// "2026-11-26T06:54:47.123Z" (UTC). 0 formats as an empty string (no time).
std::string format_iso8601(int64_t unix_ms);

// Parses durations such as "500ms", "30s", "5m", "2h", "1h30m", "1d" or a plain number of seconds.
Result<Millis> parse_duration(std::string_view text);

// "1h 2m 3s" / "350ms": short human form.
std::string format_duration(Millis d);

}  // namespace hq
