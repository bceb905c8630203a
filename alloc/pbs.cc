// PBS (PBS Professional / OpenPBS): qsub, `qstat -f -F json`, qdel, written against their
// documented commands and output (no PBS runs here; tests/unit/alloc_pbs_test.cc holds samples).

#include <algorithm>
#include <charconv>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "alloc/backend.h"

namespace hq::alloc {
namespace {

using nlohmann::json;

// A walltime as qstat prints it ("01:00:00"), or a number of seconds as qsub accepts it.
Result<Millis> pbs_walltime(std::string_view text) {
  if (text.find(':') == std::string_view::npos) {
    int64_t seconds = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), seconds);
    if (text.empty() || ec != std::errc() || end != text.data() + text.size() || seconds < 0) {
      return Error{fmt::format("invalid walltime '{}': expected HH:MM:SS or seconds", text)};
    }
    return Millis{seconds * 1000};
  }
  return parse_walltime(text);
}

// qstat's job_state letters.
Result<AllocationState> pbs_state(std::string_view state, const json& job) {
  if (state == "Q" || state == "H" || state == "W" || state == "T" || state == "M" ||
      state == "B") {
    return AllocationState::kQueued;
  }
  if (state == "R" || state == "E" || state == "S" || state == "U") {
    return AllocationState::kRunning;
  }
  if (state == "F" || state == "X") {
    // 0: the worker ended; 271 = 256 + SIGTERM: qdel; -29: killed at its walltime.
    if (!job.contains("Exit_status")) return AllocationState::kFinished;
    const json& code = job["Exit_status"];
    if (!code.is_number_integer()) return AllocationState::kFailed;
    int64_t c = code.get<int64_t>();
    return c == 0 || c == 271 || c == -29 ? AllocationState::kFinished : AllocationState::kFailed;
  }
  return Error{fmt::format("qstat printed an unknown job state '{}'", state)};
}

// Every stderr line says that a job is unknown or finished (not an error of the command).
bool only_ended_jobs(const CommandOutput& output) {
  std::vector<std::string_view> lines = text_lines(output.err);
  for (std::string_view line : lines) {
    if (line.find("Unknown Job Id") == std::string_view::npos &&
        line.find("Job has finished") == std::string_view::npos) {
      return false;
    }
  }
  return !lines.empty();
}

Result<json> qstat_json(const CommandOutput& output) {
  if (output.exit_code != 0 && !only_ended_jobs(output)) return command_error("qstat", output);
  if (trim_space(output.out).empty()) return json::object();
  json doc = json::parse(output.out, nullptr, false);
  if (doc.is_discarded() || !doc.is_object()) {
    return Error{"qstat -F json printed something that is not a JSON object"};
  }
  if (!doc.contains("Jobs")) return json::object();
  if (!doc["Jobs"].is_object()) return Error{"qstat -F json printed 'Jobs' that is not an object"};
  return doc["Jobs"];
}

std::string text_field(const json& object, const char* key) {
  auto it = object.find(key);
  if (it == object.end()) return "";
  return it->is_string() ? it->get<std::string>() : it->dump();
}

class PbsBackend final : public Backend {
 public:
  ManagerKind kind() const override { return ManagerKind::kPbs; }

  std::string batch_script(const AllocationSpec& spec) const override {
    return worker_script(spec, kind(), "pbsdsh --");
  }

  std::vector<std::string> submit_command(const AllocationSpec& spec,
                                          const std::string& script_path,
                                          bool hold) const override {
    std::vector<std::string> argv{
        "qsub",
        "-N",
        "hq-" + (spec.name.empty() ? std::string("alloc") : spec.name),
        "-o",
        spec.log_dir + "/stdout",
        "-e",
        spec.log_dir + "/stderr",
        "-l",
        "walltime=" + format_hms(spec.time_limit),
        "-l",
        fmt::format("select={}", spec.workers),
    };
    if (hold) argv.push_back("-h");
    argv.insert(argv.end(), spec.batch_args.begin(), spec.batch_args.end());
    argv.push_back(script_path);
    return argv;
  }

