#include "cli/commands.h"
#include "cli/command_util.h"
#include "cli/job_file.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <set>
#include <thread>

#include <fmt/format.h>

#include "cli/directives.h"
#include "cli/entries.h"
#include "cli/json_output.h"
#include "cli/print.h"
#include "common/host.h"
#include "common/placeholders.h"
#include "common/time.h"
#include "net/access.h"
#include "net/convert.h"

namespace hq::cli {
// Shared with the other command files (cli/command_util.h).

// A selector that names no job: "job 99 not found", "there is no job yet" for `last`.
CommandError no_job(const std::string& selector) {
  if (selector == "last") return CommandError{"there is no job yet"};
  auto ids = IdSet::parse(selector);
  if (ids && ids->size() == 1) {
    return CommandError{fmt::format("job {} not found", ids->ranges()[0].start)};
  }
  return CommandError{fmt::format("no job matches '{}'", selector)};
}

using nlohmann::json;

// Text that is not UTF-8 (a file name, say) is printed with replacement characters.
void print_json(const json& j) {
  std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
}

// "last", "all" or an id set such as "1-3,7".
void set_job_selector(const std::string& text, wire::JobSelector::Builder out) {
  if (text == "all") return out.setAll();
  if (text == "last") return out.setLast();
  IdSet ids = must(IdSet::parse(text), fmt::format("invalid job selector '{}' (use an id, "
                                                   "a range such as 1-4, last or all)",
                                                   text));
  net::to_wire(ids, out.initIds(ids.ranges().size()));
}

std::string current_dir() {
  std::error_code ec;
  auto cwd = fs::current_path(ec);
  return ec ? std::string(".") : cwd.string();
}

std::string time_text(int64_t ms) { return ms ? format_iso8601(ms) : ""; }

std::string duration_text(int64_t start, int64_t end) {
  if (!start) return "";
  int64_t stop = end ? end : unix_millis_now();
  return format_duration(Millis(std::max<int64_t>(stop - start, 0)));
}

// Prints the final state of waited jobs; exit 0 only when all finished.
int report_waited(const GlobalOptions& g, capnp::List<wire::JobSummary>::Reader jobs,
                  int64_t waited_ms) {
  json out = wait_json(jobs, waited_ms);
  const uint32_t n_finished = out["finished"], n_failed = out["failed"],
                 n_canceled = out["canceled"];
  switch (g.mode()) {
    case OutputMode::kJson:
      print_json(out);
      break;
    case OutputMode::kQuiet:
      break;
    case OutputMode::kCli:
      if (jobs.size() == 0) {
        std::cout << "No jobs to wait for\n";
      } else {
        std::cout << fmt::format("Wait finished: {} job(s) finished, {} failed, {} canceled\n",
                                 n_finished, n_failed, n_canceled);
      }
      break;
  }
  return n_finished == jobs.size() ? 0 : 1;
}

int wait_for(const GlobalOptions& g, Client& client, const std::string& selector,
             bool without_close) {
  const int64_t started = unix_millis_now();
  capnp::MallocMessageBuilder request;
  auto root = request.initRoot<wire::ClientRequest>();
  set_job_selector(selector, without_close ? root.initJobWaitOpen() : root.initJobWait());
  auto response = must(client.call(request));
  auto jobs = response.root<wire::ClientResponse>().getJobs();
  if (jobs.size() == 0 && selector != "all") {
    throw no_job(selector);
  }
  return report_waited(g, jobs, unix_millis_now() - started);
}

// The tasks of a job as JSON, each with its resolved directory and output files: from its own
// body in a job file's job (when the server sent the bodies: up to 1,000 tasks), else the job's.
// Calls fn(json) for each task of the job (HyperQueue's task shape), page by page.
template <typename Fn>
void for_each_task_json(Client& client, JobId job, wire::JobDescription::Reader description,
                        const std::string& tasks, const std::vector<wire::TaskState>& states,
                        Fn&& fn) {
  auto spec = net::from_wire(description);
  for_each_task(client, job, tasks, states, [&](wire::TaskInfo::Reader t) {
    if (!spec) return fn(task_json(t, nullptr));
    TaskPaths paths = task_paths(task_body(*spec, t.getId()), job, t.getId(), t.getInstance(),
                                 client.server_uid());
    fn(task_json(t, &paths));
  });
}

json job_tasks_json(Client& client, JobId job, wire::JobDescription::Reader description) {
  json out = json::array();
  for_each_task_json(client, job, description, "", {},
                     [&](json t) { out.push_back(std::move(t)); });
  return out;
}

// Prints a JSON array element by element, exactly as print_json() prints it whole when it sits
// `depth` levels deep: any number of tasks in bounded memory.
class JsonArrayPrinter {
 public:
  explicit JsonArrayPrinter(int depth) : pad_(2 * (depth + 1), ' ') {}
  void add(const json& element) {
    std::string text = element.dump(2, ' ', false, json::error_handler_t::replace);
    std::string out = first_ ? "[\n" : ",\n";
    first_ = false;
    out += pad_;
    for (char ch : text) {
      out += ch;
      if (ch == '\n') out += pad_;
    }
    std::cout << out;
  }
  void close() { std::cout << (first_ ? std::string("[]") : "\n" + pad_.substr(2) + "]"); }

