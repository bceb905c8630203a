#include "cli/job_commands.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/command_util.h"
#include "cli/json_output.h"
#include "cli/print.h"
#include "common/time.h"
#include "output-stream/stream.h"

namespace hq::cli {
namespace {

using nlohmann::json;

// The arguments of the commands below; each reads the ones it declares.
struct JobArgs {
  std::string job;       // task cancel
  std::string tasks;     // task cancel, job cat --tasks
  std::string selector;  // job forget, task-ids, cat, progress
  std::string filter;    // job forget, task-ids
  std::string channel;   // job cat
  std::string task_status;
  bool task_header = false;
};

// The jobs a selector names, as `hq job list` lists them (id order).
std::vector<uint32_t> selected_jobs(capnp::List<wire::JobSummary>::Reader jobs,
                                    const std::string& selector) {
  std::vector<uint32_t> ids;
  if (selector == "all") {
    for (auto j : jobs) ids.push_back(j.getId());
  } else if (selector == "last") {
    uint32_t last = 0;
    for (auto j : jobs) last = std::max(last, j.getId());
    if (last == 0) throw no_job(selector);
    ids.push_back(last);
  } else {
    IdSet wanted = must(IdSet::parse(selector), fmt::format("invalid job selector '{}' (use an "
                                                            "id, a range such as 1-4, last or "
                                                            "all)",
                                                            selector));
    for (auto j : jobs) {
      if (wanted.contains(j.getId())) ids.push_back(j.getId());
    }
    if (ids.empty()) throw no_job(selector);
  }
  return ids;
}

net::Message job_list(Client& client) {
  capnp::MallocMessageBuilder request;
  request.initRoot<wire::ClientRequest>().setJobList();
  return must(client.call(request));
}

// --- hq task cancel ---------------------------------------------------------------------------

int cmd_task_cancel(const GlobalOptions& g, const JobArgs& a) {
  IdSet tasks = must(IdSet::parse(a.tasks), fmt::format("invalid task selection '{}' (use ids "
                                                        "and ranges such as 3,7-9)",
                                                        a.tasks));
  Client client = must(Client::connect(g));
  const JobId job = resolve_job(client, a.job);
  capnp::MallocMessageBuilder request;
  auto r = request.initRoot<wire::ClientRequest>().initTaskCancel();
  r.setJob(job);
  net::to_wire(tasks, r.initTasks(tasks.ranges().size()));
  auto response = must(client.call(request));
  auto results = response.root<wire::ClientResponse>().getCanceled();
  if (results.size() != 1) throw CommandError{"the server answered the cancel without a result"};
  auto c = results[0];
  switch (g.mode()) {
    case OutputMode::kJson:
      print_json({{"id", c.getJob()},
                  {"canceled_tasks", c.getCanceledTasks()},
                  {"aborted_tasks", c.getAbortedTasks()},
                  {"already_ended", c.getEndedTasks()},
                  {"not_found", c.getUnknownTasks()}});
      break;
    case OutputMode::kQuiet:
      break;
    case OutputMode::kCli: {
      std::string text =
          c.getCanceledTasks() == 0
              ? fmt::format("Job {}: nothing to cancel, the selected tasks have ended", job)
              : fmt::format("Job {}: {} task(s) canceled", job, c.getCanceledTasks());
      if (c.getAbortedTasks() > 0) {
        text += fmt::format(", {} dependant task(s) aborted", c.getAbortedTasks());
      }
      if (c.getCanceledTasks() > 0 && c.getEndedTasks() > 0) {
        text += fmt::format(", {} had already ended", c.getEndedTasks());
      }
      if (c.getUnknownTasks() > 0) {
        text += fmt::format(" ({} selected id(s) are not tasks of the job)", c.getUnknownTasks());
      }
      std::cout << text << "\n";
      break;
    }
  }
  return 0;
}

// --- hq job forget ----------------------------------------------------------------------------

int cmd_job_forget(const GlobalOptions& g, const JobArgs& a) {
  std::vector<wire::JobState> states = parse_states<wire::JobState>(a.filter, "job");
  for (wire::JobState s : states) {
    if (s == wire::JobState::WAITING || s == wire::JobState::RUNNING) {
      throw CommandError{fmt::format(
          "invalid --filter: only complete jobs can be forgotten (finished, failed, canceled, "
          "aborted), not {} ones; cancel them first",
          state_name(s))};
    }
  }
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  auto r = request.initRoot<wire::ClientRequest>().initJobForget();
  set_job_selector(a.selector, r.initSelector());
  auto out = r.initStates(static_cast<unsigned>(states.size()));
  for (size_t i = 0; i < states.size(); ++i) out.set(i, states[i]);
  auto response = must(client.call(request));
  auto result = response.root<wire::ClientResponse>().getForgotten();
  std::vector<uint32_t> ids;
  for (uint32_t id : result.getForgotten()) ids.push_back(id);
  switch (g.mode()) {
    case OutputMode::kJson:
      print_json({{"forgotten", ids}, {"ignored", result.getIgnored()}});
      break;
    case OutputMode::kQuiet:
      for (uint32_t id : ids) std::cout << id << "\n";
      break;
    case OutputMode::kCli: {
      std::string text = fmt::format("{} job(s) forgotten", ids.size());
      if (result.getIgnored() > 0) {
        text += fmt::format(", {} ignored (not complete, or not in the --filter states)",
                            result.getIgnored());
      }
      std::cout << text << "\n";
      break;
    }
  }
  return 0;
}

// --- hq job task-ids, hq job summary ----------------------------------------------------------

int cmd_job_task_ids(const GlobalOptions& g, const JobArgs& a) {
  auto states = parse_states<wire::TaskState>(a.filter, "task");
  Client client = must(Client::connect(g));
  auto listed = job_list(client);
  std::vector<uint32_t> jobs =
      selected_jobs(listed.root<wire::ClientResponse>().getJobs(), a.selector);
  json out = json::object();
  std::string text;
  for (uint32_t job : jobs) {
    // Runs of consecutive ids, as HyperQueue prints them ("2,7,9,20-24"); ids come in order.
    std::string ranges;
    uint32_t first = 0, last = 0;
    bool open = false;
    auto close = [&] {
      if (!open) return;
      if (!ranges.empty()) ranges += ",";
      ranges += first == last ? std::to_string(first) : fmt::format("{}-{}", first, last);
    };
    std::vector<uint32_t> all;
    for_each_task(client, job, "", states, [&](wire::TaskInfo::Reader t) {
      const uint32_t id = t.getId();
      if (open && id == last + 1) {
        last = id;
      } else {
        close();
        first = last = id;
        open = true;
      }
      if (g.mode() == OutputMode::kJson) all.push_back(id);
    });
    close();
    out[std::to_string(job)] = all;
    text += jobs.size() == 1 ? ranges + "\n" : fmt::format("{}: {}\n", job, ranges);
  }
  if (g.mode() == OutputMode::kJson) {
    print_json(out);
  } else {
    std::cout << text;
  }
  return 0;
}

int cmd_job_summary(const GlobalOptions& g) {
  Client client = must(Client::connect(g));
  auto listed = job_list(client);
  // HyperQueue's order, then hq's own states.
  const wire::JobState order[] = {wire::JobState::RUNNING,  wire::JobState::WAITING,
                                  wire::JobState::FINISHED, wire::JobState::FAILED,
                                  wire::JobState::CANCELED, wire::JobState::ABORTED,
                                  wire::JobState::OPENED};
  std::map<wire::JobState, uint32_t> counts;
  for (auto j : listed.root<wire::ClientResponse>().getJobs()) ++counts[j.getState()];
  json out = json::object();
  Table table({"STATUS", "COUNT"});
  std::string quiet;
  for (wire::JobState s : order) {
    std::string name = state_name(s);
    out[name] = counts[s];
    std::string upper = name;
    std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
    table.add({upper, std::to_string(counts[s])});
    quiet += fmt::format("{} {}\n", upper, counts[s]);
  }
  switch (g.mode()) {
    case OutputMode::kJson:
      print_json(out);
      break;
    case OutputMode::kQuiet:
      std::cout << quiet;
      break;
    case OutputMode::kCli:
      std::cout << table.render();
      break;
  }
  return 0;
}

// --- hq job cat -------------------------------------------------------------------------------

// Copies a file to stdout; false when it cannot be read.
bool copy_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return false;
  char buffer[1 << 16];
  while (in) {
    in.read(buffer, sizeof(buffer));
    std::cout.write(buffer, in.gcount());
  }
  return !in.bad();
}

int cmd_job_cat(const GlobalOptions& g, const JobArgs& a) {
  if (g.mode() == OutputMode::kJson) {
    throw CommandError{
        "hq job cat prints the tasks' raw output: JSON output mode is not supported (for a "
        "stream, `hq output-log DIR export JOB` gives JSON)"};
  }
  const stream::Channel channel = must(stream::parse_channel(a.channel), "invalid channel");
  auto states = parse_states<wire::TaskState>(a.task_status, "task", "--task-status");
  if (!a.tasks.empty()) must(IdSet::parse(a.tasks), "invalid --tasks");
  Client client = must(Client::connect(g));
  capnp::MallocMessageBuilder request;
  set_job_selector(a.selector, request.initRoot<wire::ClientRequest>().initJobInfo());
  auto response = must(client.call(request));
  auto details = response.root<wire::ClientResponse>().getJobDetails();
  if (details.size() == 0) throw no_job(a.selector);
  const char* name = stream::channel_name(channel);
  for (auto d : details) {
    const JobId job = d.getSummary().getId();
    JobDescriptionSpec desc =
        must(net::from_wire(d.getDescription()),
             fmt::format("job {} has a description this client cannot read", job));
    const bool per_task = !desc.tasks.empty();
    if (per_task && desc.tasks.size() != desc.task_ids.size()) {
      throw CommandError{fmt::format(
          "job {} has too many tasks with bodies of their own for the server to send their "
          "output paths; read the files named by `hq task info {} TASKS`",
          job, job)};
    }
    // The stream is opened at the first task that writes into it.
    std::unique_ptr<stream::StreamReader> reader;
    bool any = false;
    for_each_task(client, job, a.tasks, states, [&](wire::TaskInfo::Reader t) {
      any = true;
      const TaskId id = t.getId();
      const TaskBodySpec& body = per_task ? task_body(desc, id) : desc.body;
      TaskPaths paths = task_paths(body, job, id, t.getInstance(), client.server_uid());
      const std::string& path =
          channel == stream::Channel::kStdout ? paths.stdout_path : paths.stderr_path;
      const bool channel_in_file =
          !(channel == stream::Channel::kStdout ? body.stdout_path : body.stderr_path).empty();
      if (a.task_header) std::cout << fmt::format("# Job {}, task {}\n", job, id);
      if (channel_in_file) {
        if (!copy_file(path)) {
          std::cout.flush();
          std::cerr << fmt::format("warning: task {} of job {}: cannot read its {} file '{}'\n", id,
                                   job, name, path);
        }
        return;
      }
      if (desc.stream.empty()) {
        std::cout.flush();
        std::cerr << fmt::format("warning: task {} of job {} has no {} (discarded)\n", id, job,
                                 name);
        return;
      }
      if (!reader) {
        const std::string dir = stream_dir(desc, job, client.server_uid());
        stream::ReaderOptions options;
        options.server_uid = client.server_uid();
        reader = must(stream::StreamReader::open(dir, options),
                      fmt::format("cannot read the output stream '{}' of job {}", dir, job));
      }
      auto info = reader->task(job, id);
      if (!info) {
        std::cout.flush();
        std::cerr << fmt::format("warning: task {} of job {} has no output in its stream yet\n", id,
                                 job);
        return;
      }
      Status st = reader->read(*info, channel, [](std::string_view bytes) {
        std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
        return std::cout ? Status::ok() : Status::error("cannot write to stdout");
      });
      if (!st) throw CommandError{st.message()};
    });
    if (!any) {
      std::cerr << fmt::format("warning: no task of job {} is selected: nothing to print\n", job);
    }
  }
  std::cout.flush();
  return 0;
}

// --- hq job progress --------------------------------------------------------------------------

// Draws progress messages: a bar redrawn in place on a terminal, a line per message otherwise.
class ProgressView {
 public:
  explicit ProgressView(bool terminal) : terminal_(terminal) {}

