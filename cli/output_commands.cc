#include "cli/output_commands.h"

#include <iostream>
#include <map>
#include <memory>
#include <tuple>

#include <fmt/format.h>
#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "cli/print.h"
#include "common/id_set.h"
#include "common/time.h"
#include "output-stream/stream.h"

namespace hq::cli {
namespace {

using nlohmann::json;
using stream::Channel;
using stream::StreamReader;
using stream::TaskInfo;

// The arguments of every `hq output` command; each command reads the ones it declares.
struct OutputArgs {
  std::string dir;
  std::string server_uid;
  std::optional<JobId> job_filter;  // show --job
  JobId job = 0;                    // cat, export
  std::string tasks;
  std::string channel;
  bool allow_unfinished = false;
};

// Task output may hold any bytes: invalid UTF-8 becomes U+FFFD in JSON.
void print_json(const json& j) {
  std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
}

std::unique_ptr<StreamReader> open_stream(const OutputArgs& a) {
  stream::ReaderOptions options;
  if (!a.server_uid.empty()) options.server_uid = a.server_uid;
  return must(StreamReader::open(a.dir, options), "cannot read the output stream");
}

// A note on stderr when the stream is damaged; `hq output summary` has the details.
void warn_damage(const GlobalOptions& g, const StreamReader& reader) {
  if (reader.damage().empty() || g.mode() == OutputMode::kQuiet) return;
  std::cerr << fmt::format(
      "warning: the stream is damaged in {} place(s); what follows the damage is lost (see `hq "
      "output summary`)\n",
      reader.damage().size());
}

std::optional<Channel> channel_arg(const std::string& text) {
  if (text.empty()) return std::nullopt;
  return must(stream::parse_channel(text), "invalid --channel");
}

std::string bytes_text(uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  if (n < (1u << 20)) return fmt::format("{:.1f} KiB", n / 1024.0);
  if (n < (1u << 30)) return fmt::format("{:.1f} MiB", n / 1048576.0);
  return fmt::format("{:.2f} GiB", n / 1073741824.0);
}

std::string ids_text(const std::vector<uint32_t>& ids) {
  IdSetBuilder b;
  for (uint32_t id : ids) b.add(id);
  return std::move(b).build().to_string();
}

// The tasks of `job` that --task names, in its order (all tasks by id without it). Fails when
// one is missing from the stream, or has not finished and `allow_unfinished` is false.
std::vector<TaskInfo> chosen_tasks(const StreamReader& reader, const OutputArgs& a,
                                   bool allow_unfinished) {
  std::vector<TaskInfo> tasks;
  if (a.tasks.empty()) {
    tasks = reader.tasks(a.job);
  } else {
    IdSet ids = must(IdSet::parse(a.tasks), "invalid --task");
    std::vector<uint32_t> missing;
    ids.for_each([&](uint32_t id) {
      if (auto t = reader.task(a.job, id)) {
        tasks.push_back(*t);
      } else {
        missing.push_back(id);
      }
    });
    if (!missing.empty() && missing.size() < ids.size()) {
      std::sort(missing.begin(), missing.end());
      throw CommandError{fmt::format("job {} has no output stream for task(s) {} in '{}'", a.job,
                                     ids_text(missing), a.dir)};
    }
  }
  if (tasks.empty()) {
    std::vector<uint32_t> jobs;
    for (const auto& j : reader.jobs()) jobs.push_back(j.id);
    throw CommandError{fmt::format("{} of job {} is in the stream '{}' (jobs there: {})",
                                   a.tasks.empty() ? "no task" : "no chosen task", a.job, a.dir,
                                   jobs.empty() ? "none" : ids_text(jobs))};
  }
  if (!allow_unfinished) {
    std::vector<uint32_t> open;
    for (const TaskInfo& t : tasks) {
      if (!t.finished) open.push_back(t.task);
    }
    if (!open.empty()) {
      std::sort(open.begin(), open.end());
      throw CommandError{fmt::format(
          "the output of task(s) {} of job {} is not finished (still running, or its worker was "
          "lost); use --allow-unfinished to print what there is",
          ids_text(open), a.job)};
    }
  }
  return tasks;
}

int cmd_output_summary(const GlobalOptions& g, const OutputArgs& a) {
  auto reader = open_stream(a);
  stream::Summary s = reader->summary();
  json damage = json::array();
  for (const auto& d : s.damage) {
    damage.push_back({{"file", d.file}, {"offset", d.offset}, {"reason", d.reason}});
  }
  switch (g.mode()) {
    case OutputMode::kJson:
      // HyperQueue's shape (`hq output-log DIR summary`), hq's additions after its keys.
      print_json({{"filename", a.dir},
                  {"summary",
                   {{"n_files", s.files},
                    {"n_jobs", s.jobs},
                    {"n_tasks", s.tasks},
                    {"n_streams", s.tasks + s.superseded_instances},
                    {"n_opened", s.open},
                    {"stdout_size", s.bytes[0]},
                    {"stderr_size", s.bytes[1]},
                    {"n_superseded", s.superseded_instances},
                    {"superseded_stdout_size", s.superseded_bytes[0]},
                    {"superseded_stderr_size", s.superseded_bytes[1]},
                    {"server_uid", s.server_uid},
                    {"file_bytes", s.file_bytes},
                    {"records", s.records},
                    {"n_finished", s.finished},
                    {"damage", damage}}}});
      break;
    case OutputMode::kQuiet:
      break;
    case OutputMode::kCli:
      std::cout << render_pairs({
          {"Directory", a.dir},
          {"Server UID", s.server_uid.empty() ? "unknown" : s.server_uid},
          {"Files",
           fmt::format("{} ({}, {} records)", s.files, bytes_text(s.file_bytes), s.records)},
          {"Jobs", std::to_string(s.jobs)},
          {"Tasks", fmt::format("{} ({} finished, {} open)", s.tasks, s.finished, s.open)},
          {"Stdout", fmt::format("{} ({} bytes)", bytes_text(s.bytes[0]), s.bytes[0])},
          {"Stderr", fmt::format("{} ({} bytes)", bytes_text(s.bytes[1]), s.bytes[1])},
          {"Superseded instances", fmt::format("{} ({} bytes)", s.superseded_instances,
                                               s.superseded_bytes[0] + s.superseded_bytes[1])},
          {"Damage", s.damage.empty() ? "none" : fmt::format("{} place(s)", s.damage.size())},
      });
      for (const auto& d : s.damage) {
        std::cout << fmt::format("  {} at byte {}: {}\n", d.file, d.offset, d.reason);
      }
      break;
  }
  return 0;
}

int cmd_output_jobs(const GlobalOptions& g, const OutputArgs& a) {
  auto reader = open_stream(a);
  warn_damage(g, *reader);
  json out = json::array();
  Table table({"ID", "TASKS", "FINISHED", "STDOUT", "STDERR"});
  for (const auto& j : reader->jobs()) {
    out.push_back({{"id", j.id},
                   {"tasks", j.tasks},
                   {"finished", j.finished},
                   {"stdout_bytes", j.bytes[0]},
                   {"stderr_bytes", j.bytes[1]}});
    table.add({std::to_string(j.id), std::to_string(j.tasks), std::to_string(j.finished),
               bytes_text(j.bytes[0]), bytes_text(j.bytes[1])});
  }
  if (g.mode() == OutputMode::kJson) {
    print_json(out);
  } else if (g.mode() == OutputMode::kQuiet) {
    for (auto& j : out) std::cout << j["id"] << "\n";
  } else if (out.empty()) {
    std::cout << "No jobs in the stream\n";
  } else {
    std::cout << table.render();
  }
  return 0;
}

// Cuts chunks into lines "JOB.TASK:CHANNEL> line". A line split across chunks is kept until it
// ends, or until the last chunk of its task's channel (then it gets a newline).
class LinePrinter {
 public:
  explicit LinePrinter(bool json) : json_(json) {}