 private:
  std::string pad_;
  bool first_ = true;
};

JobDescriptionSpec make_job_description(const SubmitOptions& o, const std::string& submit_dir,
                                        std::vector<std::string>& warnings) {
  if (o.program.empty()) throw CommandError{"no program to run: hq submit [OPTIONS] -- PROGRAM"};
  std::vector<ResourceRequestEntry> entries;
  entries.push_back(must(parse_request_entry(kCpus, o.cpus), "invalid --cpus"));
  for (const std::string& r : o.resources) {
    entries.push_back(must(parse_named_request(r), "invalid --resource"));
    if (entries.back().name == kCpus) {
      throw CommandError{"invalid --resource: request CPUs with --cpus"};
    }
  }
  ResourceRequest request = must(make_request(std::move(entries)), "invalid --resource");
  JobDescriptionSpec job;
  job.name = o.name.empty() ? fs::path(o.program[0]).filename().string() : o.name;
  // Given but empty ("" as well as " ") is an error of its own, not the default single task.
  job.task_ids = o.array ? must(IdSet::parse(*o.array), "invalid --array") : IdSet::single(0);
  // Duplicate ids would make two tasks with one id.
  if (job.task_ids.normalized().size() != job.task_ids.size()) {
    throw CommandError{fmt::format("invalid --array '{}': an id is listed twice", *o.array)};
  }
  if (o.each_line && o.from_json) {
    throw CommandError{
        "--each-line and --from-json cannot be combined: give one source of entries"};
  }
  if (o.each_line || o.from_json) {
    const char* flag = o.each_line ? "--each-line" : "--from-json";
    const std::string& file = o.each_line ? *o.each_line : *o.from_json;
    std::vector<std::string> entries =
        must(o.each_line ? read_line_entries(file) : read_json_entries(file));
    if (entries.empty()) {
      throw CommandError{fmt::format("{} '{}': no entries (the file has no {}), no task to run",
                                     flag, file, o.each_line ? "lines" : "array elements")};
    }
    if (o.array) {
      // Only the entries of those indices run, as those task ids.
      std::vector<uint32_t> ids = job.task_ids.normalized().to_vector();
      job.entries =
          must(select_entries(std::move(entries), ids, fmt::format("{} '{}'", flag, file)));
      IdSetBuilder builder;
      for (uint32_t id : ids) builder.add(id);
      job.task_ids = std::move(builder).build();
    } else {
      job.task_ids = IdSet::range(0, static_cast<uint32_t>(entries.size() - 1));
      job.entries = std::move(entries);
    }
  }
  job.priority = o.priority;
  if (!o.time_limit.empty()) {
    Millis limit = must(parse_duration(o.time_limit), "invalid --time-limit");
    if (limit.count() <= 0) throw CommandError{"invalid --time-limit: it must be positive"};
    job.body.time_limit_ms = static_cast<uint64_t>(limit.count());
  }
  if (!o.time_request.empty()) {
    Millis request = must(parse_duration(o.time_request), "invalid --time-request");
    if (request.count() <= 0) throw CommandError{"invalid --time-request: it must be positive"};
    job.body.time_request_ms = static_cast<uint64_t>(request.count());
  }
  if (o.crash_limit == "unlimited") {
    job.crash_limit = 0;
  } else if (o.crash_limit == "never-restart") {
    job.crash_limit = 1;
  } else if (!o.crash_limit.empty()) {
    char* end = nullptr;
    errno = 0;
    unsigned long n = std::strtoul(o.crash_limit.c_str(), &end, 10);
    if (o.crash_limit[0] == '-' || *end != '\0' || errno || n == 0 || n > 0xffff) {
      throw CommandError{fmt::format(
          "invalid --crash-limit '{}': use a number from 1 to 65535, never-restart or unlimited",
          o.crash_limit)};
    }
    job.crash_limit = static_cast<uint32_t>(n);
  }
  if (o.nodes > 1 && (o.cpus != "1" || !o.resources.empty())) {
    throw CommandError{
        "--nodes takes whole workers: it cannot be combined with --cpus or --resource"};
  }
  job.nodes = o.nodes;
  if (o.max_fails) {
    if (*o.max_fails < 0) throw CommandError{"invalid --max-fails: it must be 0 or more"};
    job.max_fails = *o.max_fails;
  }
  if (o.stream) {
    if (o.stream->empty()) throw CommandError{"--stream needs a directory"};
    if (auto names = per_task_placeholders(*o.stream); !names.empty()) {
      throw CommandError{fmt::format(
          "--stream names one directory for the whole job: %{{{}}} has no single value there "
          "(use %{{JOB_ID}}, %{{SUBMIT_DIR}} or %{{SERVER_UID}})",
          names[0])};
    }
    // Absolute, with %{SUBMIT_DIR} resolved; the worker resolves the rest (stream_dir()).
    PlaceholderValues known;
    known.submit_dir = submit_dir;
    known.job_id = "%{JOB_ID}";
    known.server_uid = "%{SERVER_UID}";
    job.stream = resolve_stream_dir(*o.stream, known);
  }
  bool streamed = !job.stream.empty();
  TaskBodySpec& body = job.body;
  body.program = o.program;
  body.resources = std::move(request);
  if (o.pin == "taskset") {
    body.pin = PinMode::kTaskset;
  } else if (o.pin == "omp") {
    body.pin = PinMode::kOmp;
  } else if (!o.pin.empty()) {
    throw CommandError{fmt::format("invalid --pin '{}': use taskset or omp", o.pin)};
  }
  body.submit_dir = submit_dir;
  body.cwd = o.cwd ? *o.cwd : submit_dir;
  // Without --stream, a channel goes to its --stdout/--stderr file (the default path when not
  // given; "none": discarded, sent as ""). With --stream, a channel not given goes into the
  // stream (sent as ""), and "none" is sent as /dev/null.
  // `PATH:rm-if-finished` (or `:rm-if-finished`, the default path): the file goes when the task
  // finishes.
  auto output = [&](const std::optional<std::string>& given, const char* ext,
                    bool& rm_if_finished) -> std::string {
    std::string path = given ? *given : std::string();
    constexpr std::string_view kRm = ":rm-if-finished";
    if (given && path.ends_with(kRm)) {
      rm_if_finished = true;
      path.resize(path.size() - kRm.size());
      if (path == "none") {
        throw CommandError{
            fmt::format("--{} none:rm-if-finished: there is no file to remove", ext)};
      }
      if (path.empty() && streamed) {
        throw CommandError{fmt::format(
            "--{} :rm-if-finished needs a file, but the channel goes into the --stream", ext)};
      }
      if (path.empty()) return fmt::format("%{{CWD}}/job-%{{JOB_ID}}/%{{TASK_ID}}.{}", ext);
    }
    if (!given) {
      return streamed ? "" : fmt::format("%{{CWD}}/job-%{{JOB_ID}}/%{{TASK_ID}}.{}", ext);
    }
    if (path.empty()) {
      throw CommandError{fmt::format("--{} needs a path or 'none'", ext)};
    }
    if (path == "none") return streamed ? "/dev/null" : "";
    return path;
  };
  body.stdout_path = output(o.stdout_path, "stdout", body.stdout_rm_if_finished);
  body.stderr_path = output(o.stderr_path, "stderr", body.stderr_rm_if_finished);
  body.task_dir = o.task_dir;
  if (o.stdin_flag) body.stdin_data = o.stdin_data.value_or(std::string());
  // The submission is one message (net/framing.h bounds it): refuse what would not fit.
  uint64_t bytes = body.stdin_data.size();
  for (const std::string& e : job.entries) bytes += e.size() + 8;
  if (bytes > (48u << 20)) {
    throw CommandError{fmt::format(
        "the job's entries and standard input take {} MiB; a submission holds at most 48 MiB "
        "(split the entries into several jobs)",
        bytes >> 20)};
  }
  if (streamed && o.stdout_path && o.stderr_path) {
    warnings.push_back("--stream has no effect: both --stdout and --stderr are given");
  }
  for (const auto& [flag, pattern] : {std::pair{"--cwd", body.cwd},
                                      {"--stdout", body.stdout_path},
                                      {"--stderr", body.stderr_path},
                                      {"--stream", job.stream}}) {
    for (const auto& name : unknown_placeholders(pattern)) {
      warnings.push_back(
          fmt::format("unknown placeholder %{{{}}} in {} is left as written", name, flag));
    }
  }
  for (const auto& kv : o.env) {
    size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) {
      throw CommandError{fmt::format("invalid --env '{}': expected KEY=VALUE", kv)};
    }
    body.env.emplace_back(kv.substr(0, eq), kv.substr(eq + 1));
  }
  return job;
}