  void show(wire::JobProgress::Reader p) {
    auto c = p.getCounts();
    const uint64_t finished = c.getFinished(), failed = c.getFailed(), canceled = c.getCanceled(),
                   aborted = c.getAborted();
    const uint64_t ended = finished + failed + canceled + aborted;
    const uint64_t total = ended + c.getRunning() + c.getWaiting();
    const auto now = std::chrono::steady_clock::now();
    if (!started_) {
      started_ = true;
      start_ = now;
      start_ended_ = ended;
    }
    const double seconds = std::chrono::duration<double>(now - start_).count();
    const double rate = seconds > 0 ? static_cast<double>(ended - start_ended_) / seconds : 0.0;
    std::string counts = fmt::format("{} finished", finished);
    if (failed) counts += fmt::format(", {} failed", failed);
    if (canceled) counts += fmt::format(", {} canceled", canceled);
    if (aborted) counts += fmt::format(", {} aborted", aborted);
    counts += fmt::format(", {} running, {} waiting", c.getRunning(), c.getWaiting());
    std::string tail;
    if (p.getDone()) {
      tail =
          fmt::format("done in {}", format_duration(Millis(static_cast<int64_t>(seconds * 1000))));
    } else if (rate > 0) {
      const double eta = static_cast<double>(total - ended) / rate;
      tail = fmt::format("{:.1f} tasks/s, ETA {}", rate,
                         format_duration(Millis(static_cast<int64_t>(eta * 1000))));
    } else {
      tail = "ETA unknown";
    }
    const std::string jobs =
        p.getJobs() == 1 ? "" : fmt::format("{}/{} jobs, ", p.getCompleteJobs(), p.getJobs());
    if (!terminal_) {
      std::cout << fmt::format("Progress: {}{}/{} tasks ended ({}); {}\n", jobs, ended, total,
                               counts, tail);
      std::cout.flush();
      return;
    }
    constexpr size_t kWidth = 30;
    std::string bar(kWidth, '.');
    auto fill = [&](uint64_t upto, char ch) {
      const size_t n = total ? static_cast<size_t>(upto * kWidth / total) : 0;
      for (size_t i = 0; i < n && i < kWidth; ++i) {
        if (bar[i] == '.') bar[i] = ch;
      }
    };
    fill(finished, '#');
    fill(finished + failed + canceled + aborted, '!');
    fill(ended + c.getRunning(), '>');
    std::cout << fmt::format("\r\x1b[K[{}] {}{}/{} | {} | {}", bar, jobs, ended, total, counts,
                             tail);
    if (p.getDone()) std::cout << "\n";
    std::cout.flush();
  }

