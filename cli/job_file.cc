#include "cli/job_file.h"

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "common/id_set.h"
#include "common/placeholders.h"
#include "common/task_graph.h"
#include "common/time.h"

namespace hq::cli {
namespace {

// Thrown inside the parser only, and turned into the Result at its boundary.
struct FileError {
  std::string message;
};

class Reader {
 public:
  Reader(std::string file, bool deps_outside)
      : file_(std::move(file)), deps_outside_(deps_outside) {}

  [[noreturn]] void fail(const toml::source_region& where, const std::string& key,
                         const std::string& what) const {
    std::string at = where.begin.line ? fmt::format("{}:{}", file_, where.begin.line) : file_;
    throw FileError{key.empty() ? fmt::format("{}: {}", at, what)
                                : fmt::format("{}: key '{}': {}", at, key, what)};
  }

  // Every key of `table` must be one of `allowed`.
  void only(const toml::table& table, std::initializer_list<std::string_view> allowed,
            const std::string& prefix) const {
    for (auto&& [key, value] : table) {
      if (std::find(allowed.begin(), allowed.end(), key.str()) == allowed.end()) {
        fail(key.source(), prefix + std::string(key.str()),
             fmt::format("unknown key (known here: {})", fmt::join(allowed, ", ")));
      }
    }
  }

  std::string string(const toml::node& node, const std::string& key) const {
    if (auto s = node.as_string()) return s->get();
    fail(node.source(), key, "expected a string");
  }
  int64_t integer(const toml::node& node, const std::string& key) const {
    if (auto i = node.as_integer()) return i->get();
    fail(node.source(), key, "expected an integer");
  }
  bool boolean(const toml::node& node, const std::string& key) const {
    if (auto b = node.as_boolean()) return b->get();
    fail(node.source(), key, "expected true or false");
  }
  // "1m 10s", "00:10:00", or a number of seconds.
  uint64_t duration(const toml::node& node, const std::string& key) const {
    if (auto i = node.as_integer()) {
      if (i->get() < 0) fail(node.source(), key, "a duration cannot be negative");
      return static_cast<uint64_t>(i->get()) * 1000;
    }
    auto d = parse_duration(string(node, key));
    if (!d) fail(node.source(), key, d.message());
    if (d->count() < 0) fail(node.source(), key, "a duration cannot be negative");
    return static_cast<uint64_t>(d->count());
  }
  std::vector<std::string> strings(const toml::node& node, const std::string& key) const {
    const toml::array* list = node.as_array();
    if (!list) fail(node.source(), key, "expected a list of strings");
    std::vector<std::string> out;
    for (const toml::node& item : *list) out.push_back(string(item, key));
    return out;
  }

  JobFileOutput output(const toml::node& node, const std::string& key) const {
    if (node.is_string()) return {string(node, key), false};
    const toml::table* t = node.as_table();
    if (!t) fail(node.source(), key, "expected a path, or { path = ..., mode = ... }");
    only(*t, {"path", "mode"}, key + ".");
    JobFileOutput out;
    if (auto path = t->get("path")) {
      out.path = string(*path, key + ".path");
    } else {
      fail(node.source(), key, "needs a path");
    }
    if (auto mode = t->get("mode")) {
      const std::string m = string(*mode, key + ".mode");
      if (m == "rm-if-finished") {
        out.remove_if_finished = true;
      } else if (m != "keep") {
        fail(mode->source(), key + ".mode", fmt::format("unknown mode '{}' (rm-if-finished)", m));
      }
    }
    return out;
  }