std::string stream_dir(const JobDescriptionSpec& job, JobId id, const std::string& server_uid) {
  PlaceholderValues values;
  values.job_id = std::to_string(id);
  values.server_uid = server_uid;
  values.submit_dir = job.body.submit_dir;
  return resolve_stream_dir(job.stream, values);
}

namespace {

Status create_stream_dir(const std::string& dir) {
  if (auto st = create_private_directories(dir); !st) {
    return Status::error(fmt::format("cannot create stream directory '{}': {}", dir, st.message()));
  }
  return Status::ok();
}

// Prints the id of a job just submitted (`hq submit`, `hq job submit-file`); with `wait`, waits
// for it and reports as `hq job wait` does.
// With `progress`, draws the job's progress until it ends first (which implies `wait`).
int report_submitted(const GlobalOptions& g, Client& client, JobId id, bool wait,
                     bool progress = false) {
  switch (g.mode()) {
    case OutputMode::kJson:
      if (!wait) print_json({{"id", id}});
      break;
    case OutputMode::kQuiet:
      std::cout << id << "\n";
      break;
    case OutputMode::kCli:
      std::cout << fmt::format("Job submitted successfully, job ID: {}\n", id);
      break;
  }
  if (!wait && !progress) return 0;
  if (progress) show_progress(g, client, std::to_string(id));
  return wait_for(g, client, std::to_string(id));
}

}  // namespace

int cmd_submit(const GlobalOptions& g, const SubmitOptions& given) {
  SubmitOptions o = given;
  if (o.stdin_flag && !o.stdin_data) o.stdin_data = must(read_stdin());
  std::vector<std::string> warnings;
  JobDescriptionSpec job = make_job_description(o, current_dir(), warnings);
  for (const auto& w : warnings) std::cerr << "warning: " << w << "\n";
  if (o.job) {
    // Into an open job: without --array, the server numbers the tasks past its highest id.
    job.job = *o.job;
    job.auto_ids = !o.array;
  }
  if (!o.deps.empty()) {
    if (!o.job) throw CommandError{"--deps names tasks of an open job: give the job with --job"};
    job.submit_deps = must(IdSet::parse(o.deps), fmt::format("invalid --deps '{}'", o.deps));
  }
  Client client = must(Client::connect(g));
  // Workers create the stream directory too; doing it here reports a bad path before anything
  // runs, or (when it names the job, known only once submitted) at least at once.
  bool names_job = job.stream.find("%{JOB_ID}") != std::string::npos;
  if (!job.stream.empty() && !names_job) {
    if (auto st = create_stream_dir(stream_dir(job, 0, client.server_uid())); !st) {
      throw CommandError{st.message()};
    }
  }
  capnp::MallocMessageBuilder request;
  net::to_wire(job, request.initRoot<wire::ClientRequest>().initSubmit());
  auto response = must(client.call(request));
  JobId id = response.root<wire::ClientResponse>().getSubmitted();
  if (!job.stream.empty() && names_job) {
    if (auto st = create_stream_dir(stream_dir(job, id, client.server_uid())); !st) {
      std::cerr << fmt::format("warning: job {} is submitted, but its tasks will fail: {}\n", id,
                               st.message());
    }
  }
  return report_submitted(g, client, id, o.wait, o.progress);
}

