#pragma once
// Private to journal/: the key layout of the journal's column families (journal.h and
// docs/journal-format.md describe it).

#include <cstddef>
#include <cstdint>
#include <limits>
#include <string>

#include "common/ids.h"
#include "journal/events.h"

namespace hq::journal {

inline constexpr char kFormatKey[] = "format";
// The high-water mark's file in the journal directory (journal.cc, docs/journal-format.md).
inline constexpr char kHighWaterFile[] = "HQ-HIGH-WATER";
inline constexpr char kStateKey[] = "state";
inline constexpr char kJobsFamily[] = "jobs";
inline constexpr char kGlobalFamily[] = "global";
inline constexpr size_t kJobKeySize = 12;
inline constexpr size_t kGlobalKeySize = 8;
inline constexpr Seq kNoSeq = std::numeric_limits<Seq>::max();

inline void put_be32(char* out, uint32_t v) {
  for (int i = 3; i >= 0; --i, v >>= 8) out[i] = static_cast<char>(v & 0xff);
}
inline void put_be64(char* out, uint64_t v) {
  for (int i = 7; i >= 0; --i, v >>= 8) out[i] = static_cast<char>(v & 0xff);
}
inline uint32_t get_be32(const char* in) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}
inline uint64_t get_be64(const char* in) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(in[i]);
  return v;
}

inline std::string job_key(JobId job, Seq seq) {
  std::string key(kJobKeySize, '\0');
  put_be32(key.data(), job);
  put_be64(key.data() + 4, seq);
  return key;
}
inline std::string global_key(Seq seq) {
  std::string key(kGlobalKeySize, '\0');
  put_be64(key.data(), seq);
  return key;
}
// The first key of job `job`'s events.
inline std::string job_prefix(JobId job) {
  std::string key(4, '\0');
  put_be32(key.data(), job);
  return key;
}
// The first key after every event of jobs <= `job`.
inline std::string job_prefix_after(JobId job) {
  if (job == std::numeric_limits<JobId>::max()) return std::string(kJobKeySize + 1, '\xff');
  return job_prefix(job + 1);
}

}  // namespace hq::journal
