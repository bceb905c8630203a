#include "alloc/backend.h"

#include <charconv>

#include <fmt/format.h>

namespace hq::alloc {

std::unique_ptr<Backend> make_slurm_backend();  // alloc/slurm.cc
std::unique_ptr<Backend> make_pbs_backend();    // alloc/pbs.cc

std::string_view manager_name(ManagerKind kind) {
  return kind == ManagerKind::kSlurm ? "slurm" : "pbs";
}

Result<ManagerKind> parse_manager(std::string_view text) {
  if (text == "slurm") return ManagerKind::kSlurm;
  if (text == "pbs") return ManagerKind::kPbs;
  return Error{fmt::format("unknown batch system '{}': expected slurm or pbs", text)};
}

std::string_view state_name(AllocationState state) {
  switch (state) {
    case AllocationState::kQueued:
      return "queued";
    case AllocationState::kRunning:
      return "running";
    case AllocationState::kFinished:
      return "finished";
    case AllocationState::kFailed:
      return "failed";
  }
  return "unknown";
}

std::unique_ptr<Backend> make_backend(ManagerKind kind) {
  return kind == ManagerKind::kSlurm ? make_slurm_backend() : make_pbs_backend();
}

std::string_view trim_space(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\n";
  while (!s.empty() && kSpace.find(s.front()) != std::string_view::npos) s.remove_prefix(1);
  while (!s.empty() && kSpace.find(s.back()) != std::string_view::npos) s.remove_suffix(1);
  return s;
}

std::vector<std::string_view> text_lines(std::string_view text) {
  std::vector<std::string_view> out;
  while (!text.empty()) {
    auto eol = text.find('\n');
    std::string_view line = trim_space(text.substr(0, eol));
    text = eol == std::string_view::npos ? std::string_view() : text.substr(eol + 1);
    if (!line.empty()) out.push_back(line);
  }
  return out;
}

Error command_error(std::string_view command, const CommandOutput& output) {
  std::string_view words = trim_space(output.err);
  if (words.empty()) words = trim_space(output.out);
  if (words.empty()) words = "no output";
  return Error{fmt::format("{} failed (exit {}): {}", command, output.exit_code, words)};
}

std::string shell_quote(std::string_view word) {
  bool plain = !word.empty();
  for (char c : word) {
    bool safe = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                std::string_view("-_./=:,+@%").find(c) != std::string_view::npos;
    if (!safe) plain = false;
  }
  if (plain) return std::string(word);
  std::string out = "'";
  for (char c : word) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

std::string format_hms(Millis d) {
  int64_t s = (d.count() + 999) / 1000;
  return fmt::format("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
}

namespace {

Result<int64_t> number(std::string_view part, std::string_view whole) {
  int64_t v = 0;
  auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), v);
  if (part.empty() || ec != std::errc() || end != part.data() + part.size() || v < 0) {
    return Error{fmt::format("invalid time '{}': expected [D-]HH:MM:SS, MM:SS or MM", whole)};
  }
  return v;
}

}  // namespace

Result<Millis> parse_walltime(std::string_view text) {
  std::string_view rest = text;
  int64_t days = 0;
  bool has_days = false;
  if (auto dash = rest.find('-'); dash != std::string_view::npos) {
    auto d = number(rest.substr(0, dash), text);
    if (!d) return d.error();
    days = *d;
    has_days = true;
    rest = rest.substr(dash + 1);
  }
  std::vector<int64_t> parts;
  while (true) {
    auto colon = rest.find(':');
    auto p = number(rest.substr(0, colon), text);
    if (!p) return p.error();
    parts.push_back(*p);
    if (colon == std::string_view::npos) break;
    rest = rest.substr(colon + 1);
  }
  if (parts.size() > 3) return number("", text).error();
  int64_t h = 0, m = 0, s = 0;
  if (has_days) {  // D-H, D-H:M, D-H:M:S
    h = parts[0];
    if (parts.size() > 1) m = parts[1];
    if (parts.size() > 2) s = parts[2];
  } else if (parts.size() == 1) {  // M
    m = parts[0];
  } else if (parts.size() == 2) {  // M:S
    m = parts[0];
    s = parts[1];
  } else {  // H:M:S
    h = parts[0];
    m = parts[1];
    s = parts[2];
  }
  return Millis{(((days * 24 + h) * 60 + m) * 60 + s) * 1000};
}

std::string worker_command(const AllocationSpec& spec, ManagerKind kind) {
  std::vector<std::string> words{
      spec.hq_binary, "worker",       "start", "--manager", std::string(manager_name(kind)),
      "--server-dir", spec.server_dir};
  if (spec.worker_time_limit) {
    words.push_back("--time-limit");
    words.push_back(fmt::format("{}ms", spec.worker_time_limit->count()));
  }
  words.insert(words.end(), spec.worker_args.begin(), spec.worker_args.end());
  std::string out = spec.worker_wrap_cmd.empty() ? "" : spec.worker_wrap_cmd + " ";
  for (size_t i = 0; i < words.size(); ++i) {
    if (i > 0) out += ' ';
    out += shell_quote(words[i]);
  }
  return out;
}

std::string worker_script(const AllocationSpec& spec, ManagerKind kind, std::string_view launcher) {
  std::string node;
  if (!spec.worker_start_cmd.empty()) node += spec.worker_start_cmd + "\n";
  node += worker_command(spec, kind) + "\n";
  if (!spec.worker_stop_cmd.empty()) {
    node += "status=$?\n" + spec.worker_stop_cmd + "\nexit $status\n";
  }
  std::string out =
      fmt::format("#!/bin/bash\n# An hq allocation of queue '{}': {} worker(s), one per node.\n",
                  spec.name.empty() ? "hq" : spec.name, spec.workers);
  if (spec.workers <= 1) return out + node;
  return out + fmt::format("{} /bin/bash -c {}\n", launcher, shell_quote(node));
}

}  // namespace hq::alloc
