#pragma once
// Shell completion scripts made from the command tree itself: every subcommand and flag that
// `hq` parses, and nothing else, so the script cannot drift from the binary.

#include <string>
#include <string_view>

#include <CLI/CLI.hpp>

#include "common/result.h"

namespace hq::cli {

// A completion script for `shell` (bash, zsh or fish) that completes the subcommands and the
// flags of `app`'s tree; an error names the shells there are.
Result<std::string> completion_script(const CLI::App& app, std::string_view shell);

}  // namespace hq::cli