 private:
  bool terminal_;
  bool started_ = false;
  std::chrono::steady_clock::time_point start_;
  uint64_t start_ended_ = 0;
};

int cmd_job_progress(const GlobalOptions& g, const JobArgs& a) {
  Client client = must(Client::connect(g));
  show_progress(g, client, a.selector, /*print_final=*/true);
  return 0;
}

}  // namespace

void show_progress(const GlobalOptions& g, Client& client, const std::string& selector,
                   bool print_final) {
  // `--progress` of a wait: drawn for people only (the wait prints what scripts read).
  if (!print_final && g.mode() != OutputMode::kCli) return;
  capnp::MallocMessageBuilder request;
  set_job_selector(selector, request.initRoot<wire::ClientRequest>().initJobWatch());
  ProgressView view(::isatty(STDOUT_FILENO) == 1);
  for (auto message = must(client.call(request));; message = must(client.next())) {
    auto root = message.root<wire::ClientResponse>();
    if (!root.isProgress()) throw CommandError{"the server answered the watch unexpectedly"};
    auto p = root.getProgress();
    if (p.getJobs() == 0) {
      if (selector == "all") {
        if (g.mode() == OutputMode::kCli) std::cout << "No jobs\n";
        return;
      }
      throw no_job(selector);
    }
    if (g.mode() == OutputMode::kCli) view.show(p);
    if (!p.getDone()) continue;
    // The job list's shape of counts (task_stats), for scripts; once, at the end.
    if (print_final && g.mode() == OutputMode::kJson) {
      auto c = p.getCounts();
      print_json({{"jobs", p.getJobs()},
                  {"complete_jobs", p.getCompleteJobs()},
                  {"task_stats", task_stats_json(c)}});
    }
    return;
  }
}