  void add(const stream::Chunk& c) {
    auto key = std::make_tuple(c.key.job, c.key.task, static_cast<uint8_t>(c.channel));
    auto it = partial_.find(key);
    prefix_ = fmt::format("{}.{}:{}> ", c.key.job, c.key.task, static_cast<int>(c.channel));
    std::string_view bytes = c.bytes;
    for (size_t nl; (nl = bytes.find('\n')) != std::string_view::npos;) {
      if (it != partial_.end()) {
        it->second.append(bytes.substr(0, nl));
        emit(c, it->second);
        partial_.erase(it);
        it = partial_.end();
      } else {
        emit(c, bytes.substr(0, nl));
      }
      bytes.remove_prefix(nl + 1);
    }
    if (!bytes.empty()) {
      if (it == partial_.end()) it = partial_.emplace(key, std::string()).first;
      it->second.append(bytes);
    }
    if (c.last && it != partial_.end()) {
      emit(c, it->second);
      partial_.erase(it);
    }
    if (out_.size() >= kFlushBytes) flush();
  }

  void finish() {
    if (json_) print_json(lines_);
    flush();
  }

 private:
  static constexpr size_t kFlushBytes = 1 << 20;

  void emit(const stream::Chunk& c, std::string_view line) {
    if (json_) {
      lines_.push_back({{"job", c.key.job},
                        {"task", c.key.task},
                        {"instance", c.key.instance},
                        {"channel", stream::channel_name(c.channel)},
                        {"time", format_iso8601(c.time_ms)},
                        {"line", line}});
      return;
    }
    out_.append(prefix_);
    out_.append(line);
    out_.push_back('\n');
  }