  JobFileRequest request(const toml::table& t, const std::string& key) const {
    only(t, {"resources", "time_request", "n_nodes"}, key + ".");
    JobFileRequest out;
    std::vector<ResourceRequestEntry> entries;
    bool has_cpus = false;
    if (auto resources = t.get("resources")) {
      const toml::table* r = resources->as_table();
      if (!r) fail(resources->source(), key + ".resources", "expected a table of amounts");
      for (auto&& [name, value] : *r) {
        const std::string entry_key = fmt::format("{}.resources.{}", key, name.str());
        std::string amount;
        if (auto s = value.as_string()) {
          amount = s->get();
        } else if (auto i = value.as_integer()) {
          amount = std::to_string(i->get());
        } else if (auto f = value.as_floating_point()) {
          amount = fmt::format("{:.4f}", f->get());
        } else {
          fail(value.source(), entry_key, "expected an amount such as 2, 0.5 or \"4 compact!\"");
        }
        auto entry = parse_request_entry(name.str(), amount);
        if (!entry) fail(value.source(), entry_key, entry.message());
        has_cpus = has_cpus || name.str() == kCpus;
        entries.push_back(std::move(*entry));
      }
    }
    if (!has_cpus) entries.push_back(*parse_request_entry(kCpus, "1"));
    auto made = make_request(std::move(entries));
    if (!made) fail(t.source(), key + ".resources", made.message());
    out.resources = std::move(*made);
    if (auto tr = t.get("time_request")) out.time_request_ms = duration(*tr, key + ".time_request");
    if (auto n = t.get("n_nodes")) {
      const int64_t nodes = integer(*n, key + ".n_nodes");
      if (nodes < 1 || nodes > 1'000'000) fail(n->source(), key + ".n_nodes", "out of range");
      out.nodes = static_cast<uint32_t>(nodes);
    }
    return out;
  }

  // The keys a [[task]] and an [array] share, into `task`.
  void task_keys(const toml::table& t, const std::string& key, JobFileTask& task) const {
    if (auto command = t.get("command")) {
      task.command = strings(*command, key + ".command");
      if (task.command.empty()) fail(command->source(), key + ".command", "is empty");
    } else {
      fail(t.source(), key, "needs a command (a list such as [\"sleep\", \"1\"])");
    }
    if (auto env = t.get("env")) {
      const toml::table* e = env->as_table();
      if (!e) fail(env->source(), key + ".env", "expected a table of strings");
      for (auto&& [name, value] : *e) {
        task.env.emplace_back(name.str(), string(value, fmt::format("{}.env.{}", key, name.str())));
      }
    }
    if (auto cwd = t.get("cwd")) task.cwd = string(*cwd, key + ".cwd");
    if (auto out = t.get("stdout")) task.stdout_output = output(*out, key + ".stdout");
    if (auto err = t.get("stderr")) task.stderr_output = output(*err, key + ".stderr");
    if (auto in = t.get("stdin")) task.stdin_text = string(*in, key + ".stdin");
    if (auto dir = t.get("task_dir")) task.task_dir = boolean(*dir, key + ".task_dir");
    if (auto pin = t.get("pin")) {
      task.pin = string(*pin, key + ".pin");
      if (task.pin != "taskset" && task.pin != "omp") {
        fail(pin->source(), key + ".pin", "expected \"taskset\" or \"omp\"");
      }
    }
    if (auto p = t.get("priority")) {
      const int64_t priority = integer(*p, key + ".priority");
      if (priority < INT32_MIN || priority > INT32_MAX) {
        fail(p->source(), key + ".priority", "out of range");
      }
      task.priority = static_cast<int32_t>(priority);
    }
    if (auto tl = t.get("time_limit")) task.time_limit_ms = duration(*tl, key + ".time_limit");
    if (auto c = t.get("crash_limit")) {
      const int64_t limit = integer(*c, key + ".crash_limit");
      if (limit < 0 || limit > 65535) fail(c->source(), key + ".crash_limit", "out of range");
      task.crash_limit = static_cast<uint32_t>(limit);
    }
    if (auto requests = t.get("request")) {
      const toml::array* list = requests->as_array();
      if (!list || !list->is_array_of_tables()) {
        fail(requests->source(), key + ".request", "expected [[task.request]] tables");
      }
      for (const toml::node& r : *list) {
        task.requests.push_back(request(*r.as_table(), key + ".request"));
        // Alternatives of one task share what the scheduler groups tasks by besides the
        // request itself.
        const JobFileRequest& first = task.requests.front();
        const JobFileRequest& last = task.requests.back();
        if (last.nodes != first.nodes) {
          fail(r.source(), key + ".request.n_nodes",
               "every [[task.request]] of a task must ask for the same n_nodes (alternatives "
               "differ in resources only)");
        }
        if (last.time_request_ms != first.time_request_ms) {
          fail(r.source(), key + ".request.time_request",
               "every [[task.request]] of a task must have the same time_request (alternatives "
               "differ in resources only)");
        }
      }
      if (task.requests.size() > 255) {
        fail(requests->source(), key + ".request", "at most 255 [[task.request]] per task");
      }
    }
    if (task.requests.empty()) task.requests.push_back(request(toml::table{}, key + ".request"));
  }

