#pragma once
// What `--output-mode json` prints: HyperQueue's shapes and key names wherever hq shows the same
// information, hq's additions under keys of their own. docs/json.md describes every shape, and
// tests/integration/test_json_shapes.py holds the output to it.
//
// Times are ISO 8601 strings in UTC, durations seconds as a number, absent values null.

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "common/job_spec.h"
#include "net/protocol.capnp.h"

namespace hq::cli {

nlohmann::json time_json(int64_t unix_ms);      // null for 0
nlohmann::json duration_json(uint64_t millis);  // null for 0

// A job's tasks per state, as HyperQueue's `task_stats`.
nlohmann::json task_stats_json(wire::TaskCounts::Reader counts);
// A job as `hq job list` shows it (and `info` inside `hq job info`).
nlohmann::json job_json(wire::JobSummary::Reader job);
// One task. `paths` are the instance's resolved directory and files (null when unknown).
nlohmann::json task_json(wire::TaskInfo::Reader task, const TaskPaths* paths);
// `hq job info`: the job, its submit (the task description) and `tasks` as given.
nlohmann::json job_detail_json(wire::JobDetail::Reader detail, nlohmann::json tasks);
// `hq job wait`, `hq submit --wait`: counts of the waited jobs by how they ended.
nlohmann::json wait_json(capnp::List<wire::JobSummary>::Reader jobs, int64_t waited_ms);
// HyperQueue's resource descriptor: a one-group indexed resource is a "list" of values, one of
// several groups "groups", a sum resource "sum" with its size (`hq worker hwdetect`).
nlohmann::json resources_json(const ResourceDescriptor& descriptor);
nlohmann::json worker_json(wire::WorkerSummary::Reader worker);
nlohmann::json server_info_json(wire::ServerInfo::Reader info);

}  // namespace hq::cli
