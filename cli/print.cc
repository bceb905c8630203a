#include "cli/print.h"

#include <algorithm>
#include <cctype>

#include <fmt/format.h>

#include "common/resources.h"
#include "common/time.h"
#include "net/convert.h"

namespace hq::cli {

std::string Table::render() const {
  std::vector<size_t> width(header_.size(), 0);
  auto measure = [&](const std::vector<std::string>& row) {
    for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
      width[i] = std::max(width[i], row[i].size());
    }
  };
  measure(header_);
  for (const auto& row : rows_) measure(row);
  auto line = [&](const std::vector<std::string>& row) {
    std::string out;
    for (size_t i = 0; i < row.size() && i < width.size(); ++i) {
      out += row[i];
      if (i + 1 < row.size()) out += std::string(width[i] - row[i].size() + 2, ' ');
    }
    out += '\n';
    return out;
  };
  std::string out = line(header_);
  for (const auto& row : rows_) out += line(row);
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

nlohmann::json counts_json(wire::TaskCounts::Reader c) {
  return {{"waiting", c.getWaiting()}, {"running", c.getRunning()},   {"finished", c.getFinished()},
          {"failed", c.getFailed()},   {"canceled", c.getCanceled()}, {"aborted", c.getAborted()}};
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

namespace {
nlohmann::json time_json(int64_t ms) {
  if (ms == 0) return nullptr;
  return format_iso8601(ms);
}
}  // namespace

nlohmann::json job_json(wire::JobSummary::Reader job) {
  const auto& c = job.getCounts();
  return {{"id", job.getId()},
          {"name", job.getName().cStr()},
          {"state", state_name(job.getState())},
          {"task_count", c.getWaiting() + c.getRunning() + c.getFinished() + c.getFailed() +
                             c.getCanceled() + c.getAborted()},
          {"task_counts", counts_json(c)},
          {"submitted_at", time_json(job.getSubmitTime())},
          {"finished_at", time_json(job.getEndTime())}};
}

nlohmann::json task_json(wire::TaskInfo::Reader task) {
  nlohmann::json j = {
      {"id", task.getId()},
      {"state", state_name(task.getState())},
      {"instance", task.getInstance()},
      {"worker", task.getWorker() ? nlohmann::json(task.getWorker()) : nullptr},
      {"error", task.hasError() && task.getError().size() ? nlohmann::json(task.getError().cStr())
                                                          : nullptr},
      {"started_at", time_json(task.getStartTime())},
      {"finished_at", time_json(task.getEndTime())},
      {"crash_count", task.getCrashCount()}};
  return j;
}

std::string resources_text(wire::WorkerSummary::Reader w) {
  auto resources = net::from_wire(w.getResources());
  if (!resources || resources->resources.empty()) return fmt::format("cpus {}", w.getCpus());
  return describe(*resources);
}

nlohmann::json resources_json(capnp::List<wire::ResourceDefinition>::Reader defs) {
  nlohmann::json out = nlohmann::json::array();
  for (auto d : defs) {
    nlohmann::json j = {{"name", d.getName().cStr()}};
    if (d.isSum()) {
      j["kind"] = "sum";
      j["amount"] = d.getSum();
    } else {
      j["kind"] = "indexed";
      nlohmann::json groups = nlohmann::json::array();
      for (auto g : d.getGroups()) {
        nlohmann::json units = nlohmann::json::array();
        for (auto u : g) units.push_back(u.cStr());
        groups.push_back(units);
      }
      j["groups"] = groups;
    }
    out.push_back(j);
  }
  return out;
}

nlohmann::json worker_json(wire::WorkerSummary::Reader w) {
  return {
      {"resources", resources_json(w.getResources())},
      {"id", w.getId()},
      {"hostname", w.getHostname().cStr()},
      {"pid", w.getPid()},
      {"state", state_name(w.getState())},
      {"cpus", w.getCpus()},
      {"running_tasks", w.getRunningTasks()},
      {"group", w.getGroup().cStr()},
      {"time_limit_at", time_json(w.getLimitTime())},
      {"address", w.getAddress().cStr()},
      {"work_dir", w.getWorkDir().cStr()},
      {"started_at", time_json(w.getConnectTime())},
      {"ended_at", time_json(w.getEndTime())},
      {"end_reason", w.getEndReason().size() ? nlohmann::json(w.getEndReason().cStr()) : nullptr}};
}

}  // namespace hq::cli
