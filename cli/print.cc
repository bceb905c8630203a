#include "cli/print.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>

#include "common/resources.h"
#include "common/time.h"
#include "net/convert.h"

namespace hq::cli {

namespace {

void measure(const std::vector<std::string>& row, std::vector<size_t>& width) {
  for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
    width[i] = std::max(width[i], row[i].size());
  }
}

void print_line(const std::vector<std::string>& row, const std::vector<size_t>& width,
                std::string& out) {
  for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
    out += row[i];
    if (i + 1 < row.size()) out.append(width[i] - row[i].size() + 2, ' ');
  }
  out += '\n';
}

}  // namespace

std::string Table::render() const {
  std::vector<size_t> width(header_.size(), 0);
  measure(header_, width);
  for (const auto& row : rows_) measure(row, width);
  std::string out;
  print_line(header_, width, out);
  for (const auto& row : rows_) print_line(row, width, out);
  return out;
}

std::string Table::render_more() {
  if (width_.empty()) width_.assign(header_.size(), 0);
  measure(header_, width_);
  for (const auto& row : rows_) measure(row, width_);
  std::string out;
  if (!header_done_) print_line(header_, width_, out);
  header_done_ = true;
  for (const auto& row : rows_) print_line(row, width_, out);
  rows_.clear();
  return out;
}

std::string render_pairs(const std::vector<std::pair<std::string, std::string>>& pairs) {
  size_t width = 0;
  for (const auto& [k, v] : pairs) width = std::max(width, k.size());
  std::string out;
  for (const auto& [k, v] : pairs) out += fmt::format("{:<{}}  {}\n", k + ":", width + 1, v);
  return out;
}

const char* state_name(wire::TaskState s) {
  switch (s) {
    case wire::TaskState::WAITING:
      return "waiting";
    case wire::TaskState::RUNNING:
      return "running";
    case wire::TaskState::FINISHED:
      return "finished";
    case wire::TaskState::FAILED:
      return "failed";
    case wire::TaskState::CANCELED:
      return "canceled";
    case wire::TaskState::ABORTED:
      return "aborted";
  }
  return "unknown";
}

const char* state_name(wire::JobState s) {
  switch (s) {
    case wire::JobState::WAITING:
      return "waiting";
    case wire::JobState::RUNNING:
      return "running";
    case wire::JobState::FINISHED:
      return "finished";
    case wire::JobState::FAILED:
      return "failed";
    case wire::JobState::CANCELED:
      return "canceled";
    case wire::JobState::ABORTED:
      return "aborted";
    case wire::JobState::OPENED:
      return "opened";
  }
  return "unknown";
}

const char* state_name(wire::WorkerState s) { return net::worker_state_name(s); }

std::string state_text(wire::WorkerState s) {
  std::string text = state_name(s);
  for (char& c : text) c = c == '_' ? ' ' : static_cast<char>(std::toupper(c));
  return text;
}

std::string counts_text(wire::TaskCounts::Reader c) {
  std::string out;
  auto add = [&](const char* name, uint32_t n) {
    if (n) out += fmt::format("{}{} {}", out.empty() ? "" : ", ", name, n);
  };
  add("running", c.getRunning());
  add("waiting", c.getWaiting());
  add("finished", c.getFinished());
  add("failed", c.getFailed());
  add("canceled", c.getCanceled());
  add("aborted", c.getAborted());
  return out.empty() ? "none" : out;
}

std::string resources_text(wire::WorkerSummary::Reader w) {
  auto resources = net::from_wire(w.getResources());
  if (!resources || resources->resources.empty()) return fmt::format("cpus {}", w.getCpus());
  return describe(*resources);
}

}  // namespace hq::cli
