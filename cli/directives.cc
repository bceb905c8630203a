#include "cli/directives.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include <fmt/format.h>

namespace hq::cli {
namespace {

// `hq submit` options a directive may give: the job's own, as HyperQueue allows.
constexpr std::string_view kValued[] = {
    "--name",         "--array",      "--cpus",        "--resource",  "--pin",
    "--nodes",        "--cwd",        "--stdout",      "--stderr",    "--env",
    "--stream",       "--time-limit", "--crash-limit", "--max-fails", "--priority",
    "--time-request", "--each-line",  "--from-json",   "--job",       "--deps"};
constexpr std::string_view kFlags[] = {"--task-dir"};
constexpr std::string_view kNotInDirectives[] = {"--wait", "--stdin", "--directives", "--progress"};

template <size_t N>
bool among(const std::string_view (&list)[N], std::string_view name) {
  return std::find(std::begin(list), std::end(list), name) != std::end(list);
}

bool blank(char c) { return c == ' ' || c == '\t'; }

}  // namespace

std::vector<DirectiveLine> extract_directives(std::string_view script) {
  script = script.substr(0, std::min(script.size(), kDirectivesPrefixBytes));
  std::vector<DirectiveLine> out;
  size_t line_no = 0;
  size_t start = 0;
  while (start < script.size()) {
    size_t end = script.find('\n', start);
    if (end == std::string_view::npos) end = script.size();
    std::string_view line = script.substr(start, end - start);
    start = end + 1;
    ++line_no;
    while (!line.empty() && (blank(line.front()) || line.front() == '\r')) line.remove_prefix(1);
    while (!line.empty() && (blank(line.back()) || line.back() == '\r')) line.remove_suffix(1);
    if (line.starts_with("#HQ") && (line.size() == 3 || blank(line[3]))) {
      std::string_view text = line.substr(3);
      while (!text.empty() && blank(text.front())) text.remove_prefix(1);
      if (!text.empty()) out.push_back({line_no, std::string(text)});
      continue;
    }
    if (line.empty() || line.front() == '#') continue;
    break;
  }
  return out;
}

Result<std::vector<std::string>> split_directive(std::string_view text) {
  std::vector<std::string> args;
  std::string current;
  bool in_word = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (blank(c)) {
      if (in_word) args.push_back(std::move(current)), current.clear();
      in_word = false;
      continue;
    }
    in_word = true;
    if (c == '\\' && i + 1 < text.size() && (blank(text[i + 1]) || text[i + 1] == '"')) {
      current += text[++i];
    } else if (c == '"') {
      size_t j = i + 1;
      for (; j < text.size() && text[j] != '"'; ++j) {
        if (text[j] == '\\' && j + 1 < text.size() && text[j + 1] == '"') ++j;
        current += text[j];
      }
      if (j >= text.size()) {
        return Error{fmt::format("unterminated quote in '{}'", text)};
      }
      i = j;
    } else {
      current += c;
    }
  }
  if (in_word) args.push_back(std::move(current));
  return args;
}

Result<std::vector<std::string>> directive_args(std::string_view script,
                                                const std::string& source) {
  std::vector<std::string> out;
  for (const DirectiveLine& d : extract_directives(script)) {
    auto where = fmt::format("{}:{}", source, d.line);
    auto args = split_directive(d.text);
    if (!args) return Error{fmt::format("{}: invalid #HQ directive: {}", where, args.message())};
    for (size_t i = 0; i < args->size(); ++i) {
      const std::string& a = (*args)[i];
      std::string_view name = std::string_view(a).substr(0, a.find('='));
      if (among(kNotInDirectives, name)) {
        return Error{
            fmt::format("{}: {} cannot be given in a #HQ directive (give it on the "
                        "command line)",
                        where, name)};
      }
      if (among(kFlags, name) && name.size() == a.size()) {
        out.push_back(a);
      } else if (among(kValued, name)) {
        out.push_back(a);
        if (name.size() == a.size()) {
          if (i + 1 >= args->size()) {
            return Error{fmt::format("{}: {} in a #HQ directive needs a value", where, name)};
          }
          out.push_back((*args)[++i]);
        }
      } else {
        return Error{
            fmt::format("{}: '{}' is not an option of hq submit that a #HQ directive "
                        "can give",
                        where, a)};
      }
    }
  }
  return out;
}

Result<std::string> read_stdin() {
  std::string data;
  char buffer[65536];
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0)
      return Error{fmt::format("cannot read the standard input: {}", std::strerror(errno))};
    if (n == 0) break;
    data.append(buffer, static_cast<size_t>(n));
  }
  return data;
}

Status apply_directives(std::vector<std::string>& args, size_t submit_at,
                        const std::vector<std::string>& program,
                        std::optional<std::string>& stdin_data) {
  std::string mode = "auto";
  bool with_stdin = false;
  for (size_t i = submit_at + 1; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--directives" && i + 1 < args.size()) mode = args[++i];
    if (a.starts_with("--directives=")) mode = a.substr(std::strlen("--directives="));
    if (a == "--stdin") with_stdin = true;
  }
  if (mode != "auto" && mode != "file" && mode != "stdin" && mode != "off") {
    return Status::error(
        fmt::format("invalid --directives '{}': use auto, file, stdin or off", mode));
  }
  if (mode == "stdin" && !with_stdin) {
    return Status::error(
        "--directives stdin reads the directives from the standard input: "
        "give --stdin too");
  }
  if (with_stdin) {
    auto data = read_stdin();
    if (!data) return Status::error(data.message());
    stdin_data = std::move(*data);
  }
  if (mode == "off" || program.empty()) return Status::ok();
  if (mode == "auto" && !program[0].ends_with(".sh")) return Status::ok();
  std::string script;
  std::string source;
  if (mode == "stdin") {
    script = stdin_data->substr(0, kDirectivesPrefixBytes);
    source = "<stdin>";
  } else {
    source = program[0];
    std::ifstream in(source, std::ios::binary);
    if (!in) {
      return Status::error(
          fmt::format("cannot read #HQ directives from '{}': {} (use "
                      "--directives off to submit it without reading it)",
                      source, std::strerror(errno)));
    }
    script.resize(kDirectivesPrefixBytes);
    in.read(script.data(), static_cast<std::streamsize>(script.size()));
    script.resize(static_cast<size_t>(in.gcount()));
  }
  auto extra = directive_args(script, source);
  if (!extra) return Status::error(extra.message());
  args.insert(args.begin() + static_cast<std::ptrdiff_t>(submit_at) + 1, extra->begin(),
              extra->end());
  return Status::ok();
}

}  // namespace hq::cli