int cmd_job_submit_file(const GlobalOptions& g, const std::string& file, bool wait,
                        std::optional<uint32_t> into) {
  JobFile parsed = must(read_job_file(file, /*deps_outside=*/into.has_value()));
  JobDescriptionSpec job = must(job_file_description(parsed, file, current_dir()));
  if (into) job.job = *into;
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  net::to_wire(job, request.initRoot<wire::ClientRequest>().initSubmit());
  auto response = must(client.call(request));
  JobId id = response.root<wire::ClientResponse>().getSubmitted();
  return report_submitted(g, client, id, wait);
}

int cmd_job_list(const GlobalOptions& g, bool all, const std::string& filter) {
  auto states = parse_states<wire::JobState>(filter, "job");
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setJobList();
  auto response = must(client.call(request));
  auto jobs = response.root<wire::ClientResponse>().getJobs();
  auto shown = [&](wire::JobState s) {
    if (!states.empty()) return std::find(states.begin(), states.end(), s) != states.end();
    return all || s == wire::JobState::WAITING || s == wire::JobState::RUNNING ||
           s == wire::JobState::OPENED;
  };
  json out = json::array();
  Table table({"ID", "NAME", "STATE", "TASKS"});
  for (auto job : jobs) {
    if (!shown(job.getState())) continue;
    out.push_back(job_json(job));
    // An open job is marked with '*' before its id, as HyperQueue does.
    table.add({(job.getIsOpen() ? "*" : "") + std::to_string(job.getId()), job.getName().cStr(),
               state_name(job.getState()), counts_text(job.getCounts())});
  }
  if (g.mode() == OutputMode::kJson) {
    print_json(out);
  } else if (g.mode() == OutputMode::kQuiet) {
    for (auto& j : out) std::cout << j["id"] << "\n";
  } else if (out.empty()) {
    std::cout << (all || !states.empty() ? "No jobs\n"
                                         : "No waiting or running jobs (use --all to see all)\n");
  } else {
    std::cout << table.render();
  }
  return 0;
}

int cmd_job_info(const GlobalOptions& g, const std::string& selector) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  set_job_selector(selector, request.initRoot<wire::ClientRequest>().initJobInfo());
  auto response = must(client.call(request));
  auto details = response.root<wire::ClientResponse>().getJobDetails();
  if (details.size() == 0) throw no_job(selector);
  json out = json::array();
  std::string text;
  for (auto d : details) {
    auto s = d.getSummary();
    auto desc = d.getDescription();
    auto body = desc.getBody();
    std::vector<std::string> program;
    for (auto a : body.getProgram()) program.emplace_back(a.cStr());
    auto ids = must(net::from_wire(desc.getTaskIds()));
    auto request = net::from_wire(body.getResources());
    std::string request_text = request && !request->entries.empty()
                                   ? describe(*request)
                                   : fmt::format("cpus={}", body.getCpus());
    static const char* kPins[] = {"none", "taskset", "omp"};
    const char* pin = kPins[std::min<unsigned>(static_cast<unsigned>(body.getPin()), 2)];
    std::string stream = desc.getStream().cStr();
    // An empty output path of a streamed job means "into the stream" (common/job_spec.h).
    auto output_text = [&](capnp::Text::Reader path) -> std::string {
      if (path.size() > 0) return path.cStr();
      return stream.empty() ? "none" : "stream";
    };
    if (g.mode() == OutputMode::kJson) {
      out.push_back(job_detail_json(d, job_tasks_json(client, s.getId(), desc)));
    }
    if (!text.empty()) text += "\n";
    text += render_pairs({
        {"ID", std::to_string(s.getId())},
        {"Name", s.getName().cStr()},
        {"State", state_name(s.getState())},
        {"Tasks", fmt::format("{} ({})", ids.size(), counts_text(s.getCounts()))},
        {"Task ids", ids.to_string()},
        {"Graph", d.getDependencies() == 0
                      ? std::string()
                      : fmt::format("{} tasks, {} dependencies", ids.size(), d.getDependencies())},
        {"Program", fmt::format("{}", fmt::join(program, " "))},
        {"Resources per task",
         desc.getNodes() > 1 ? fmt::format("{} whole workers", desc.getNodes()) : request_text},
        {"Pin", pin},
        {"Priority", std::to_string(desc.getPriority())},
        {"Working directory", body.getCwd().cStr()},
        {"Stdout", output_text(body.getStdout())},
        {"Stderr", output_text(body.getStderr())},
        {"Stream", stream.empty() ? "none" : stream},
        {"Entries", desc.getEntries().size() > 0 ? std::to_string(desc.getEntries().size())
                                                 : std::string("none (or more than 1000)")},
        {"Stdin", body.getStdin().size() > 0 ? fmt::format("{} bytes", body.getStdin().size())
                                             : std::string("none")},
        {"Task directory", body.getTaskDir() ? "yes" : "no"},
        {"Time limit", body.getTimeLimitMs()
                           ? format_duration(Millis(static_cast<int64_t>(body.getTimeLimitMs())))
                           : "none"},
        {"Time request", body.getTimeRequestMs() ? format_duration(Millis(static_cast<int64_t>(
                                                       body.getTimeRequestMs())))
                                                 : "none"},
        {"Crash limit", desc.getCrashLimit() ? std::to_string(desc.getCrashLimit()) : "unlimited"},
        {"Max fails", desc.getMaxFails() >= 0 ? std::to_string(desc.getMaxFails()) : "none"},
        {"Submitted", time_text(s.getSubmitTime())},
        {"Finished", time_text(s.getEndTime())},
        {"Duration", duration_text(s.getSubmitTime(), s.getEndTime())},
    });
  }
  if (g.mode() == OutputMode::kJson) {
    print_json(out);
  } else if (g.mode() == OutputMode::kCli) {
    std::cout << text;
  }
  return 0;
}

