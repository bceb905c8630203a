#pragma once
// The sources of task entries (HQ_ENTRY): `hq submit --each-line FILE` and `--from-json FILE`.

#include <string>
#include <vector>

#include "common/result.h"

namespace hq::cli {

// One entry per line of the file, without its line break ("\n"; a trailing one ends the last line
// rather than starting an empty one). Errors name the file.
Result<std::vector<std::string>> read_line_entries(const std::string& path);

// One entry per element of the file's top-level JSON array, each written back as compact JSON.
// Errors name the file: unreadable, invalid JSON (with the position), not an array.
Result<std::vector<std::string>> read_json_entries(const std::string& path);

// Keeps the entries of `ids` (indices into `entries`, increasing); fails, naming `flag` and the
// first id past the end, when one is not an index of `entries`.
Result<std::vector<std::string>> select_entries(std::vector<std::string> entries,
                                                const std::vector<uint32_t>& ids,
                                                const std::string& flag);

}  // namespace hq::cli