  JobFile read(std::string_view text) {
    toml::table root;
    try {
      root = toml::parse(text, file_);
    } catch (const toml::parse_error& e) {
      fail(e.source(), "", std::string(e.description()));
    }
    only(root, {"name", "max_fails", "stream", "task", "array"}, "");
    JobFile job;
    if (auto name = root.get("name")) job.name = string(*name, "name");
    if (auto mf = root.get("max_fails")) {
      job.max_fails = integer(*mf, "max_fails");
      if (*job.max_fails < 0) fail(mf->source(), "max_fails", "cannot be negative");
    }
    if (auto stream = root.get("stream")) job.stream = string(*stream, "stream");
    const toml::node* tasks = root.get("task");
    const toml::node* array = root.get("array");
    if (tasks && array) {
      fail(array->source(), "array", "[array] and [[task]] cannot be mixed in one file");
    }
    if (!tasks && !array) fail({}, "", "defines no task: add [[task]] entries or one [array]");
    if (tasks) read_tasks(*tasks, job);
    if (array) read_array(*array, job);
    return job;
  }

  void read_tasks(const toml::node& node, JobFile& job) {
    const toml::array* list = node.as_array();
    if (!list || !list->is_array_of_tables()) {
      fail(node.source(), "task", "expected [[task]] tables");
    }
    std::set<TaskId> given;
    std::vector<toml::source_region> where;
    for (const toml::node& item : *list) {
      const toml::table& t = *item.as_table();
      only(t,
           {"id", "command", "env", "cwd", "stdout", "stderr", "stdin", "task_dir", "pin",
            "priority", "time_limit", "crash_limit", "deps", "request"},
           "task.");
      JobFileTask task;
      if (auto id = t.get("id")) {
        const int64_t value = integer(*id, "task.id");
        if (value < 0 || value > UINT32_MAX) fail(id->source(), "task.id", "out of range");
        task.id = static_cast<TaskId>(value);
        if (!given.insert(task.id).second) {
          fail(id->source(), "task.id", fmt::format("task id {} is used twice", task.id));
        }
        task.entry = std::string();  // marks an explicit id until ids are assigned below
      }
      task_keys(t, "task", task);
      if (auto deps = t.get("deps")) {
        const toml::array* d = deps->as_array();
        if (!d) fail(deps->source(), "task.deps", "expected a list of task ids");
        for (const toml::node& dep : *d) {
          const int64_t value = integer(dep, "task.deps");
          if (value < 0 || value > UINT32_MAX) fail(dep.source(), "task.deps", "out of range");
          task.deps.push_back(static_cast<TaskId>(value));
        }
      }
      where.push_back(t.source());
      job.tasks.push_back(std::move(task));
    }
    // Tasks without an id take the next ids from 0 that no task names.
    TaskId next = 0;
    for (JobFileTask& task : job.tasks) {
      if (task.entry) {
        task.entry.reset();
        continue;
      }
      while (given.contains(next)) ++next;
      task.id = next;
      given.insert(next);
    }
    std::vector<TaskDeps> graph;
    for (const JobFileTask& task : job.tasks) {
      TaskDeps& node = graph.emplace_back(TaskDeps{task.id, {}});
      for (TaskId dep : task.deps) {
        if (given.contains(dep)) node.deps.push_back(dep);  // others: earlier submits' tasks
      }
    }
    for (size_t i = 0; i < job.tasks.size(); ++i) {
      for (TaskId dep : job.tasks[i].deps) {
        if (dep == job.tasks[i].id) {
          fail(where[i], "task.deps", fmt::format("task {} depends on itself", dep));
        }
        if (!given.contains(dep) && !deps_outside_) {
          fail(where[i], "task.deps",
               fmt::format("task {} depends on task {}, which the file does not define",
                           job.tasks[i].id, dep));
        }
      }
    }
    if (auto cycle = find_cycle(graph)) {
      fail(node.source(), "task.deps",
           fmt::format("the dependencies form a cycle: tasks {}", fmt::join(*cycle, " -> ")));
    }
  }

