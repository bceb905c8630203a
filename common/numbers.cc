#include "common/numbers.h"

namespace hq {

std::optional<uint64_t> parse_unsigned(std::string_view text, uint64_t max) {
  if (text.empty() || text.front() == '_' || text.back() == '_') return std::nullopt;
  uint64_t value = 0;
  char previous = 0;
  for (char c : text) {
    if (c == '_') {
      if (previous == '_') return std::nullopt;
    } else if (c >= '0' && c <= '9') {
      const uint64_t digit = static_cast<uint64_t>(c - '0');
      if (value > (max - digit) / 10) return std::nullopt;
      value = value * 10 + digit;
    } else {
      return std::nullopt;
    }
    previous = c;
  }
  return value;
}

}  // namespace hq