int cmd_job_cancel(const GlobalOptions& g, const std::string& selector) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  set_job_selector(selector, request.initRoot<wire::ClientRequest>().initJobCancel());
  auto response = must(client.call(request));
  auto results = response.root<wire::ClientResponse>().getCanceled();
  if (results.size() == 0) throw no_job(selector);
  json out = json::array();
  for (auto r : results) {
    out.push_back({{"id", r.getJob()}, {"canceled_tasks", r.getCanceledTasks()}});
    if (g.mode() == OutputMode::kCli) {
      if (r.getAlreadyDone()) {
        std::cout << fmt::format("Job {}: nothing to cancel, all its tasks have ended\n",
                                 r.getJob());
      } else {
        std::cout << fmt::format("Job {} canceled ({} task(s))\n", r.getJob(),
                                 r.getCanceledTasks());
      }
    }
  }
  if (g.mode() == OutputMode::kJson) print_json(out);
  return 0;
}

int cmd_job_wait(const GlobalOptions& g, const std::string& selector, bool without_close,
                 bool progress) {
  Client client = must(Client::connect(g));
  if (progress) show_progress(g, client, selector);
  return wait_for(g, client, selector, without_close);
}

JobId resolve_job(Client& client, const std::string& job) {
  if (job != "last") {
    auto ids = must(IdSet::parse(job), fmt::format("invalid job id '{}'", job));
    if (ids.size() != 1) throw CommandError{fmt::format("'{}' names more than one job", job)};
    return ids.ranges()[0].start;
  }
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().initJobInfo().setLast();
  auto response = must(client.call(request));
  auto details = response.root<wire::ClientResponse>().getJobDetails();
  if (details.size() == 0) throw CommandError{"there is no job yet"};
  return details[0].getSummary().getId();
}

namespace {

// A task's dependencies as "2,3,7"; empty for none.
std::string deps_text(capnp::List<uint32_t>::Reader deps) {
  std::string out;
  for (uint32_t d : deps) out += (out.empty() ? "" : ",") + std::to_string(d);
  return out;
}

int print_tasks(const GlobalOptions& g, Client& client, const std::string& job_text,
                const std::string& tasks, const std::string& filter, bool detailed) {
  auto states = parse_states<wire::TaskState>(filter, "task");
  JobId job = resolve_job(client, job_text);
  if (g.mode() == OutputMode::kJson) {
    capnp::MallocMessageBuilder request;
    net::to_wire(IdSet::single(job),
                 request.initRoot<wire::ClientRequest>().initJobInfo().initIds(1));
    auto response = must(client.call(request));
    auto details = response.root<wire::ClientResponse>().getJobDetails();
    if (details.size() == 0) throw no_job(std::to_string(job));
    // HyperQueue's shapes: `task list` keys the tasks by job, `task info` lists them. Printed as
    // the pages come: a job may have millions of tasks.
    if (!detailed) std::cout << "{\n  " << json(std::to_string(job)).dump() << ": ";
    JsonArrayPrinter printer(detailed ? 0 : 1);
    for_each_task_json(client, job, details[0].getDescription(), tasks, states,
                       [&](const json& t) { printer.add(t); });
    printer.close();
    std::cout << (detailed ? "\n" : "\n}\n");
    return 0;
  }
  // Printed as the pages come, in bounded memory: a job may have millions of tasks.
  constexpr size_t kRowsPerPrint = 4096;
  Table table({"TASK", "STATE", "WORKER", "INSTANCE", "STARTED", "DURATION", "ERROR"});
  bool first = true;
  for_each_task(client, job, tasks, states, [&](wire::TaskInfo::Reader t) {
    if (g.mode() != OutputMode::kCli) return;
    std::string worker = t.getWorker() ? std::to_string(t.getWorker()) : "";
    if (!detailed) {
      table.add({std::to_string(t.getId()), state_name(t.getState()), worker,
                 std::to_string(t.getInstance()), time_text(t.getStartTime()),
                 duration_text(t.getStartTime(), t.getEndTime()), t.getError().cStr()});
      if (table.pending() >= kRowsPerPrint) std::cout << table.render_more();
      return;
    }
    std::cout << (first ? "" : "\n");
    first = false;
    std::cout << render_pairs(
        {{"Job", std::to_string(job)},
         {"Task", std::to_string(t.getId())},
         {"State", state_name(t.getState())},
         {"Instance", std::to_string(t.getInstance())},
         {"Worker", worker},
         {"Started", time_text(t.getStartTime())},
         {"Finished", time_text(t.getEndTime())},
         {"Duration", duration_text(t.getStartTime(), t.getEndTime())},
         {"Survived restarts",
          t.getReattached() ? fmt::format("{} (kept running on its worker)", t.getReattached())
                            : std::string()},
         {"Dependencies", deps_text(t.getDeps())},
         {"Error", t.getError().cStr()}});
  });
  if (g.mode() == OutputMode::kCli && !detailed) std::cout << table.render_more();
  return 0;
}

}  // namespace