  void read_array(const toml::node& node, JobFile& job) {
    const toml::table* t = node.as_table();
    if (!t) {
      const toml::array* list = node.as_array();
      if (!list || !list->is_array_of_tables() || list->size() != 1) {
        fail(node.source(), "array", "expected one [array] table");
      }
      t = (*list)[0].as_table();
    }
    only(*t,
         {"ids", "entries", "command", "env", "cwd", "stdout", "stderr", "stdin", "task_dir", "pin",
          "priority", "time_limit", "crash_limit", "request"},
         "array.");
    JobFileTask model;
    task_keys(*t, "array", model);
    std::vector<TaskId> ids;
    if (auto text = t->get("ids")) {
      auto set = IdSet::parse(string(*text, "array.ids"));
      if (!set) fail(text->source(), "array.ids", set.message());
      if (set->normalized().size() != set->size()) {
        fail(text->source(), "array.ids", "an id is listed twice");
      }
      if (set->size() > 100'000'000) fail(text->source(), "array.ids", "too many tasks");
      ids = set->to_vector();
    }
    std::vector<std::string> entries;
    if (auto e = t->get("entries")) {
      entries = strings(*e, "array.entries");
      if (!ids.empty() && ids.size() != entries.size()) {
        fail(e->source(), "array.entries",
             fmt::format("{} entries for {} ids: give one entry per id", entries.size(),
                         ids.size()));
      }
      if (ids.empty()) {
        for (uint32_t i = 0; i < entries.size(); ++i) ids.push_back(i);
      }
    }
    if (ids.empty()) fail(t->source(), "array", "needs ids, entries or both");
    job.array = true;
    job.tasks.reserve(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      JobFileTask task = model;
      task.id = ids[i];
      if (!entries.empty()) task.entry = entries[i];
      job.tasks.push_back(std::move(task));
    }
  }

 private:
  std::string file_;
  bool deps_outside_;
};

}  // namespace

Result<JobFile> parse_job_file(std::string_view text, const std::string& file, bool deps_outside) {
  try {
    return Reader(file, deps_outside).read(text);
  } catch (const FileError& e) {
    return Error{e.message};
  }
}

Result<JobFile> read_job_file(const fs::path& path, bool deps_outside) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Error{fmt::format("cannot read job file '{}': {}", path.string(), strerror(errno))};
  }
  std::stringstream text;
  text << in.rdbuf();
  return parse_job_file(text.str(), path.string(), deps_outside);
}

