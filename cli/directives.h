#pragma once
// `#HQ` directives (HyperQueue's): `hq submit` options written in comment lines at the top of
// the submitted script, e.g. `#HQ --cpus 4 --name sim`. Options given on the command line win.

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"

namespace hq::cli {

// Only this much of a script's start is scanned for directives.
inline constexpr size_t kDirectivesPrefixBytes = 32 * 1024;

struct DirectiveLine {
  size_t line = 0;   // 1-based
  std::string text;  // after "#HQ "
};

// The directives at the top of `script`: lines starting (after blanks) with "#HQ " up to the
// first line that is neither empty nor a comment ("#..."; a shebang is one). Only the first
// kDirectivesPrefixBytes are read.
std::vector<DirectiveLine> extract_directives(std::string_view script);

// Splits one directive into arguments: blanks separate them, double quotes group (a `\"` inside
// is a quote), a backslash outside quotes makes the next blank or quote literal.
Result<std::vector<std::string>> split_directive(std::string_view text);

// The `hq submit` arguments the directives of `script` give, checked: only job options (not
// --wait, --stdin, --directives), each known. Errors name `source` and the line.
Result<std::vector<std::string>> directive_args(std::string_view script, const std::string& source);

// `hq submit` before CLI11 parses it: with `--directives auto` (the default; only for a program
// whose name ends in ".sh"), `file` or `stdin`, inserts the arguments of the directives of the
// program's file (or of the standard input, which is then read into `stdin_data`) right after
// the `submit` word at `args[submit_at]`, so that the command line's own options, later, win.
// `program` is what follows the options.
Status apply_directives(std::vector<std::string>& args, size_t submit_at,
                        const std::vector<std::string>& program,
                        std::optional<std::string>& stdin_data);

// Reads the whole standard input.
Result<std::string> read_stdin();

}  // namespace hq::cli