int cmd_task_list(const GlobalOptions& g, const std::string& job, const std::string& tasks,
                  const std::string& filter) {
  Client client = must(Client::connect(g));
  return print_tasks(g, client, job, tasks, filter, false);
}

int cmd_task_info(const GlobalOptions& g, const std::string& job, const std::string& tasks) {
  Client client = must(Client::connect(g));
  return print_tasks(g, client, job, tasks, "", true);
}

namespace {

// "N times, last at TIME" for a worker that reconnected; empty for one that never did.
std::string reattach_text(wire::WorkerSummary::Reader w) {
  if (w.getReattachCount() == 0 || w.getReattachTime() == 0) return {};
  return fmt::format("{} time(s), last at {}", w.getReattachCount(),
                     time_text(w.getReattachTime()));
}

int print_workers(const GlobalOptions& g, capnp::List<wire::WorkerSummary>::Reader workers,
                  bool all, bool detailed) {
  json out = json::array();
  Table table(
      {"ID", "STATE", "HOSTNAME", "RESOURCES", "RUNNING", "STARTED", "REATTACHED", "END REASON"});
  std::string text;
  for (auto w : workers) {
    if (!all && !w.getConnected()) continue;
    out.push_back(worker_json(w));
    table.add({std::to_string(w.getId()), state_text(w.getState()), w.getHostname().cStr(),
               resources_text(w), std::to_string(w.getRunningTasks()),
               time_text(w.getConnectTime()), reattach_text(w), w.getEndReason().cStr()});
    if (!text.empty()) text += "\n";
    text += render_pairs({{"ID", std::to_string(w.getId())},
                          {"State", state_text(w.getState())},
                          {"Hostname", w.getHostname().cStr()},
                          {"Process id", std::to_string(w.getPid())},
                          {"Address", w.getAddress().cStr()},
                          {"Resources", resources_text(w)},
                          {"Running tasks", std::to_string(w.getRunningTasks())},
                          {"Work directory", w.getWorkDir().cStr()},
                          {"Started", time_text(w.getConnectTime())},
                          {"Ended", time_text(w.getEndTime())},
                          {"Reattached", reattach_text(w)},
                          {"End reason", w.getEndReason().cStr()}});
  }
  if (g.mode() == OutputMode::kJson) {
    print_json(detailed && out.size() == 1 ? out[0] : out);
  } else if (g.mode() == OutputMode::kQuiet) {
    for (auto& j : out) std::cout << j["id"] << "\n";
  } else if (detailed) {
    std::cout << text;
  } else if (out.empty()) {
    std::cout << (all ? "No workers\n" : "No connected workers (use --all to see all)\n");
  } else {
    std::cout << table.render();
  }
  return 0;
}

}  // namespace

int cmd_task_explain(const GlobalOptions& g, uint32_t job, uint32_t task) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  auto key = request.initRoot<wire::ClientRequest>().initTaskExplain();
  key.setJob(job);
  key.setTask(task);
  auto response = must(client.call(request));
  auto e = response.root<wire::ClientResponse>().getExplanation();
  json workers = json::array();
  Table table({"WORKER", "HOSTNAME", "FITS", "WHY NOT"});
  for (auto w : e.getWorkers()) {
    const char* fits = w.getFitsNow() ? "now" : (w.getCouldFit() ? "later" : "never");
    workers.push_back({{"worker", w.getWorker()},
                       {"hostname", w.getHostname().cStr()},
                       {"fits", fits},
                       {"reason", w.getReason().cStr()}});
    table.add({std::to_string(w.getWorker()), w.getHostname().cStr(), fits, w.getReason().cStr()});
  }
  std::vector<uint32_t> waiting;
  for (uint32_t id : e.getWaitingFor()) waiting.push_back(id);
  if (g.mode() == OutputMode::kJson) {
    print_json({{"job", job},
                {"task", task},
                {"state", state_name(e.getState())},
                {"request", e.getRequest().cStr()},
                {"workers", workers},
                {"waiting_for", waiting}});
    return 0;
  }
  std::cout << fmt::format("Task {} of job {} is {} and requests {}\n", task, job,
                           state_name(e.getState()), e.getRequest().cStr());
  if (!waiting.empty()) {
    std::cout << fmt::format("It is waiting for {} {} of job {} (its dependencies)\n",
                             waiting.size() == 1 ? "task" : "tasks", fmt::join(waiting, ", "), job);
  }
  if (workers.empty()) {
    std::cout << "No connected workers: it waits for one that can run it\n";
  } else {
    std::cout << table.render();
  }
  return 0;
}

