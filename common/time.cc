#include "common/time.h"

#include <charconv>
#include <ctime>

#include <fmt/format.h>

namespace hq {

int64_t unix_millis_now() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string format_iso8601(int64_t unix_ms) {
  if (unix_ms == 0) return "";
  time_t secs = static_cast<time_t>(unix_ms / 1000);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", tm.tm_year + 1900, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, unix_ms % 1000);
}

Result<Millis> parse_duration(std::string_view text) {
  std::string_view rest = text;
  if (rest.empty()) return Error{"empty duration: expected e.g. 30s, 5m, 1h30m"};
  int64_t total_ms = 0;
  bool plain_number = true;
  while (!rest.empty()) {
    uint64_t value = 0;
    auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), value);
    if (ec != std::errc() || ptr == rest.data()) {
      return Error{fmt::format("invalid duration '{}': expected e.g. 30s, 5m, 1h30m", text)};
    }
    rest.remove_prefix(ptr - rest.data());
    size_t unit_len = 0;
    while (unit_len < rest.size() && std::isalpha(static_cast<unsigned char>(rest[unit_len]))) {
      ++unit_len;
    }
    std::string_view unit = rest.substr(0, unit_len);
    rest.remove_prefix(unit_len);
    int64_t scale;
    if (unit.empty()) {
      if (!plain_number || !rest.empty()) {
        return Error{fmt::format("invalid duration '{}': a number needs a unit here", text)};
      }
      scale = 1000;
    } else if (unit == "ms") {
      scale = 1;
    } else if (unit == "s") {
      scale = 1000;
    } else if (unit == "m" || unit == "min") {
      scale = 60'000;
    } else if (unit == "h") {
      scale = 3'600'000;
    } else if (unit == "d") {
      scale = 86'400'000;
    } else {
      return Error{
          fmt::format("invalid duration '{}': unknown unit '{}' (use ms, s, m, h, d)", text, unit)};
    }
    plain_number = false;
    if (value > static_cast<uint64_t>(INT64_MAX / scale) ||
        total_ms > INT64_MAX - static_cast<int64_t>(value) * scale) {
      return Error{fmt::format("duration '{}' is too long", text)};
    }
    total_ms += static_cast<int64_t>(value) * scale;
  }
  return Millis(total_ms);
}

std::string format_duration(Millis d) {
  int64_t ms = d.count();
  if (ms < 1000) return fmt::format("{}ms", ms);
  int64_t s = ms / 1000;
  std::string out;
  if (s >= 86400) out += fmt::format("{}d ", s / 86400), s %= 86400;
  if (s >= 3600 || !out.empty()) out += fmt::format("{}h ", s / 3600), s %= 3600;
  if (s >= 60 || !out.empty()) out += fmt::format("{}m ", s / 60), s %= 60;
  out += fmt::format("{}s", s);
  return out;
}

}  // namespace hq