void add_job_management_commands(CLI::App& job, CLI::App& task, const GlobalOptions& g, int& code) {
  auto a = std::make_shared<JobArgs>();
  const char* kSelector = "Job id, range (1-4), last or all";

  auto* cancel = task.add_subcommand(
      "cancel", "Cancel single tasks of a job; the tasks that depend on them are aborted");
  cancel->add_option("job", a->job, "Job id or last")->required();
  cancel->add_option("tasks", a->tasks, "Task ids, e.g. 3,7-9")->required();
  cancel->callback([a, &g, &code] { code = cmd_task_cancel(g, *a); });

  auto* forget = job.add_subcommand(
      "forget",
      "Remove complete jobs from the server's memory (and, with `hq journal prune`, "
      "from the journal)");
  forget->add_option("selector", a->selector, kSelector)->required();
  forget->add_option("--filter", a->filter,
                     "Only jobs in these states: finished,failed,canceled,aborted (default: "
                     "any complete job)");
  forget->callback([a, &g, &code] { code = cmd_job_forget(g, *a); });

  auto* task_ids = job.add_subcommand("task-ids", "Print the task ids of jobs as ranges");
  task_ids->add_option("selector", a->selector, kSelector)->required();
  task_ids->add_option("--filter", a->filter,
                       "Only tasks in these states: waiting,running,finished,failed,canceled,"
                       "aborted");
  task_ids->callback([a, &g, &code] { code = cmd_job_task_ids(g, *a); });

  job.add_subcommand("summary", "Count jobs per state")->callback([&g, &code] {
    code = cmd_job_summary(g);
  });

  auto* cat = job.add_subcommand(
      "cat", "Print the stdout or stderr of tasks, from their files or the job's stream");
  cat->add_option("selector", a->selector, "Job id, range (1-4) or last")->required();
  cat->add_option("channel", a->channel, "stdout or stderr")
      ->required()
      ->check(CLI::IsMember({"stdout", "stderr"}));
  cat->add_option("--tasks", a->tasks, "Only these task ids, e.g. 1-5,9");
  cat->add_option("--task-status", a->task_status,
                  "Only tasks in these states: waiting,running,finished,failed,canceled,aborted");
  cat->add_flag("--print-task-header", a->task_header,
                "Print '# Job J, task T' before the output of each task");
  cat->callback([a, &g, &code] { code = cmd_job_cat(g, *a); });

  auto* progress =
      job.add_subcommand("progress",
                         "Show the progress of jobs until they end (a bar on a terminal, lines "
                         "otherwise)");
  progress->add_option("selector", a->selector, kSelector)->required();
  progress->callback([a, &g, &code] { code = cmd_job_progress(g, *a); });
}

}  // namespace hq::cli
