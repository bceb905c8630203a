#include "cli/json_output.h"

#include <algorithm>

#include "cli/print.h"
#include "common/resources.h"
#include "common/time.h"
#include "net/convert.h"

namespace hq::cli {

using nlohmann::json;

json time_json(int64_t unix_ms) {
  if (unix_ms == 0) return nullptr;
  return format_iso8601(unix_ms);
}

json duration_json(uint64_t millis) {
  if (millis == 0) return nullptr;
  return static_cast<double>(millis) / 1000.0;
}

namespace {

json text_or_null(capnp::Text::Reader text) {
  if (text.size() == 0) return nullptr;
  return text.cStr();
}

uint32_t task_total(wire::TaskCounts::Reader c) {
  return c.getWaiting() + c.getRunning() + c.getFinished() + c.getFailed() + c.getCanceled() +
         c.getAborted();
}

// HyperQueue's name of a request's policy, keyed to the amount in 1/10,000 of a unit.
json request_json(const ResourceRequestEntry& e) {
  const char* policy = "Compact";
  switch (e.policy) {
    case AllocationPolicy::kAll:
      return "All";
    case AllocationPolicy::kCompact:
      policy = "Compact";
      break;
    case AllocationPolicy::kForceCompact:
      policy = "ForceCompact";
      break;
    case AllocationPolicy::kTight:
      policy = "Tight";
      break;
    case AllocationPolicy::kForceTight:
      policy = "ForceTight";
      break;
    case AllocationPolicy::kScatter:
      policy = "Scatter";
      break;
  }
  return {{policy, e.amount}};
}

// One channel of the task description: its path pattern, "<stream>" when it goes into the
// job's stream, null when discarded.
json channel_json(const std::string& path, bool streamed) {
  if (!path.empty()) return path;
  if (streamed) return "<stream>";
  return nullptr;
}

json task_description_json(const JobDescriptionSpec& job) {
  const TaskBodySpec& body = job.body;
  const bool streamed = !job.stream.empty();
  json env = json::object();
  for (const auto& [k, v] : body.env) env[k] = v;
  json entries = json::array();
  for (const auto& e : task_request(body, job.nodes).entries) {
    entries.push_back({{"resource", e.name}, {"request", request_json(e)}});
  }
  json pin = nullptr;
  if (body.pin == PinMode::kTaskset) pin = "taskset";
  if (body.pin == PinMode::kOmp) pin = "openmp";
  return {{"program",
           {{"args", body.program},
            {"env", env},
            {"cwd", body.cwd},
            {"stdout", channel_json(body.stdout_path, streamed)},
            {"stderr", channel_json(body.stderr_path, streamed)},
            // hq's additions
            {"stdin", body.stdin_data.empty() ? json(nullptr) : json(body.stdin_data)},
            {"stdout_rm_if_finished", body.stdout_rm_if_finished},
            {"stderr_rm_if_finished", body.stderr_rm_if_finished}}},
          {"resources",
           json::array({{{"n_nodes", job.nodes > 1 ? job.nodes : 0},
                         {"resources", entries},
                         {"min_time", static_cast<double>(body.time_request_ms) / 1000.0}}})},
          {"pin_mode", pin},
          {"priority", job.priority},
          {"time_limit", duration_json(body.time_limit_ms)},
          {"task_dir", body.task_dir},
          {"crash_limit", job.crash_limit},
          // hq's addition: HQ_ENTRY of each task in id order (null: none, or more than 1000)
          {"entries", job.entries.empty() ? json(nullptr) : json(job.entries)}};
}

}  // namespace

json task_stats_json(wire::TaskCounts::Reader c) {
  return {{"waiting", c.getWaiting()}, {"running", c.getRunning()},   {"finished", c.getFinished()},
          {"failed", c.getFailed()},   {"canceled", c.getCanceled()}, {"aborted", c.getAborted()}};
}

json job_json(wire::JobSummary::Reader job) {
  auto c = job.getCounts();
  return {{"id", job.getId()},
          {"name", job.getName().cStr()},
          {"task_count", task_total(c)},
          {"is_open", job.getIsOpen()},
          {"task_stats", task_stats_json(c)},
          // hq's additions
          {"state", state_name(job.getState())},
          {"submitted_at", time_json(job.getSubmitTime())},
          {"finished_at", time_json(job.getEndTime())}};
}

json task_json(wire::TaskInfo::Reader task, const TaskPaths* paths) {
  json j = {{"id", task.getId()},
            {"state", state_name(task.getState())},
            // hq's additions
            {"instance", task.getInstance()},
            {"crash_count", task.getCrashCount()},
            {"reattached", task.getReattached()}};
  if (paths) {
    j["cwd"] = paths->cwd;
    j["stdout"] = paths->stdout_path.empty() ? json(nullptr) : json(paths->stdout_path);
    j["stderr"] = paths->stderr_path.empty() ? json(nullptr) : json(paths->stderr_path);
  }
  // As HyperQueue: a waiting task has no times; a started one has its start and worker.
  if (task.getDeps().size() > 0) {
    json deps = json::array();
    for (uint32_t d : task.getDeps()) deps.push_back(d);
    j["deps"] = std::move(deps);
  }
  const auto state = task.getState();
  if (state == wire::TaskState::WAITING) return j;
  const bool ran = state == wire::TaskState::RUNNING || state == wire::TaskState::FINISHED ||
                   state == wire::TaskState::FAILED;
  if (ran && task.getStartTime()) {
    j["started_at"] = time_json(task.getStartTime());
    if (task.getWorker()) j["worker"] = task.getWorker();
  }
  if (state != wire::TaskState::RUNNING && task.getEndTime()) {
    j["finished_at"] = time_json(task.getEndTime());
  }
  if (state == wire::TaskState::FAILED || task.getError().size() > 0) {
    j["error"] = task.getError().cStr();
  }
  if (task.getAbortedByJob() != 0) {
    j["aborted_by"] = {{"job", task.getAbortedByJob()}, {"task", task.getAbortedByTask()}};
  }
  return j;
}

json job_detail_json(wire::JobDetail::Reader detail, json tasks) {
  auto s = detail.getSummary();
  auto desc = detail.getDescription();
  json submit = nullptr;
  json ids = nullptr;
  if (auto job = net::from_wire(desc); job) {
    if (job->tasks.empty()) {
      submit = {{"array", task_description_json(*job)}};
    } else {
      // HyperQueue's shape for a job file's tasks: one entry per task, its id and deps beside
      // the description.
      json graph = json::array();
      for (const GraphTaskSpec& t : job->tasks) {
        JobDescriptionSpec one = *job;
        one.tasks.clear();
        one.body = t.body;
        json entry = task_description_json(one);
        entry["id"] = t.id;
        entry["deps"] = t.deps;
        graph.push_back(std::move(entry));
      }
      submit = {{"graph", std::move(graph)}};
    }
    ids = job->task_ids.to_string();
  }
  return {{"info", job_json(s)},
          {"max_fails", desc.getMaxFails() >= 0 ? json(desc.getMaxFails()) : json(nullptr)},
          {"started_at", time_json(s.getSubmitTime())},
          {"finished_at", time_json(s.getEndTime())},
          {"submit_dir", desc.getBody().getSubmitDir().cStr()},
          {"submits", submit.is_null() ? json::array() : json::array({submit})},
          {"tasks", std::move(tasks)},
          // hq's additions
          {"task_ids", ids},
          {"stream", text_or_null(desc.getStream())},
          {"dependencies", detail.getDependencies()}};
}

json wait_json(capnp::List<wire::JobSummary>::Reader jobs, int64_t waited_ms) {
  uint32_t finished = 0, failed = 0, canceled = 0;
  json list = json::array();
  for (auto job : jobs) {
    auto state = job.getState();
    if (state == wire::JobState::OPENED) {
      // Waited without its close (`--without-close`): judged by the tasks it has.
      auto c = job.getCounts();
      state = c.getCanceled() > 0                       ? wire::JobState::CANCELED
              : c.getFailed() > 0 || c.getAborted() > 0 ? wire::JobState::FAILED
                                                        : wire::JobState::FINISHED;
    }
    switch (state) {
      case wire::JobState::FINISHED:
        ++finished;
        break;
      case wire::JobState::CANCELED:
        ++canceled;
        break;
      default:
        ++failed;
        break;
    }
    list.push_back(job_json(job));
  }
  return {{"duration", static_cast<double>(std::max<int64_t>(waited_ms, 0)) / 1000.0},
          {"finished", finished},
          {"failed", failed},
          {"canceled", canceled},
          {"invalid", 0},
          // hq's addition
          {"jobs", list}};
}

namespace {}  // namespace

json resources_json(const ResourceDescriptor& descriptor) {
  json out = json::array();
  for (const ResourceDefinition& r : descriptor.resources) {
    if (r.kind == ResourceKind::kSum) {
      out.push_back({{"name", r.name}, {"kind", "sum"}, {"size", r.sum}});
    } else if (r.groups.size() == 1) {
      out.push_back({{"name", r.name}, {"kind", "list"}, {"values", r.groups[0]}});
    } else {
      out.push_back({{"name", r.name}, {"kind", "groups"}, {"groups", r.groups}});
    }
  }
  return {{"resources", out}};
}

json worker_json(wire::WorkerSummary::Reader w) {
  ResourceDescriptor resources;
  if (auto d = net::from_wire(w.getResources()); d) resources = std::move(*d);
  json time_limit = nullptr;
  if (w.getLimitTime() && w.getConnectTime()) {
    time_limit = duration_json(
        static_cast<uint64_t>(std::max<int64_t>(w.getLimitTime() - w.getConnectTime(), 0)));
  }
  json ended = nullptr;
  if (w.getEndTime()) ended = {{"at", time_json(w.getEndTime())}};
  return {{"id", w.getId()},
          {"configuration",
           {{"heartbeat_interval", duration_json(w.getHeartbeatMs())},
            {"idle_timeout", duration_json(w.getIdleTimeoutMs())},
            {"on_server_lost", text_or_null(w.getOnServerLost())},
            {"hostname", w.getHostname().cStr()},
            {"work_dir", w.getWorkDir().cStr()},
            {"group", w.getGroup().cStr()},
            {"listen_address", w.getAddress().cStr()},
            {"time_limit", time_limit},
            {"resources", resources_json(resources)}}},
          {"allocation", nullptr},
          {"started", time_json(w.getConnectTime())},
          {"ended", ended},
          // hq's additions
          {"state", state_name(w.getState())},
          {"end_reason", text_or_null(w.getEndReason())},
          {"pid", w.getPid()},
          {"cpus", w.getCpus()},
          {"running_tasks", w.getRunningTasks()},
          {"reattach_count", w.getReattachCount()},
          {"reattached_at", time_json(w.getReattachTime())}};
}

json server_info_json(wire::ServerInfo::Reader info) {
  return {{"server_dir", info.getServerDir().cStr()},
          {"server_uid", info.getServerUid().cStr()},
          {"client_host", info.getHost().cStr()},
          {"worker_host",
           info.getWorkerHost().size() ? info.getWorkerHost().cStr() : info.getHost().cStr()},
          {"client_port", info.getClientPort()},
          {"worker_port", info.getWorkerPort()},
          {"pid", info.getPid()},
          {"start_date", time_json(info.getStartTime())},
          {"version", info.getVersion().cStr()},
          // hq's additions
          {"journal", text_or_null(info.getJournal())},
          {"journal_error", text_or_null(info.getJournalError())},
          {"restored_jobs", info.getRestoredJobs()},
          {"restored_tasks", info.getRestoredTasks()},
          {"replay_ms", info.getReplayMs()}};
}

}  // namespace hq::cli