Result<JobDescriptionSpec> job_file_description(const JobFile& file, const std::string& name,
                                                const std::string& submit_dir) {
  JobDescriptionSpec job;
  job.name = file.name.empty() ? "job" : file.name;
  if (file.max_fails) job.max_fails = *file.max_fails;
  if (!file.stream.empty()) {
    if (auto names = per_task_placeholders(file.stream); !names.empty()) {
      return Error{fmt::format(
          "{}: stream names one directory for the whole job: %{{{}}} has no single value there "
          "(use %{{JOB_ID}}, %{{SUBMIT_DIR}} or %{{SERVER_UID}})",
          name, names[0])};
    }
    // As `hq submit --stream`: absolute, the workers resolve the rest.
    PlaceholderValues known;
    known.submit_dir = submit_dir;
    known.job_id = "%{JOB_ID}";
    known.server_uid = "%{SERVER_UID}";
    job.stream = resolve_stream_dir(file.stream, known);
  }
  const bool streamed = !job.stream.empty();
  if (file.tasks.empty()) return Error{fmt::format("{}: the file defines no task", name)};
  const JobFileTask& first = file.tasks.front();
  for (const JobFileTask& t : file.tasks) {
    for (const auto& out : {t.stdout_output, t.stderr_output}) {
      if (out && out->remove_if_finished && streamed && out->path.empty()) {
        return Error{
            fmt::format("{}: task {}: mode = \"rm-if-finished\" needs a path when the "
                        "job has a stream",
                        name, t.id)};
      }
    }
    const uint32_t nodes = t.requests.empty() ? 0 : t.requests[0].nodes;
    GraphTaskSpec& g = job.tasks.emplace_back();
    g.id = t.id;
    g.deps = t.deps;
    // A task's own scheduling parameters where they differ from the first task's (the job's):
    // the scheduler groups the tasks by them.
    const uint32_t first_nodes = first.requests.empty() ? 0 : first.requests[0].nodes;
    g.priority = t.priority;
    g.crash_limit = t.crash_limit.value_or(first.crash_limit.value_or(kDefaultCrashLimit));
    g.nodes = nodes;
    g.own_params =
        t.priority != first.priority || t.crash_limit != first.crash_limit || nodes != first_nodes;
    TaskBodySpec& body = g.body;
    body.program = t.command;
    body.env = t.env;
    body.submit_dir = submit_dir;
    body.cwd = t.cwd.empty() ? submit_dir : t.cwd;
    // Not given: the default file, or the stream of a streamed job (an empty path).
    auto output = [&](const std::optional<JobFileOutput>& out, const char* ext) {
      if (out && !out->path.empty()) return out->path;
      if (streamed && !out) return std::string();
      return fmt::format("%{{CWD}}/job-%{{JOB_ID}}/%{{TASK_ID}}.{}", ext);
    };
    body.stdout_path = output(t.stdout_output, "stdout");
    body.stderr_path = output(t.stderr_output, "stderr");
    body.stdout_rm_if_finished = t.stdout_output && t.stdout_output->remove_if_finished;
    body.stderr_rm_if_finished = t.stderr_output && t.stderr_output->remove_if_finished;
    if (t.stdin_text) body.stdin_data = *t.stdin_text;
    body.task_dir = t.task_dir;
    body.time_limit_ms = t.time_limit_ms;
    if (t.pin == "taskset") body.pin = PinMode::kTaskset;
    if (t.pin == "omp") body.pin = PinMode::kOmp;
    if (!t.requests.empty()) {
      body.resources = t.requests[0].resources;
      body.time_request_ms = t.requests[0].time_request_ms;
    }
    if (t.requests.size() > 1) {
      for (const JobFileRequest& r : t.requests) body.variants.push_back(r.resources);
    }
  }
  const uint32_t first_nodes = first.requests.empty() ? 0 : first.requests[0].nodes;
  job.nodes = first_nodes;
  job.priority = first.priority;
  if (first.crash_limit) job.crash_limit = *first.crash_limit;
  // The job's own body is what clients show for it: the first task's.
  job.body = job.tasks.front().body;
  if (file.array) {
    // One body for all (an array job: nothing per task but its entry), ids in increasing order
    // with their entries beside them.
    std::vector<std::pair<TaskId, const std::string*>> order;
    order.reserve(file.tasks.size());
    for (const JobFileTask& t : file.tasks) {
      order.emplace_back(t.id, t.entry ? &*t.entry : nullptr);
    }
    std::sort(order.begin(), order.end());
    IdSetBuilder ids;
    for (const auto& [id, entry] : order) {
      ids.add(id);
      if (entry) job.entries.push_back(*entry);
    }
    job.task_ids = std::move(ids).build();
    job.tasks.clear();
  }
  if (Status st = normalize_request(job); !st)
    return Error{fmt::format("{}: {}", name, st.message())};
  return job;
}

}  // namespace hq::cli