  Result<std::string> parse_submit(const CommandOutput& output) const override {
    if (output.exit_code != 0) return command_error("qsub", output);
    // "1234.server": the whole line is the id.
    std::vector<std::string_view> lines = text_lines(output.out);
    if (lines.empty() || lines.back().find(' ') != std::string_view::npos) {
      return Error{fmt::format("qsub printed no job id: '{}'", trim_space(output.out))};
    }
    return std::string(lines.back());
  }

  std::vector<std::string> status_command(const std::vector<std::string>& ids) const override {
    std::vector<std::string> argv{"qstat", "-f", "-F", "json", "-x"};
    argv.insert(argv.end(), ids.begin(), ids.end());
    return argv;
  }

  Result<std::map<std::string, AllocationStatus>> parse_status(
      const CommandOutput& output) const override {
    auto jobs = qstat_json(output);
    if (!jobs) return jobs.error();
    std::map<std::string, AllocationStatus> out;
    for (const auto& [id, job] : jobs->items()) {
      if (!job.is_object() || !job.contains("job_state") || !job["job_state"].is_string()) {
        return Error{fmt::format("qstat printed job {} without a job_state", id)};
      }
      std::string state = job["job_state"].get<std::string>();
      auto s = pbs_state(state, job);
      if (!s) return Error{fmt::format("{} (job {})", s.message(), id)};
      AllocationStatus status{*s, "job_state " + state};
      if (std::string code = text_field(job, "Exit_status"); !code.empty()) {
        status.detail += ", exit status " + code;
      }
      if (std::string comment = text_field(job, "comment"); !comment.empty()) {
        status.detail += " (" + comment + ")";
      }
      out[id] = std::move(status);
    }
    return out;
  }

  std::vector<std::string> cancel_command(const std::vector<std::string>& ids) const override {
    std::vector<std::string> argv{"qdel"};
    argv.insert(argv.end(), ids.begin(), ids.end());
    return argv;
  }

  Status parse_cancel(const CommandOutput& output) const override {
    if (output.exit_code == 0 || only_ended_jobs(output)) return Status::ok();
    return command_error("qdel", output);
  }

  std::string_view job_id_variable() const override { return "PBS_JOBID"; }

  std::vector<std::string> remaining_time_command(const std::string& id) const override {
    return {"qstat", "-f", "-F", "json", id};
  }

  Result<std::optional<Millis>> parse_remaining_time(const CommandOutput& output) const override {
    if (output.exit_code != 0) return command_error("qstat", output);
    auto jobs = qstat_json(output);
    if (!jobs) return jobs.error();
    if (jobs->size() != 1) {
      return Error{fmt::format("qstat printed {} jobs where one was asked for", jobs->size())};
    }
    const json& job = jobs->begin().value();
    std::string limit;
    if (job.contains("Resource_List") && job["Resource_List"].is_object()) {
      limit = text_field(job["Resource_List"], "walltime");
    }
    if (limit.empty()) return std::optional<Millis>();  // no walltime: unlimited
    auto total = pbs_walltime(limit);
    if (!total) return Error{"qstat printed a walltime that is not one: " + total.message()};
    Millis used{0};
    if (job.contains("resources_used") && job["resources_used"].is_object()) {
      if (std::string u = text_field(job["resources_used"], "walltime"); !u.empty()) {
        auto t = pbs_walltime(u);
        if (!t) return Error{"qstat printed a used walltime that is not one: " + t.message()};
        used = *t;
      }
    }
    return std::optional<Millis>(std::max(Millis{0}, *total - used));
  }
};

}  // namespace

std::unique_ptr<Backend> make_pbs_backend() { return std::make_unique<PbsBackend>(); }

}  // namespace hq::alloc
