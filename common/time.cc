#include "common/time.h"

#include <charconv>
#include <ctime>
#include <optional>

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

namespace {

constexpr const char* kDurationHint = "expected e.g. 30s, 5m, 1h 30m, 1s 200ms or 00:10:00";

// Milliseconds per unit, in the spellings HyperQueue accepts (humantime's); 0: unknown.
int64_t unit_scale(std::string_view unit) {
  struct Unit {
    std::string_view name;
    int64_t ms;
  };
  static constexpr Unit kUnits[] = {
      {"ms", 1},           {"msec", 1},           {"millis", 1},
      {"s", 1000},         {"sec", 1000},         {"secs", 1000},
      {"second", 1000},    {"seconds", 1000},     {"m", 60'000},
      {"min", 60'000},     {"mins", 60'000},      {"minute", 60'000},
      {"minutes", 60'000}, {"h", 3'600'000},      {"hr", 3'600'000},
      {"hrs", 3'600'000},  {"hour", 3'600'000},   {"hours", 3'600'000},
      {"d", 86'400'000},   {"day", 86'400'000},   {"days", 86'400'000},
      {"w", 604'800'000},  {"week", 604'800'000}, {"weeks", 604'800'000}};
  for (const Unit& u : kUnits) {
    if (u.name == unit) return u.ms;
  }
  return 0;
}

// "HH:MM:SS" or "MM:SS" (as SLURM and PBS write times); nullopt when `text` is not of that form.
std::optional<Result<Millis>> parse_clock(std::string_view text) {
  if (text.find(':') == std::string_view::npos) return std::nullopt;
  int64_t parts[3] = {};
  int n = 0;
  std::string_view rest = text;
  while (true) {
    uint64_t value = 0;
    auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), value);
    if (ec != std::errc() || ptr == rest.data() || n == 3 || value > 1'000'000'000) {
      return Result<Millis>(Error{fmt::format("invalid duration '{}': {}", text, kDurationHint)});
    }
    parts[n++] = static_cast<int64_t>(value);
    rest.remove_prefix(ptr - rest.data());
    if (rest.empty()) break;
    if (rest[0] != ':') {
      return Result<Millis>(Error{fmt::format("invalid duration '{}': {}", text, kDurationHint)});
    }
    rest.remove_prefix(1);
  }
  if (n < 2) {
    return Result<Millis>(Error{fmt::format("invalid duration '{}': {}", text, kDurationHint)});
  }
  const int64_t hours = n == 3 ? parts[0] : 0;
  const int64_t minutes = parts[n - 2], seconds = parts[n - 1];
  if (minutes >= 60 || seconds >= 60) {
    return Result<Millis>(Error{
        fmt::format("invalid duration '{}': minutes and seconds go up to 59 in HH:MM:SS", text)});
  }
  return Result<Millis>(Millis(((hours * 60 + minutes) * 60 + seconds) * 1000));
}

}  // namespace

Result<Millis> parse_duration(std::string_view text) {
  auto is_space = [](char c) { return c == ' ' || c == '\t'; };
  while (!text.empty() && is_space(text.front())) text.remove_prefix(1);
  while (!text.empty() && is_space(text.back())) text.remove_suffix(1);
  if (text.empty()) return Error{fmt::format("empty duration: {}", kDurationHint)};
  if (auto clock = parse_clock(text)) return std::move(*clock);
  std::string_view rest = text;
  int64_t total_ms = 0;
  bool plain_number = true;
  while (!rest.empty()) {
    uint64_t value = 0;
    auto [ptr, ec] = std::from_chars(rest.data(), rest.data() + rest.size(), value);
    if (ec == std::errc::result_out_of_range) {
      return Error{fmt::format("duration '{}' is too long", text)};
    }
    if (ec != std::errc() || ptr == rest.data()) {
      return Error{fmt::format("invalid duration '{}': {}", text, kDurationHint)};
    }
    rest.remove_prefix(ptr - rest.data());
    while (!rest.empty() && is_space(rest.front())) rest.remove_prefix(1);
    size_t unit_len = 0;
    while (unit_len < rest.size() && std::isalpha(static_cast<unsigned char>(rest[unit_len]))) {
      ++unit_len;
    }
    std::string_view unit = rest.substr(0, unit_len);
    rest.remove_prefix(unit_len);
    while (!rest.empty() && is_space(rest.front())) rest.remove_prefix(1);
    int64_t scale;
    if (unit.empty()) {
      if (!plain_number || !rest.empty()) {
        return Error{fmt::format("invalid duration '{}': a number needs a unit here", text)};
      }
      scale = 1000;  // a plain number: seconds
    } else if ((scale = unit_scale(unit)) == 0) {
      return Error{fmt::format("invalid duration '{}': unknown unit '{}' (use ms, s, m, h, d or w)",
                               text, unit)};
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
