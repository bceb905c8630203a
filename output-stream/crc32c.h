#pragma once
// CRC-32C (Castagnoli polynomial, reflected 0x82F63B78), the checksum of stream payloads. The
// same function as iSCSI's and ext4's: crc32c("123456789") == 0xE3069283.

#include <cstdint>
#include <span>

namespace hq::stream {

// The CRC of `data`, continuing from `crc` (the CRC of the bytes before it; 0 to start).
// Uses the SSE4.2 instruction when the CPU has it.
uint32_t crc32c(std::span<const uint8_t> data, uint32_t crc = 0);
// The same without the CPU instruction (for tests).
uint32_t crc32c_portable(std::span<const uint8_t> data, uint32_t crc = 0);

}  // namespace hq::stream
