#include "cli/entries.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace hq::cli {
namespace {

Result<std::string> read_whole(const std::string& path, const char* flag) {
  std::ifstream in(path, std::ios::binary);
  if (!in)
    return Error{fmt::format("{} '{}': cannot read it: {}", flag, path, std::strerror(errno))};
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return Error{fmt::format("{} '{}': cannot read it", flag, path)};
  return text.str();
}

}  // namespace

Result<std::vector<std::string>> read_line_entries(const std::string& path) {
  auto text = read_whole(path, "--each-line");
  if (!text) return text.error();
  std::vector<std::string> entries;
  size_t start = 0;
  while (start < text->size()) {
    size_t end = text->find('\n', start);
    if (end == std::string::npos) end = text->size();
    entries.emplace_back(text->substr(start, end - start));
    start = end + 1;
  }
  return entries;
}

Result<std::vector<std::string>> read_json_entries(const std::string& path) {
  auto text = read_whole(path, "--from-json");
  if (!text) return text.error();
  nlohmann::json root;
  try {
    root = nlohmann::json::parse(*text);
  } catch (const nlohmann::json::parse_error& e) {
    return Error{
        fmt::format("--from-json '{}': invalid JSON at byte {}: {}", path, e.byte, e.what())};
  }
  if (!root.is_array()) {
    return Error{
        fmt::format("--from-json '{}': the top-level JSON value is {} {}, not an array "
                    "(one task per element)",
                    path, root.is_object() ? "an" : "a", root.type_name())};
  }
  std::vector<std::string> entries;
  entries.reserve(root.size());
  for (const auto& element : root) {
    entries.push_back(element.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }
  return entries;
}

Result<std::vector<std::string>> select_entries(std::vector<std::string> entries,
                                                const std::vector<uint32_t>& ids,
                                                const std::string& flag) {
  std::vector<std::string> out;
  out.reserve(ids.size());
  for (uint32_t id : ids) {
    if (id >= entries.size()) {
      return Error{fmt::format("invalid --array: task {} has no entry in {} ({} entries, ids 0-{})",
                               id, flag, entries.size(), entries.empty() ? 0 : entries.size() - 1)};
    }
    out.push_back(std::move(entries[id]));
  }
  return out;
}

}  // namespace hq::cli