namespace {

// Every worker the server knows, connected or not, in id order.
net::Message all_workers(Client& client) {
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setWorkerList();
  return must(client.call(request));
}

// The ids a worker selector names among the known workers: an id, ids and ranges, `last` (the
// newest) or `all`.
std::vector<uint32_t> select_workers(capnp::List<wire::WorkerSummary>::Reader workers,
                                     const std::string& selector) {
  std::vector<uint32_t> ids;
  if (selector == "all") {
    for (auto w : workers) ids.push_back(w.getId());
  } else if (selector == "last") {
    if (workers.size() == 0) throw CommandError{"there is no worker yet"};
    uint32_t last = 0;
    for (auto w : workers) last = std::max(last, w.getId());
    ids.push_back(last);
  } else {
    IdSet wanted = must(IdSet::parse(selector),
                        fmt::format("invalid worker selector '{}' (use an id, a range such as "
                                    "1-4, last or all)",
                                    selector));
    for (auto w : workers) {
      if (wanted.contains(w.getId())) ids.push_back(w.getId());
    }
    if (ids.empty() && wanted.size() == 1) {
      throw CommandError{fmt::format("worker {} not found", wanted.ranges()[0].start)};
    }
    if (ids.empty()) throw CommandError{fmt::format("no worker matches '{}'", selector)};
  }
  return ids;
}

// The selected workers, as a WorkerSummary list of their own.
capnp::List<wire::WorkerSummary>::Reader pick(capnp::MallocMessageBuilder& holder,
                                              capnp::List<wire::WorkerSummary>::Reader workers,
                                              const std::vector<uint32_t>& ids) {
  auto list = holder.initRoot<wire::ClientResponse>().initWorkers(ids.size());
  unsigned k = 0;
  for (auto w : workers) {
    if (std::find(ids.begin(), ids.end(), w.getId()) != ids.end()) list.setWithCaveats(k++, w);
  }
  return list.asReader();
}

}  // namespace

int cmd_worker_list(const GlobalOptions& g, bool all, const std::string& filter) {
  Client client = must(Client::connect(g));
  auto response = all_workers(client);
  auto workers = response.root<wire::ClientResponse>().getWorkers();
  if (filter.empty()) return print_workers(g, workers, all, false);
  std::vector<uint32_t> ids;
  for (auto w : workers) {
    if (w.getConnected() == (filter == "running")) ids.push_back(w.getId());
  }
  capnp::MallocMessageBuilder holder;
  return print_workers(g, pick(holder, workers, ids), true, false);
}

int cmd_worker_info(const GlobalOptions& g, const std::string& selector) {
  Client client = must(Client::connect(g));
  auto response = all_workers(client);
  auto workers = response.root<wire::ClientResponse>().getWorkers();
  capnp::MallocMessageBuilder holder;
  return print_workers(g, pick(holder, workers, select_workers(workers, selector)), true, true);
}

int cmd_worker_address(const GlobalOptions& g, const std::string& selector) {
  Client client = must(Client::connect(g));
  auto response = all_workers(client);
  auto workers = response.root<wire::ClientResponse>().getWorkers();
  std::vector<uint32_t> ids = select_workers(workers, selector);
  json out = json::array();
  for (auto w : workers) {
    if (std::find(ids.begin(), ids.end(), w.getId()) == ids.end()) continue;
    out.push_back({{"id", w.getId()}, {"hostname", w.getHostname().cStr()}});
    if (g.mode() != OutputMode::kJson) std::cout << w.getHostname().cStr() << "\n";
  }
  if (g.mode() == OutputMode::kJson) print_json(ids.size() == 1 ? out[0] : out);
  return 0;
}

