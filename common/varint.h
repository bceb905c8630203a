#pragma once
// LEB128 variable-length integers (7 bits per byte, low bits first) and the zigzag mapping of
// signed values onto them, for the compact encodings of task records (scheduler/task_table.cc).

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

namespace hq {

inline uint64_t zigzag(int64_t v) {
  return (static_cast<uint64_t>(v) << 1) ^ static_cast<uint64_t>(v >> 63);
}
inline int64_t unzigzag(uint64_t v) {
  return static_cast<int64_t>(v >> 1) ^ -static_cast<int64_t>(v & 1);
}

// a - b and a + b modulo 2^64: deltas of any two times round-trip, without signed overflow.
inline int64_t wrap_sub(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b));
}
inline int64_t wrap_add(int64_t a, int64_t b) {
  return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b));
}

inline void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// Writes `v` at `out`, which has room for ten bytes; returns the end of what it wrote.
inline uint8_t* put_varint(uint8_t* out, uint64_t v) {
  while (v >= 0x80) {
    *out++ = static_cast<uint8_t>((v & 0x7f) | 0x80);
    v >>= 7;
  }
  *out++ = static_cast<uint8_t>(v);
  return out;
}

// Reads one value at `pos` of `data[0, size)` and moves `pos` past it; nullopt on a value cut
// off by the end or longer than ten bytes.
inline std::optional<uint64_t> get_varint(const uint8_t* data, size_t size, size_t& pos) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64 && pos < size; shift += 7) {
    const uint8_t b = data[pos++];
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  return std::nullopt;
}

}  // namespace hq
