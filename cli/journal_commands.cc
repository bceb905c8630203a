#include "cli/journal_commands.h"

#include <algorithm>
#include <functional>
#include <iostream>
#include <map>
#include <optional>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/print.h"
#include "common/id_set.h"
#include "common/time.h"
#include "journal/journal.h"
#include "scheduler/scheduler.h"
#include "server/restore.h"

namespace hq::cli {
namespace {

using journal::schema::Event;
// Fields keep the order they are set in: "seq", "time", "event"; "type", "job", "task"...
using json = nlohmann::ordered_json;

std::string text(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

fs::path journal_path(const GlobalOptions& g, const std::string& flag) {
  return flag.empty() ? journal_dir_path(g.resolved_server_dir()) : fs::absolute(flag);
}

// Opens the journal read-only; what recovery found damaged goes to stderr when `warn`.
std::unique_ptr<journal::Journal> open_journal(const fs::path& path, bool warn = true) {
  journal::Options options;
  options.read_only = true;
  auto opened = must(journal::Journal::open(path, options));
  if (warn) {
    for (const auto& line : opened->recovery().damage) std::cerr << "warning: " << line << "\n";
  }
  return opened;
}

void warn_damage(const journal::ReplayStats& stats) {
  for (const auto& line : stats.damage) std::cerr << "warning: " << line << "\n";
}

json description_json(journal::schema::JobDescription::Reader d) {
  auto body = d.getBody();
  std::vector<std::string> program;
  for (auto arg : body.getProgram()) program.push_back(text(arg));
  json env = json::array();
  for (auto kv : body.getEnv()) env.push_back({text(kv.getKey()), text(kv.getValue())});
  auto spec = journal::from_record(d);
  return {{"name", text(d.getName())},
          {"task_ids", spec ? json(spec->task_ids.to_string()) : json(nullptr)},
          {"priority", d.getPriority()},
          {"program", program},
          {"env", env},
          {"cwd", text(body.getCwd())},
          {"stdout", text(body.getStdout())},
          {"stderr", text(body.getStderr())},
          {"submit_dir", text(body.getSubmitDir())},
          {"cpus", body.getCpus()},
          {"stream", text(d.getStream())},
          {"entries", d.getEntries().size()},
          {"stdin_bytes", body.getStdin().size()},
          {"task_dir", body.getTaskDir()}};
}

// The event's own fields, "type" first.
json event_json(Event::Reader e) {
  json j = {{"type", journal::event_type_name(e.which())}};
  if (j["type"] == "unknown") j["which"] = static_cast<int>(e.which());  // from a newer hq
  auto task = [&](auto r) {
    j["job"] = r.getJob();
    j["task"] = r.getTask();
    j["instance"] = r.getInstance();
  };
  switch (e.which()) {
    case Event::SERVER_STARTED:
      j["server_uid"] = text(e.getServerStarted().getServerUid());
      j["version"] = text(e.getServerStarted().getVersion());
      j["reattach"] = e.getServerStarted().getReattach();
      break;
    case Event::JOB_SUBMITTED:
      j["job"] = e.getJobSubmitted().getJob();
      j["description"] = description_json(e.getJobSubmitted().getDescription());
      break;
    case Event::TASK_STARTED:
      task(e.getTaskStarted());
      j["worker"] = e.getTaskStarted().getWorker();
      break;
    case Event::TASK_FINISHED:
      task(e.getTaskFinished());
      break;
    case Event::TASK_FAILED:
      task(e.getTaskFailed());
      j["error"] = text(e.getTaskFailed().getError());
      if (e.getTaskFailed().getWorker()) j["worker"] = e.getTaskFailed().getWorker();
      break;
    case Event::TASK_CANCELED:
      task(e.getTaskCanceled());
      break;
    case Event::JOB_CANCELED:
      j["job"] = e.getJobCanceled().getJob();
      break;
    case Event::TASK_REQUEUED:
      task(e.getTaskRequeued());
      j["crash_counter"] = e.getTaskRequeued().getCrashCounter();
      break;
    case Event::JOB_FORGOTTEN:
      j["job"] = e.getJobForgotten().getJob();
      break;
    case Event::WORKER_CONNECTED: {
      auto w = e.getWorkerConnected();
      j["worker"] = w.getWorker();
      j["hostname"] = text(w.getHostname());
      j["cpus"] = w.getCpus();
      j["work_dir"] = text(w.getWorkDir());
      j["address"] = text(w.getAddress());
      j["reattaches"] = w.getReattaches();
      break;
    }
    case Event::WORKER_LOST:
      j["worker"] = e.getWorkerLost().getWorker();
      j["reason"] = text(e.getWorkerLost().getReason());
      break;
    case Event::JOB_ABORTED:
      j["job"] = e.getJobAborted().getJob();
      break;
    case Event::TASKS_STARTED:  // printed task by task (for_each_task_event)
    case Event::TASKS_FINISHED:
    case Event::TASKS_REATTACHED:
    case Event::TASK_TIMES:
    case Event::REATTACH_ENDED:
      break;
    case Event::WORKER_REATTACHED:
      j["worker"] = e.getWorkerReattached().getWorker();
      j["hostname"] = text(e.getWorkerReattached().getHostname());
      j["address"] = text(e.getWorkerReattached().getAddress());
      break;
    case Event::JOB_RESERVED:
      j["job"] = e.getJobReserved().getJob();
      j["tasks"] = e.getJobReserved().getTasks();
      break;
    case Event::TASKS_CANCELED: {
      j["job"] = e.getTasksCanceled().getJob();
      std::vector<IdRange> ranges;
      for (auto r : e.getTasksCanceled().getTasks()) {
        if (r.getStep() != 0 && r.getStart() <= r.getEnd()) {
          ranges.push_back({r.getStart(), r.getEnd(), r.getStep()});
        }
      }
      j["task_ids"] = IdSet(std::move(ranges)).to_string();
      break;
    }
    case Event::JOB_OPENED:
      j["job"] = e.getJobOpened().getJob();
      j["name"] = text(e.getJobOpened().getName());
      j["max_fails"] = e.getJobOpened().getMaxFails();
      break;
    case Event::JOB_CLOSED:
      j["job"] = e.getJobClosed().getJob();
      break;
    case Event::ALLOC_QUEUE_ADDED: {
      j["queue"] = e.getAllocQueueAdded().getQueue();
      auto bytes = e.getAllocQueueAdded().getParams();
      Status read = server::with_queue_params(
          std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size()),
          [&j](wire::AllocQueueParams::Reader p) {
            std::vector<std::string> batch_args;
            for (auto a : p.getBatchArgs()) batch_args.push_back(text(a));
            j["manager"] = text(p.getManager());
            j["name"] = text(p.getName());
            j["time_limit"] = static_cast<double>(p.getTimeLimitMs()) / 1000.0;
            j["backlog"] = p.getBacklog();
            j["max_workers_per_alloc"] = p.getMaxWorkersPerAlloc();
            j["batch_args"] = batch_args;
          });
      if (!read) j["params_error"] = read.message();
      break;
    }
    case Event::ALLOC_QUEUE_PAUSED:
      j["queue"] = e.getAllocQueuePaused().getQueue();
      j["reason"] = text(e.getAllocQueuePaused().getReason());
      break;
    case Event::ALLOC_QUEUE_RESUMED:
      j["queue"] = e.getAllocQueueResumed().getQueue();
      break;
    case Event::ALLOC_QUEUE_REMOVED:
      j["queue"] = e.getAllocQueueRemoved().getQueue();
      break;
    case Event::ALLOCATION_SUBMITTED: {
      auto a = e.getAllocationSubmitted();
      j["queue"] = a.getQueue();
      j["allocation"] = text(a.getAllocation());
      j["workers"] = a.getWorkers();
      j["log_dir"] = text(a.getLogDir());
      break;
    }
    case Event::ALLOCATION_ENDED: {
      auto a = e.getAllocationEnded();
      j["queue"] = a.getQueue();
      j["allocation"] = text(a.getAllocation());
      j["state"] = a.getFailed() ? "failed" : "finished";
      j["detail"] = text(a.getDetail());
      break;
    }
    case Event::TASKS_SUBMITTED: {
      auto s = e.getTasksSubmitted();
      j["job"] = s.getJob();
      j["new_job"] = s.getNewJob();
      j["description"] = description_json(s.getDescription());
      std::string deps;
      for (auto r : s.getSubmitDeps()) {
        if (!deps.empty()) deps += ",";
        deps += r.getStart() == r.getEnd() ? std::to_string(r.getStart())
                                           : fmt::format("{}-{}", r.getStart(), r.getEnd());
      }
      j["submit_deps"] = deps;
      break;
    }
  }
  return j;
}

// The packed starts and ends of a taskTimes record, as one task-started and one task-finished
// event per task, each with its own time.
void for_each_packed_time(Event::Reader e, const std::function<void(int64_t, json)>& fn) {
  auto r = e.getTaskTimes();
  auto each = [&](capnp::Data::Reader data, journal::TaskTimesList list) {
    auto entries = journal::unpack_task_times(data.begin(), data.size(), list, e.getTime());
    if (!entries) return;  // checked when the record was decoded
    for (const journal::TaskTimeEntry& t : *entries) {
      json task = {{"job", r.getJob()}, {"task", t.task}, {"instance", t.instance}};
      if (list != journal::TaskTimesList::kFinished) {
        json j = {{"type", "task-started"}};
        j.update(task);
        j["worker"] = r.getWorker();
        fn(t.start, std::move(j));
      }
      if (list != journal::TaskTimesList::kStarted) {
        json j = {{"type", "task-finished"}};
        j.update(task);
        fn(t.end, std::move(j));
      }
    }
  };
  each(r.getStarted(), journal::TaskTimesList::kStarted);
  each(r.getRan(), journal::TaskTimesList::kRan);
  each(r.getFinished(), journal::TaskTimesList::kFinished);
}

// The server writes task starts and ends in batches (task-times; tasks-started and
// tasks-finished before it); readers see one task-started or task-finished event per task, with
// the batch's seq and the task's time.
using schema_batch = journal::schema::TaskBatch::Reader;
void for_each_task_event(Event::Reader e, const std::function<void(int64_t, json)>& fn) {
  const char* type = nullptr;
  schema_batch batch;
  switch (e.which()) {
    case Event::TASK_TIMES:
      return for_each_packed_time(e, fn);
    case Event::TASKS_STARTED:
      type = "task-started";
      batch = e.getTasksStarted();
      break;
    case Event::TASKS_FINISHED:
      type = "task-finished";
      batch = e.getTasksFinished();
      break;
    case Event::TASKS_REATTACHED:
      type = "task-reattached";
      batch = e.getTasksReattached();
      break;
    default:
      return fn(e.getTime(), event_json(e));
  }
  const bool with_worker = e.which() != Event::TASKS_FINISHED;
  for (auto t : batch.getTasks()) {
    json j = {{"type", type},
              {"job", batch.getJob()},
              {"task", t.getTask()},
              {"instance", t.getInstance()}};
    if (with_worker) j["worker"] = batch.getWorker();
    fn(t.getTime(), std::move(j));
  }
}

// One NDJSON line: {"seq":..,"time":"ISO 8601","event":{"type":..,...}}.
std::string record_line(journal::Seq seq, int64_t time, json event) {
  json j = {{"seq", seq}, {"time", format_iso8601(time)}, {"event", std::move(event)}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// One field as "name=value"; strings quoted when they need it.
std::string pair_text(const std::string& key, const json& value) {
  if (value.is_string()) {
    const auto& s = value.get_ref<const std::string&>();
    if (s.find_first_of(" \t\"=") == std::string::npos) return fmt::format("{}={}", key, s);
  }
  return fmt::format("{}={}", key, value.dump(-1, ' ', false, json::error_handler_t::replace));
}

// The event's fields as "name=value" pairs, empty ones left out; a job description shortened to
// what identifies it.
std::string details_text(const json& fields) {
  std::vector<std::string> parts;
  for (const auto& [key, value] : fields.items()) {
    if (key == "type" || (value.is_string() && value.get_ref<const std::string&>().empty())) {
      continue;
    }
    if (key != "description") {
      parts.push_back(pair_text(key, value));
      continue;
    }
    for (const char* field : {"name", "task_ids", "cpus", "priority"}) {
      parts.push_back(pair_text(field, value[field]));
    }
    std::vector<std::string> program = value["program"];
    parts.push_back(pair_text("program", fmt::format("{}", fmt::join(program, " "))));
  }
  return fmt::format("{}", fmt::join(parts, " "));
}

std::string record_text(journal::Seq seq, int64_t time, const json& event) {
  return fmt::format("{:>8}  {}  {:<16}  {}", seq, format_iso8601(time),
                     event["type"].get<std::string>(), details_text(event));
}

int cmd_journal_replay(const GlobalOptions& g, const std::string& path_flag,
                       std::optional<JobId> job, journal::Seq since) {
  auto reader = open_journal(journal_path(g, path_flag));
  const OutputMode mode = g.mode();
  journal::ReplayOptions options;
  options.from_seq = since;
  options.job = job;
  auto stats = must(reader->replay(options, [&](journal::Seq seq, Event::Reader e) {
    for_each_task_event(e, [&](int64_t time, json event) {
      if (mode == OutputMode::kJson) {
        std::cout << record_line(seq, time, std::move(event)) << '\n';
      } else if (mode == OutputMode::kCli) {
        std::cout << record_text(seq, time, event) << '\n';
      }
    });
  }));
  if (mode == OutputMode::kCli && stats.events == 0) std::cout << "No events\n";
  std::cout.flush();
  warn_damage(stats);
  return 0;
}

int cmd_journal_export(const GlobalOptions& g, const std::string& path_flag) {
  auto reader = open_journal(journal_path(g, path_flag));
  auto stats = must(reader->replay({}, [&](journal::Seq seq, Event::Reader e) {
    for_each_task_event(e, [&](int64_t time, json event) {
      std::cout << record_line(seq, time, std::move(event)) << '\n';
    });
  }));
  std::cout.flush();
  warn_damage(stats);
  return 0;
}

// --- report: the journal folded as a restarted server folds it (server/restore.h) ---

class Report {
 public:
  Report() : restore_(scheduler_, jobs_) {}

  void apply(journal::Seq seq, Event::Reader e) {
    ++events_;
    ++by_type_[journal::event_type_name(e.which())];
    if (events_ == 1) first_seq_ = seq;
    last_seq_ = seq;
    if (e.getTime()) {
      first_time_ = first_time_ ? std::min(first_time_, e.getTime()) : e.getTime();
      last_time_ = std::max(last_time_, e.getTime());
    }
    restore_.apply(seq, e);
  }
  // After the last event; `damage` gets a job that could not be restored.
  void finish(std::vector<std::string>& damage) {
    // As the server starts: orphans wait for the workers it expects, and with none expected
    // the grace is over at once.
    restore_.finish(/*reattach=*/true);
    if (restore_.connected_workers().empty()) scheduler_.end_reattach();
    if (!restore_.status()) damage.push_back(restore_.status().message());
  }

  json to_json(const fs::path& path, uint64_t size, const journal::RecoveryInfo& recovery,
               const journal::ReplayStats& stats, const std::vector<std::string>& damage) const {
    std::map<std::string, uint64_t> task_states, job_states;
    json job_list = json::array();
    for (const auto& [id, job] : jobs_) {
      const sched::TaskCounts counts = scheduler_.counts(id);
      json tasks = json::object();
      for (int s = 0; s < 6; ++s) {
        if (!counts.by_state[s]) continue;
        const char* name = sched::to_string(static_cast<sched::TaskState>(s));
        task_states[name] += counts.by_state[s];
        tasks[name] = counts.by_state[s];
      }
      const char* state = sched::to_string(scheduler_.job_state(id));
      ++job_states[state];
      job_list.push_back({{"id", id}, {"state", state}, {"tasks", std::move(tasks)}});
    }
    auto forgotten = by_type_.find("job-forgotten");
    return {{"journal", path.string()},
            {"size_on_disk", size},
            {"events", events_},
            {"first_seq", events_ ? json(first_seq_) : json(nullptr)},
            {"last_seq", events_ ? json(last_seq_) : json(nullptr)},
            {"first_time", first_time_ ? json(format_iso8601(first_time_)) : json(nullptr)},
            {"last_time", last_time_ ? json(format_iso8601(last_time_)) : json(nullptr)},
            {"span_ms", last_time_ - first_time_},
            {"replay_ms", stats.elapsed.count() / 1000.0},
            {"events_by_type", by_type_},
            {"jobs", jobs_.size()},
            {"jobs_by_state", job_states},
            {"forgotten_jobs", forgotten == by_type_.end() ? 0 : forgotten->second},
            {"tasks_by_state", task_states},
            {"job_list", std::move(job_list)},
            {"server_uid", recovery.server_uid},
            {"max_job_id", recovery.max_job_id},
            {"max_worker_id", recovery.max_worker_id},
            {"damage", damage}};
  }

 private:
  uint64_t events_ = 0;
  journal::Seq first_seq_ = 0, last_seq_ = 0;
  int64_t first_time_ = 0, last_time_ = 0;
  std::map<std::string, uint64_t> by_type_;
  sched::Scheduler scheduler_;
  std::map<JobId, server::JobRecord> jobs_;
  server::Restore restore_;
};

std::string counts_line(const json& counts) {
  std::string out;
  for (const auto& [name, n] : counts.items()) {
    out += fmt::format("{}{} {}", out.empty() ? "" : ", ", name, n.get<uint64_t>());
  }
  return out.empty() ? "none" : out;
}

std::string bytes_text(uint64_t bytes) {
  if (bytes < 10u * 1024) return fmt::format("{} B", bytes);
  if (bytes < 10u * 1024 * 1024) return fmt::format("{:.1f} KiB", bytes / 1024.0);
  return fmt::format("{:.1f} MiB", bytes / (1024.0 * 1024.0));
}

int cmd_journal_report(const GlobalOptions& g, const std::string& path_flag) {
  const fs::path path = journal_path(g, path_flag);
  auto reader = open_journal(path, /*warn=*/false);  // the report lists the damage
  Report fold;
  auto stats =
      must(reader->replay({}, [&](journal::Seq seq, Event::Reader e) { fold.apply(seq, e); }));
  std::vector<std::string> damage = reader->recovery().damage;
  damage.insert(damage.end(), stats.damage.begin(), stats.damage.end());
  fold.finish(damage);
  json report = fold.to_json(path, reader->size_on_disk(), reader->recovery(), stats, damage);
  switch (g.mode()) {
    case OutputMode::kJson:
      std::cout << report.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
      break;
    case OutputMode::kQuiet:
      break;
    case OutputMode::kCli: {
      const uint64_t events = report["events"].get<uint64_t>();
      const double replay_ms = report["replay_ms"].get<double>();
      std::string span = "none";
      if (events) {
        span = fmt::format("{} .. {} ({})", report["first_time"].get<std::string>(),
                           report["last_time"].get<std::string>(),
                           format_duration(Millis(report["span_ms"].get<int64_t>())));
      }
      std::cout << render_pairs({
          {"Journal", path.string()},
          {"Size on disk", bytes_text(report["size_on_disk"].get<uint64_t>())},
          {"Events",
           events ? fmt::format("{} (seq {} .. {})", events, report["first_seq"].get<uint64_t>(),
                                report["last_seq"].get<uint64_t>())
                  : "0"},
          {"Time span", span},
          {"Replay", fmt::format("{:.1f} ms ({:.0f} events/s)", replay_ms,
                                 replay_ms > 0 ? events / (replay_ms / 1000.0) : 0.0)},
          {"Jobs", fmt::format("{} ({})", report["jobs"].get<uint64_t>(),
                               counts_line(report["jobs_by_state"]))},
          {"Forgotten jobs", std::to_string(report["forgotten_jobs"].get<uint64_t>())},
          {"Tasks", counts_line(report["tasks_by_state"])},
          {"Highest ids",
           fmt::format("job {}, worker {} (never reused)", report["max_job_id"].get<uint32_t>(),
                       report["max_worker_id"].get<uint32_t>())},
          {"Server UID", report["server_uid"].get<std::string>()},
          {"Damage", damage.empty() ? "none" : fmt::format("{} (listed below)", damage.size())},
      });
      Table table({"EVENT", "COUNT"});
      for (const auto& [type, n] : report["events_by_type"].items()) {
        table.add({type, std::to_string(n.get<uint64_t>())});
      }
      if (events) std::cout << "\n" << table.render();
      for (const auto& line : damage) std::cout << "damage: " << line << "\n";
      break;
    }
  }
  return 0;
}

// `hq journal prune`: the running server drops the history of its completed jobs.
int cmd_journal_prune(const GlobalOptions& g) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setJournalPrune();
  auto response = must(client.call(request));
  auto pruned = response.root<wire::ClientResponse>().getJournalPruned();
  if (g.mode() == OutputMode::kJson) {
    std::cout << json{{"pruned_jobs", pruned.getPrunedJobs()},
                      {"size_before", pruned.getSizeBefore()},
                      {"size_after", pruned.getSizeAfter()}}
                     .dump(2)
              << "\n";
  } else if (g.mode() == OutputMode::kCli) {
    std::cout << fmt::format("Pruned {} completed job(s); journal size {} -> {}\n",
                             pruned.getPrunedJobs(), bytes_text(pruned.getSizeBefore()),
                             bytes_text(pruned.getSizeAfter()));
  }
  return 0;
}

// `hq journal flush`: the running server writes its journal's memtables to table files.
int cmd_journal_flush(const GlobalOptions& g) {
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setJournalFlush();
  must(client.call(request));
  if (g.mode() == OutputMode::kCli) std::cout << "Journal flushed\n";
  return 0;
}

}  // namespace

void add_journal_commands(CLI::App& app, const GlobalOptions& g, int& code) {
  // Kept alive by the callbacks, which the command tree owns.
  struct Flags {
    std::string path;
    JobId job = 0;
    journal::Seq since = 0;
  };
  auto flags = std::make_shared<Flags>();
  auto* command =
      app.add_subcommand("journal", "Read the journal of events (offline), prune or flush it");
  command->require_subcommand(1);
  auto add_path = [&](CLI::App* sub) {
    sub->add_option("--journal", flags->path,
                    "Journal directory (default: the server directory's journal)");
  };

  auto* replay = command->add_subcommand("replay", "Print the journal's events in order");
  add_path(replay);
  CLI::Option* job = replay->add_option("--job", flags->job, "Only this job's events");
  replay->add_option("--since", flags->since, "Only events with this sequence number or later");
  replay->callback([flags, job, &g, &code] {
    std::optional<JobId> only;
    if (job->count() > 0) only = flags->job;
    code = cmd_journal_replay(g, flags->path, only, flags->since);
  });

  auto* dump = command->add_subcommand("export", "Print every event as one JSON object per line");
  add_path(dump);
  dump->callback([flags, &g, &code] { code = cmd_journal_export(g, flags->path); });

  auto* report =
      command->add_subcommand("report", "Summarize the journal: events, final states, size");
  add_path(report);
  report->callback([flags, &g, &code] { code = cmd_journal_report(g, flags->path); });

  command->add_subcommand("prune", "Drop the history of completed jobs (running server)")
      ->callback([&g, &code] { code = cmd_journal_prune(g); });
  command->add_subcommand("flush", "Write the journal's memory tables to disk (running server)")
      ->callback([&g, &code] { code = cmd_journal_flush(g); });
}

}  // namespace hq::cli
