#include "common/placeholders.h"

#include <filesystem>

namespace hq {
namespace {

// Calls on_text(text) for literal runs and on_name(name, raw) for each %{NAME}.
template <typename OnText, typename OnName>
void scan(std::string_view pattern, OnText&& on_text, OnName&& on_name) {
  size_t pos = 0;
  while (pos < pattern.size()) {
    size_t open = pattern.find("%{", pos);
    if (open == std::string_view::npos) break;
    size_t close = pattern.find('}', open + 2);
    if (close == std::string_view::npos) break;
    on_text(pattern.substr(pos, open - pos));
    on_name(pattern.substr(open + 2, close - open - 2), pattern.substr(open, close - open + 1));
    pos = close + 1;
  }
  on_text(pattern.substr(pos));
}

const std::string* lookup(std::string_view name, const PlaceholderValues& v) {
  if (name == "JOB_ID") return &v.job_id;
  if (name == "TASK_ID") return &v.task_id;
  if (name == "INSTANCE_ID") return &v.instance_id;
  if (name == "CWD") return &v.cwd;
  if (name == "SUBMIT_DIR") return &v.submit_dir;
  if (name == "SERVER_UID") return &v.server_uid;
  return nullptr;
}

// The placeholders with one value for a whole job.
bool job_wide(std::string_view name) {
  return name == "JOB_ID" || name == "SUBMIT_DIR" || name == "SERVER_UID";
}

}  // namespace

std::string expand_placeholders(std::string_view pattern, const PlaceholderValues& values) {
  std::string out;
  out.reserve(pattern.size() + 16);
  scan(
      pattern, [&](std::string_view text) { out += text; },
      [&](std::string_view name, std::string_view raw) {
        const std::string* value = lookup(name, values);
        out += value ? std::string_view(*value) : raw;
      });
  return out;
}

std::vector<std::string> unknown_placeholders(std::string_view pattern) {
  static const PlaceholderValues kEmpty;
  std::vector<std::string> unknown;
  scan(
      pattern, [](std::string_view) {},
      [&](std::string_view name, std::string_view) {
        if (!lookup(name, kEmpty)) unknown.emplace_back(name);
      });
  return unknown;
}

std::string resolve_stream_dir(std::string_view pattern, const PlaceholderValues& values) {
  std::string expanded;
  scan(
      pattern, [&](std::string_view text) { expanded += text; },
      [&](std::string_view name, std::string_view raw) {
        const std::string* value = job_wide(name) ? lookup(name, values) : nullptr;
        expanded += value ? std::string_view(*value) : raw;
      });
  std::filesystem::path path(expanded);
  if (path.is_relative()) path = std::filesystem::path(values.submit_dir) / path;
  return path.lexically_normal().string();
}

std::vector<std::string> per_task_placeholders(std::string_view pattern) {
  static const PlaceholderValues kEmpty;
  std::vector<std::string> found;
  scan(
      pattern, [](std::string_view) {},
      [&](std::string_view name, std::string_view) {
        if (lookup(name, kEmpty) && !job_wide(name)) found.emplace_back(name);
      });
  return found;
}

}  // namespace hq