int cmd_worker_wait(const GlobalOptions& g, uint32_t count) {
  Client client = must(Client::connect(g));
  for (;;) {
    auto response = all_workers(client);
    uint32_t connected = 0;
    for (auto w : response.root<wire::ClientResponse>().getWorkers()) connected += w.getConnected();
    if (connected >= count) {
      if (g.mode() == OutputMode::kCli) {
        std::cout << fmt::format("{} worker(s) connected\n", connected);
      }
      return 0;
    }
    // TODO(perf): a server-side wait, answered when workers connect.
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

int cmd_server_wait(const GlobalOptions& g, std::optional<Millis> timeout) {
  const auto deadline = timeout ? std::chrono::steady_clock::now() + *timeout
                                : std::chrono::steady_clock::time_point::max();
  for (;;) {
    auto client = Client::connect(g);
    if (client) {
      capnp::MallocMessageBuilder request;
      request.initRoot<wire::ClientRequest>().setServerInfo();
      if (client->call(request)) {
        if (g.mode() == OutputMode::kCli) std::cout << "The server is running\n";
        return 0;
      }
    }
    if (std::chrono::steady_clock::now() >= deadline) {
      throw CommandError{fmt::format("no server answered in {} within {}: {}",
                                     g.resolved_server_dir().string(), format_duration(*timeout),
                                     client ? "it does not answer" : client.message())};
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
}

int cmd_worker_stop(const GlobalOptions& g, const std::string& selector) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  auto sel = request.initRoot<wire::ClientRequest>().initWorkerStop();
  if (selector == "all") {
    sel.setAll();
  } else {
    IdSet ids;
    if (selector == "last") {
      auto listed = all_workers(client);
      ids = IdSet::single(
          select_workers(listed.root<wire::ClientResponse>().getWorkers(), "last")[0]);
    } else {
      ids = must(IdSet::parse(selector), fmt::format("invalid worker selector '{}' (use an id, a "
                                                     "range such as 1-4, last or all)",
                                                     selector));
    }
    net::to_wire(ids, sel.initIds(ids.ranges().size()));
  }
  auto response = must(client.call(request));
  auto workers = response.root<wire::ClientResponse>().getWorkers();
  json out = json::array();
  for (auto w : workers) {
    out.push_back(w.getId());
    if (g.mode() == OutputMode::kCli) std::cout << fmt::format("Worker {} stopped\n", w.getId());
  }
  if (g.mode() == OutputMode::kJson) print_json(out);
  if (g.mode() == OutputMode::kCli && workers.size() == 0) std::cout << "No workers to stop\n";
  return 0;
}

int cmd_server_info(const GlobalOptions& g) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setServerInfo();
  auto response = must(client.call(request));
  print_server_info(g, response.root<wire::ClientResponse>().getServerInfo());
  return 0;
}

void print_server_info(const GlobalOptions& g, wire::ServerInfo::Reader info) {
  json j = server_info_json(info);
  std::string journal = info.getJournal().size() ? info.getJournal().cStr() : "none (--no-journal)";
  if (info.getJournalError().size())
    journal += fmt::format(" FAILED: {}", info.getJournalError().cStr());
  if (g.mode() == OutputMode::kJson) {
    print_json(j);
  } else if (g.mode() == OutputMode::kCli) {
    std::cout << render_pairs(
        {{"Server UID", info.getServerUid().cStr()},
         {"Host", info.getHost().cStr()},
         {"Client port", std::to_string(info.getClientPort())},
         {"Worker host", info.getWorkerHost().cStr()},
         {"Worker port", std::to_string(info.getWorkerPort())},
         {"PID", std::to_string(info.getPid())},
         {"Version", info.getVersion().cStr()},
         {"Server directory", info.getServerDir().cStr()},
         {"Started", format_iso8601(info.getStartTime())},
         {"Journal", journal},
         {"Restored", fmt::format("{} job(s), {} task(s) in {} ms", info.getRestoredJobs(),
                                  info.getRestoredTasks(), info.getReplayMs())}});
  }
  std::cout.flush();
}

int cmd_server_stop(const GlobalOptions& g) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setServerStop();
  must(client.call(request));
  if (g.mode() == OutputMode::kCli) std::cout << "Server stopped\n";
  return 0;
}

int cmd_server_generate_access(const GlobalOptions& g, const GenerateAccessOptions& o) {
  if (o.client_port == 0 || o.worker_port == 0) {
    throw CommandError{
        "generate-access needs --client-port and --worker-port: the file tells clients and "
        "workers where the server will listen"};
  }
  const std::string host = o.host.empty() ? local_hostname() : o.host;
  net::AccessRecord record = net::new_access_record(o.client_host.empty() ? host : o.client_host,
                                                    o.worker_host.empty() ? host : o.worker_host);
  record.client->port = o.client_port;
  record.worker->port = o.worker_port;
  auto write = [](const fs::path& path, const net::AccessRecord& r) {
    if (auto st = net::write_access_file(path, r); !st) throw CommandError{st.message()};
  };
  write(o.file, record);
  if (!o.client_file.empty()) {
    net::AccessRecord half = record;
    half.worker.reset();
    write(o.client_file, half);
  }
  if (!o.worker_file.empty()) {
    net::AccessRecord half = record;
    half.client.reset();
    write(o.worker_file, half);
  }
  if (g.mode() == OutputMode::kJson) {
    print_json({{"file", o.file.string()},
                {"server_uid", record.server_uid},
                {"client_file", o.client_file.empty() ? json(nullptr) : json(o.client_file)},
                {"worker_file", o.worker_file.empty() ? json(nullptr) : json(o.worker_file)}});
  } else if (g.mode() == OutputMode::kCli) {
    std::cout << fmt::format(
        "Access file for server {} written to {} (clients: {}:{}, workers: {}:{}); start the "
        "server with `hq server start --access-file {}`\n",
        record.server_uid, o.file.string(), record.client->host, record.client->port,
        record.worker->host, record.worker->port, o.file.string());
  }
  return 0;
}

// --- Open jobs --------------------------------------------------------------------------------

int cmd_job_open(const GlobalOptions& g, const std::string& name,
                 std::optional<int64_t> max_fails) {
  JobDescriptionSpec job;
  job.name = name;
  if (max_fails) {
    if (*max_fails < 0) throw CommandError{"--max-fails must be 0 or more"};
    job.max_fails = *max_fails;
  }
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  net::to_wire(job, request.initRoot<wire::ClientRequest>().initJobOpen());
  auto response = must(client.call(request));
  const JobId id = response.root<wire::ClientResponse>().getSubmitted();
  switch (g.mode()) {
    case OutputMode::kJson:
      print_json({{"id", id}});
      break;
    case OutputMode::kQuiet:
      std::cout << id << "\n";
      break;
    case OutputMode::kCli:
      std::cout << fmt::format("Job {} is open.\n", id);
      break;
  }
  return 0;
}

int cmd_job_close(const GlobalOptions& g, const std::string& selector) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  set_job_selector(selector, request.initRoot<wire::ClientRequest>().initJobClose());
  auto response = must(client.call(request));
  auto jobs = response.root<wire::ClientResponse>().getJobs();
  json out = json::array();
  for (auto j : jobs) {
    out.push_back(j.getId());
    if (g.mode() == OutputMode::kCli) std::cout << fmt::format("Job {} is closed.\n", j.getId());
  }
  if (g.mode() == OutputMode::kJson) print_json(out);
  if (jobs.size() == 0 && selector != "all") throw no_job(selector);
  return 0;
}

}  // namespace hq::cli
