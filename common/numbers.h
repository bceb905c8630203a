#pragma once
// Whole numbers as users write them on the command line and in files.

#include <cstdint>
#include <optional>
#include <string_view>

namespace hq {

// Decimal digits, optionally grouped with underscores between digits ("10_000", "1_000_000"),
// as HyperQueue accepts them. nullopt for anything else (signs, spaces, a leading, trailing or
// doubled underscore, a value above `max`).
std::optional<uint64_t> parse_unsigned(std::string_view text, uint64_t max = UINT64_MAX);

}  // namespace hq