  void flush() {
    std::cout.write(out_.data(), static_cast<std::streamsize>(out_.size()));
    out_.clear();
  }

  bool json_;
  json lines_ = json::array();
  std::string out_;
  std::string prefix_;  // of the chunk being cut
  std::map<std::tuple<JobId, TaskId, uint8_t>, std::string> partial_;
};

int cmd_output_show(const GlobalOptions& g, const OutputArgs& a) {
  auto channel = channel_arg(a.channel);
  auto reader = open_stream(a);
  warn_damage(g, *reader);
  LinePrinter printer(g.mode() == OutputMode::kJson);
  Status s = reader->for_each_chunk(a.job_filter, channel, [&](const stream::Chunk& c) {
    printer.add(c);
    return Status::ok();
  });
  if (!s) throw CommandError{s.message()};
  printer.finish();
  return 0;
}

int cmd_output_cat(const GlobalOptions& g, const OutputArgs& a) {
  const Channel channel = channel_arg(a.channel).value_or(Channel::kStdout);
  auto reader = open_stream(a);
  warn_damage(g, *reader);
  for (const TaskInfo& t : chosen_tasks(*reader, a, a.allow_unfinished)) {
    Status s = reader->read(t, channel, [](std::string_view bytes) {
      std::cout.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
      return std::cout ? Status::ok() : Status::error("cannot write to stdout");
    });
    if (!s) throw CommandError{s.message()};
  }
  std::cout.flush();
  return 0;
}

int cmd_output_export(const GlobalOptions& g, const OutputArgs& a) {
  auto reader = open_stream(a);
  warn_damage(g, *reader);
  json out = json::array();
  for (const TaskInfo& t : chosen_tasks(*reader, a, true)) {
    json j = {{"id", t.task},
              {"instance", t.instance},
              {"finished", t.finished},
              {"exit_code", t.finished ? json(t.exit_code) : json(nullptr)}};
    for (Channel c : {Channel::kStdout, Channel::kStderr}) {
      std::string text;
      text.reserve(t.bytes[static_cast<size_t>(c)]);
      Status s = reader->read(t, c, [&](std::string_view bytes) {
        text.append(bytes);
        return Status::ok();
      });
      if (!s) throw CommandError{s.message()};
      j[stream::channel_name(c)] = std::move(text);
    }
    out.push_back(std::move(j));
  }
  print_json(out);
  return 0;
}

}  // namespace

void add_output_commands(CLI::App& app, const GlobalOptions& g, int& code) {
  auto* output = app.add_subcommand(
      "output", "Read the task outputs of a stream directory (hq submit --stream DIR), offline");
  output->require_subcommand(1);
  auto a = std::make_shared<OutputArgs>();

  // Every command reads one directory, possibly of one server among several.
  auto add = [&](const std::string& name, const std::string& help) {
    auto* cmd = output->add_subcommand(name, help);
    cmd->add_option("dir", a->dir, "The stream directory")->required();
    cmd->add_option("--server-uid", a->server_uid,
                    "Read only the files of this server (needed when the directory holds files "
                    "of several)");
    return cmd;
  };
  auto add_job = [&](CLI::App* cmd) {
    cmd->add_option("job", a->job, "Job id")->required();
    cmd->add_option("--task", a->tasks,
                    "Task ids in the order to print them, e.g. 3-4,2 (default: all, by id)");
  };

  add("summary",
      "Files, jobs, tasks, bytes per channel, unfinished tasks, superseded instances and damage")
      ->callback([a, &g, &code] { code = cmd_output_summary(g, *a); });

  add("jobs", "The jobs in the stream")->callback([a, &g, &code] {
    code = cmd_output_jobs(g, *a);
  });

  auto* show = add("show", "Every line of output in time order, as JOB.TASK:CHANNEL> line");
  show->add_option("--job", a->job_filter, "Only this job");
  show->add_option("--channel", a->channel, "Only stdout or stderr")
      ->check(CLI::IsMember({"stdout", "stderr"}));
  show->callback([a, &g, &code] { code = cmd_output_show(g, *a); });

  auto* cat = add("cat", "The raw output of tasks of a job, task after task (any output mode)");
  add_job(cat);
  cat->add_option("--channel", a->channel, "stdout (default) or stderr")
      ->check(CLI::IsMember({"stdout", "stderr"}));
  cat->add_flag("--allow-unfinished", a->allow_unfinished,
                "Print tasks whose output has not ended too (still running, or lost)");
  cat->callback([a, &g, &code] { code = cmd_output_cat(g, *a); });

  auto* exp = add("export", "The output of tasks of a job as JSON (any output mode)");
  add_job(exp);
  exp->callback([a, &g, &code] { code = cmd_output_export(g, *a); });
}

}  // namespace hq::cli
