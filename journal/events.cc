#include "journal/events.h"

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <kj/exception.h>
#include <kj/io.h>

#include "common/capnp_lists.h"
#include "common/graph_columns.h"
#include "common/varint.h"

namespace hq::journal {
namespace {

using schema::Event;

// Limits for checking a stored record of `words` words: reading every field of a well-formed
// record once costs at most its size, so a record that costs more (pointers that share or loop
// over their targets) is damaged. The schema nests a few levels deep.
capnp::ReaderOptions check_options(size_t words) {
  capnp::ReaderOptions options;
  options.traversalLimitInWords = words;
  options.nestingLimit = 16;
  return options;
}

// Limits for the caller of a checked record: enough to read all of it several times over.
capnp::ReaderOptions read_options(size_t words) {
  capnp::ReaderOptions options = check_options(words);
  options.traversalLimitInWords = 8 * words + 256;
  return options;
}

// Reads every pointer field of a body once; throws kj::Exception on damage.
void check_body(schema::TaskBody::Reader body) {
  for (auto arg : body.getProgram()) (void)arg;
  for (auto kv : body.getEnv()) {
    (void)kv.getKey();
    (void)kv.getValue();
  }
  (void)body.getCwd();
  (void)body.getStdout();
  (void)body.getStderr();
  (void)body.getSubmitDir();
  for (auto e : body.getResources()) (void)e.getName();
  (void)body.getStdin();
  for (auto v : body.getVariants()) {
    for (auto e : v.getResources()) (void)e.getName();
  }
}

// Reads every field of the parts that may hold pointers; throws kj::Exception on damage.
void check(schema::JobDescription::Reader job) {
  (void)job.getName();
  for (auto range : job.getTaskIds()) (void)range.getStep();
  check_body(job.getBody());
  (void)job.getStream();
  if (job.hasGraph()) {
    auto graph = job.getGraph();
    (void)graph.getIds();
    for (auto b : graph.getBodies()) check_body(b);
    (void)graph.getBodyOf();
    (void)graph.getArgv();
    (void)graph.getArgvEnd();
    (void)graph.getDepEnd();
    (void)graph.getDeps();
    (void)graph.getParams();
  }
  for (auto e : job.getEntries()) (void)e;
  for (auto t : job.getTasks()) {
    // Each pointer once: the check's traversal budget is the record's size.
    check_body(t.getBody());
    (void)t.getDeps();
  }
}

void check(schema::TaskBatch::Reader batch) {
  for (auto t : batch.getTasks()) (void)t.getTime();
}

void check(schema::TaskTimes::Reader times, int64_t base) {
  auto list = [base](capnp::Data::Reader data, TaskTimesList which) {
    auto entries = unpack_task_times(data.begin(), data.size(), which, base);
    if (!entries) KJ_FAIL_REQUIRE("damaged packed task times", entries.message().c_str());
  };
  list(times.getStarted(), TaskTimesList::kStarted);
  list(times.getRan(), TaskTimesList::kRan);
  list(times.getFinished(), TaskTimesList::kFinished);
}

// Reads every field of the active member. Keep in step with events.capnp.
void check(Event::Reader event) {
  switch (event.which()) {
    case Event::SERVER_STARTED: {
      auto e = event.getServerStarted();
      (void)e.getServerUid();
      (void)e.getVersion();
      break;
    }
    case Event::JOB_SUBMITTED:
      check(event.getJobSubmitted().getDescription());
      break;
    case Event::TASK_STARTED:
      (void)event.getTaskStarted().getWorker();
      break;
    case Event::TASK_FINISHED:
      (void)event.getTaskFinished().getInstance();
      break;
    case Event::TASK_FAILED:
      (void)event.getTaskFailed().getError();
      break;
    case Event::TASK_CANCELED:
      (void)event.getTaskCanceled().getInstance();
      break;
    case Event::JOB_CANCELED:
      (void)event.getJobCanceled().getJob();
      break;
    case Event::TASK_REQUEUED:
      (void)event.getTaskRequeued().getCrashCounter();
      break;
    case Event::JOB_FORGOTTEN:
      (void)event.getJobForgotten().getJob();
      break;
    case Event::WORKER_CONNECTED: {
      auto e = event.getWorkerConnected();
      (void)e.getHostname();
      (void)e.getWorkDir();
      (void)e.getAddress();
      break;
    }
    case Event::WORKER_LOST:
      (void)event.getWorkerLost().getReason();
      break;
    case Event::TASKS_STARTED:
      check(event.getTasksStarted());
      break;
    case Event::TASKS_FINISHED:
      check(event.getTasksFinished());
      break;
    case Event::TASK_TIMES:
      check(event.getTaskTimes(), event.getTime());
      break;
    case Event::JOB_ABORTED:
      (void)event.getJobAborted().getJob();
      break;
    case Event::JOB_RESERVED:
      (void)event.getJobReserved().getTasks();
      break;
    case Event::TASKS_CANCELED:
      for (auto range : event.getTasksCanceled().getTasks()) (void)range.getStep();
      break;
    case Event::ALLOC_QUEUE_ADDED:
      (void)event.getAllocQueueAdded().getParams();
      break;
    case Event::ALLOC_QUEUE_PAUSED:
      (void)event.getAllocQueuePaused().getReason();
      break;
    case Event::ALLOC_QUEUE_RESUMED:
    case Event::ALLOC_QUEUE_REMOVED:
      break;
    case Event::ALLOCATION_SUBMITTED: {
      auto a = event.getAllocationSubmitted();
      (void)a.getAllocation();
      (void)a.getLogDir();
      break;
    }
    case Event::ALLOCATION_ENDED: {
      auto a = event.getAllocationEnded();
      (void)a.getAllocation();
      (void)a.getDetail();
      break;
    }
    case Event::JOB_OPENED:
      (void)event.getJobOpened().getName();
      break;
    case Event::JOB_CLOSED:
      (void)event.getJobClosed().getJob();
      break;
    case Event::TASKS_SUBMITTED: {
      auto e = event.getTasksSubmitted();
      check(e.getDescription());
      for (auto r : e.getSubmitDeps()) (void)r.getStep();
      break;
    }
    case Event::WORKER_REATTACHED:
      (void)event.getWorkerReattached().getHostname();
      (void)event.getWorkerReattached().getAddress();
      break;
    case Event::TASKS_REATTACHED:
      check(event.getTasksReattached());
      break;
    case Event::REATTACH_ENDED:
      break;
  }
}

std::string text(capnp::Text::Reader t) { return std::string(t.cStr(), t.size()); }

}  // namespace

// A packed list of task times: per entry, in order of task and instance,
//   varint(task - the previous entry's task)          (the first against 0)
//   varint(instance)
//   varint(zigzag(time - the previous entry's time))  (the first against the record's time);
//                                                     the start, or the end in `finished`
//   in `ran` only: varint(zigzag(end - start))
std::string pack_task_times(const std::vector<TaskTimeEntry>& entries, TaskTimesList list,
                            int64_t base) {
  std::string out;
  out.reserve(entries.size() * 5);
  TaskId prev_task = 0;
  int64_t prev_time = base;
  for (const TaskTimeEntry& e : entries) {
    put_varint(out, e.task - prev_task);
    prev_task = e.task;
    put_varint(out, e.instance);
    const int64_t time = list == TaskTimesList::kFinished ? e.end : e.start;
    put_varint(out, zigzag(wrap_sub(time, prev_time)));
    prev_time = time;
    if (list == TaskTimesList::kRan) put_varint(out, zigzag(wrap_sub(e.end, e.start)));
  }
  return out;
}

Result<std::vector<TaskTimeEntry>> unpack_task_times(const uint8_t* data, size_t size,
                                                     TaskTimesList list, int64_t base) {
  std::vector<TaskTimeEntry> out;
  size_t pos = 0;
  uint64_t task = 0;
  int64_t prev_time = base;
  while (pos < size) {
    const size_t at = pos;
    auto delta = get_varint(data, size, pos);
    auto instance = delta ? get_varint(data, size, pos) : std::nullopt;
    auto time = instance ? get_varint(data, size, pos) : std::nullopt;
    auto run = time && list == TaskTimesList::kRan ? get_varint(data, size, pos)
                                                   : std::optional<uint64_t>(0);
    if (!time || !run) return Error{fmt::format("packed task times cut short at byte {}", at)};
    if (*delta > UINT32_MAX) {
      return Error{fmt::format(
          "packed task times: a task id step of {} (beyond 32 bits) at byte {}", *delta, at)};
    }
    task += *delta;
    if (task > UINT32_MAX || *instance > UINT32_MAX) {
      return Error{fmt::format("packed task times: task {} instance {} beyond 32 bits at byte {}",
                               task, *instance, at)};
    }
    TaskTimeEntry e;
    e.task = static_cast<TaskId>(task);
    e.instance = static_cast<InstanceId>(*instance);
    const int64_t t = wrap_add(prev_time, unzigzag(*time));
    prev_time = t;
    if (list == TaskTimesList::kFinished) {
      e.end = t;
    } else {
      e.start = t;
      if (list == TaskTimesList::kRan) {
        e.end = wrap_add(t, unzigzag(*run));
      }
    }
    out.push_back(e);
  }
  return out;
}

EventMessage::EventMessage(int64_t time_ms)
    : builder_(kj::arrayPtr(first_segment_.data(), first_segment_.size()),
               capnp::AllocationStrategy::GROW_HEURISTICALLY),
      event_(builder_.initRoot<Event>()) {
  event_.setTime(time_ms);
}

size_t encode(capnp::MessageBuilder& message, std::string& out) {
  auto segments = message.getSegmentsForOutput();
  const size_t bytes = capnp::computeSerializedSizeInWords(segments) * sizeof(capnp::word);
  const size_t offset = out.size();
  out.resize(offset + bytes);
  kj::ArrayOutputStream stream(
      kj::arrayPtr(reinterpret_cast<kj::byte*>(out.data() + offset), bytes));
  capnp::writeMessage(stream, segments);
  return bytes;
}

Result<Event::Reader> EventDecoder::decode(const void* data, size_t size) {
  reader_.reset();
  if (size == 0) return Error{"empty record"};
  if (size % sizeof(capnp::word) != 0) {
    return Error{fmt::format("record of {} bytes is not a whole number of 8-byte words", size)};
  }
  if (size > kMaxRecordBytes) {
    return Error{fmt::format("record of {} bytes is larger than the limit of {} bytes", size,
                             kMaxRecordBytes)};
  }
  const size_t n = size / sizeof(capnp::word);
  if (words_.size() < n) words_.resize(std::max(n, 2 * words_.size()));
  std::memcpy(words_.data(), data, size);  // aligns the words
  kj::ArrayPtr<const capnp::word> words(reinterpret_cast<const capnp::word*>(words_.data()), n);
  try {
    reader_.emplace(words, check_options(n));
    if (reader_->getEnd() != words.end()) {
      size_t trailing = (words.end() - reader_->getEnd()) * sizeof(capnp::word);
      reader_.reset();
      return Error{fmt::format("record has {} trailing bytes after its message", trailing)};
    }
    check(reader_->getRoot<Event>());
    reader_.emplace(words, read_options(n));  // a fresh traversal budget for the caller
    return reader_->getRoot<Event>();
  } catch (const kj::Exception& e) {
    reader_.reset();
    return Error{fmt::format("undecodable record: {}", e.getDescription().cStr())};
  }
}

const char* event_type_name(Event::Which which) {
  switch (which) {
    case Event::SERVER_STARTED:
      return "server-started";
    case Event::JOB_SUBMITTED:
      return "job-submitted";
    case Event::TASK_STARTED:
      return "task-started";
    case Event::TASK_FINISHED:
      return "task-finished";
    case Event::TASK_FAILED:
      return "task-failed";
    case Event::TASK_CANCELED:
      return "task-canceled";
    case Event::JOB_CANCELED:
      return "job-canceled";
    case Event::TASK_REQUEUED:
      return "task-requeued";
    case Event::JOB_FORGOTTEN:
      return "job-forgotten";
    case Event::WORKER_CONNECTED:
      return "worker-connected";
    case Event::WORKER_LOST:
      return "worker-lost";
    case Event::TASKS_STARTED:
      return "tasks-started";
    case Event::TASKS_FINISHED:
      return "tasks-finished";
    case Event::JOB_ABORTED:
      return "job-aborted";
    case Event::JOB_RESERVED:
      return "job-reserved";
    case Event::TASKS_CANCELED:
      return "tasks-canceled";
    case Event::JOB_OPENED:
      return "job-opened";
    case Event::JOB_CLOSED:
      return "job-closed";
    case Event::TASKS_SUBMITTED:
      return "tasks-submitted";
    case Event::WORKER_REATTACHED:
      return "worker-reattached";
    case Event::TASKS_REATTACHED:
      return "tasks-reattached";
    case Event::REATTACH_ENDED:
      return "reattach-ended";
    case Event::ALLOC_QUEUE_ADDED:
      return "alloc-queue-added";
    case Event::ALLOC_QUEUE_PAUSED:
      return "alloc-queue-paused";
    case Event::ALLOC_QUEUE_RESUMED:
      return "alloc-queue-resumed";
    case Event::ALLOC_QUEUE_REMOVED:
      return "alloc-queue-removed";
    case Event::ALLOCATION_SUBMITTED:
      return "allocation-submitted";
    case Event::ALLOCATION_ENDED:
      return "allocation-ended";
    case Event::TASK_TIMES:
      return "task-times";
  }
  return "unknown";
}

std::optional<JobId> event_job(Event::Reader event) {
  switch (event.which()) {
    case Event::JOB_SUBMITTED:
      return event.getJobSubmitted().getJob();
    case Event::TASK_STARTED:
      return event.getTaskStarted().getJob();
    case Event::TASK_FINISHED:
      return event.getTaskFinished().getJob();
    case Event::TASK_FAILED:
      return event.getTaskFailed().getJob();
    case Event::TASK_CANCELED:
      return event.getTaskCanceled().getJob();
    case Event::JOB_CANCELED:
      return event.getJobCanceled().getJob();
    case Event::TASK_REQUEUED:
      return event.getTaskRequeued().getJob();
    case Event::JOB_FORGOTTEN:
      return event.getJobForgotten().getJob();
    case Event::TASKS_STARTED:
      return event.getTasksStarted().getJob();
    case Event::TASKS_FINISHED:
      return event.getTasksFinished().getJob();
    case Event::TASK_TIMES:
      return event.getTaskTimes().getJob();
    case Event::JOB_ABORTED:
      return event.getJobAborted().getJob();
    case Event::JOB_RESERVED:
      return event.getJobReserved().getJob();
    case Event::TASKS_CANCELED:
      return event.getTasksCanceled().getJob();
    case Event::JOB_OPENED:
      return event.getJobOpened().getJob();
    case Event::JOB_CLOSED:
      return event.getJobClosed().getJob();
    case Event::TASKS_SUBMITTED:
      return event.getTasksSubmitted().getJob();
    case Event::TASKS_REATTACHED:
      return event.getTasksReattached().getJob();
    case Event::SERVER_STARTED:
    case Event::WORKER_CONNECTED:
    case Event::WORKER_LOST:
    case Event::WORKER_REATTACHED:
    case Event::REATTACH_ENDED:
    case Event::ALLOC_QUEUE_ADDED:
    case Event::ALLOC_QUEUE_PAUSED:
    case Event::ALLOC_QUEUE_RESUMED:
    case Event::ALLOC_QUEUE_REMOVED:
    case Event::ALLOCATION_SUBMITTED:
    case Event::ALLOCATION_ENDED:
      break;
  }
  return std::nullopt;
}

static void body_to_record(const TaskBodySpec& spec, schema::TaskBody::Builder body) {
  auto program = body.initProgram(spec.program.size());
  for (size_t i = 0; i < spec.program.size(); ++i) program.set(i, spec.program[i]);
  auto env = body.initEnv(spec.env.size());
  for (size_t i = 0; i < spec.env.size(); ++i) {
    env[i].setKey(spec.env[i].first);
    env[i].setValue(spec.env[i].second);
  }
  body.setCwd(spec.cwd);
  body.setStdout(spec.stdout_path);
  body.setStderr(spec.stderr_path);
  body.setSubmitDir(spec.submit_dir);
  body.setCpus(spec.cpus);
  body.setTimeLimitMs(spec.time_limit_ms);
  auto resources = body.initResources(spec.resources.entries.size());
  for (size_t i = 0; i < spec.resources.entries.size(); ++i) {
    const ResourceRequestEntry& e = spec.resources.entries[i];
    resources[i].setName(e.name);
    resources[i].setAmount(e.amount);
    resources[i].setPolicy(static_cast<uint8_t>(e.policy));
  }
  body.setPin(static_cast<uint8_t>(spec.pin));
  body.setTimeRequestMs(spec.time_request_ms);
  body.setStdin(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(spec.stdin_data.data()),
                                    spec.stdin_data.size()));
  body.setTaskDir(spec.task_dir);
  body.setStdoutRemoveIfFinished(spec.stdout_rm_if_finished);
  body.setStderrRemoveIfFinished(spec.stderr_rm_if_finished);
  auto variants = body.initVariants(static_cast<unsigned>(spec.variants.size()));
  for (size_t v = 0; v < spec.variants.size(); ++v) {
    const auto& list = spec.variants[v].entries;
    auto out = variants[v].initResources(static_cast<unsigned>(list.size()));
    for (size_t i = 0; i < list.size(); ++i) {
      out[i].setName(list[i].name);
      out[i].setAmount(list[i].amount);
      out[i].setPolicy(static_cast<uint8_t>(list[i].policy));
    }
  }
}

static void graph_to_record(const GraphColumns& columns, schema::GraphColumns::Builder out) {
  vector_to_list<uint32_t>(columns.ids, out.initIds(columns.ids.size()));
  auto bodies = out.initBodies(columns.bodies.size());
  for (size_t i = 0; i < columns.bodies.size(); ++i) body_to_record(columns.bodies[i], bodies[i]);
  vector_to_list<uint32_t>(columns.body_of, out.initBodyOf(columns.body_of.size()));
  out.setArgv(
      kj::arrayPtr(reinterpret_cast<const kj::byte*>(columns.argv.data()), columns.argv.size()));
  vector_to_list<uint32_t>(columns.argv_end, out.initArgvEnd(columns.argv_end.size()));
  vector_to_list<uint32_t>(columns.dep_end, out.initDepEnd(columns.dep_end.size()));
  vector_to_list<uint32_t>(columns.deps, out.initDeps(columns.deps.size()));
  auto params = out.initParams(columns.params.size());
  for (size_t i = 0; i < columns.params.size(); ++i) {
    params[i].setId(columns.params[i].id);
    params[i].setPriority(columns.params[i].priority);
    params[i].setCrashLimit(columns.params[i].crash_limit);
    params[i].setNodes(columns.params[i].nodes);
  }
}

void to_record(const JobDescriptionSpec& job, schema::JobDescription::Builder out) {
  out.setName(job.name);
  const auto& ranges = job.task_ids.ranges();
  auto ids = out.initTaskIds(ranges.size());
  for (size_t i = 0; i < ranges.size(); ++i) {
    ids[i].setStart(ranges[i].start);
    ids[i].setEnd(ranges[i].end);
    ids[i].setStep(ranges[i].step);
  }
  out.setPriority(job.priority);
  body_to_record(job.body, out.initBody());
  out.setStream(job.stream);
  out.setCrashLimit(job.crash_limit);
  out.setMaxFails(job.max_fails);
  out.setNodes(job.nodes);
  if (!job.tasks.empty()) graph_to_record(pack_graph(job.tasks), out.initGraph());
  auto entries = out.initEntries(job.entries.size());
  for (size_t i = 0; i < job.entries.size(); ++i) entries.set(i, job.entries[i]);
}

static Result<TaskBodySpec> body_from_record(schema::TaskBody::Reader body) {
  TaskBodySpec spec;
  for (auto arg : body.getProgram()) spec.program.push_back(text(arg));
  for (auto kv : body.getEnv()) spec.env.emplace_back(text(kv.getKey()), text(kv.getValue()));
  spec.cwd = text(body.getCwd());
  spec.stdout_path = text(body.getStdout());
  spec.stderr_path = text(body.getStderr());
  spec.submit_dir = text(body.getSubmitDir());
  spec.cpus = body.getCpus();
  spec.time_limit_ms = body.getTimeLimitMs();
  spec.time_request_ms = body.getTimeRequestMs();
  auto in = body.getStdin();
  spec.stdin_data.assign(reinterpret_cast<const char*>(in.begin()), in.size());
  spec.task_dir = body.getTaskDir();
  spec.stdout_rm_if_finished = body.getStdoutRemoveIfFinished();
  spec.stderr_rm_if_finished = body.getStderrRemoveIfFinished();
  std::vector<ResourceRequestEntry> entries;
  for (auto e : body.getResources()) {
    if (e.getPolicy() > static_cast<uint8_t>(AllocationPolicy::kAll)) {
      return Error{fmt::format("unknown allocation policy {} in a journaled job", e.getPolicy())};
    }
    entries.push_back(
        {text(e.getName()), e.getAmount(), static_cast<AllocationPolicy>(e.getPolicy())});
  }
  if (!entries.empty()) {
    auto request = make_request(std::move(entries));
    if (!request) return Error{"a journaled job's request: " + request.message()};
    spec.resources = std::move(*request);
  }
  for (auto v : body.getVariants()) {
    std::vector<ResourceRequestEntry> list;
    for (auto e : v.getResources()) {
      if (e.getPolicy() > static_cast<uint8_t>(AllocationPolicy::kAll)) {
        return Error{fmt::format("unknown allocation policy {} in a journaled job's variant",
                                 e.getPolicy())};
      }
      list.push_back(
          {text(e.getName()), e.getAmount(), static_cast<AllocationPolicy>(e.getPolicy())});
    }
    auto request = make_request(std::move(list));
    if (!request) return Error{"a journaled job's resource variant: " + request.message()};
    spec.variants.push_back(std::move(*request));
  }
  if (body.getPin() > static_cast<uint8_t>(PinMode::kOmp)) {
    return Error{fmt::format("unknown pin mode {} in a journaled job", body.getPin())};
  }
  spec.pin = static_cast<PinMode>(body.getPin());
  return spec;
}

Result<JobDescriptionSpec> from_record(schema::JobDescription::Reader job) {
  JobDescriptionSpec out;
  out.name = text(job.getName());
  std::vector<IdRange> ranges;
  ranges.reserve(job.getTaskIds().size());
  for (auto r : job.getTaskIds()) {
    if (r.getStep() == 0 || r.getEnd() < r.getStart()) {
      return Error{fmt::format("invalid task id range {}-{}:{} in a journaled job", r.getStart(),
                               r.getEnd(), r.getStep())};
    }
    IdRange range{r.getStart(), r.getEnd(), r.getStep()};
    range.end = range.last();
    ranges.push_back(range);
  }
  out.task_ids = IdSet(std::move(ranges));
  out.priority = job.getPriority();
  auto body = body_from_record(job.getBody());
  if (!body) return body.error();
  out.body = std::move(*body);
  out.stream = text(job.getStream());
  out.crash_limit = job.getCrashLimit();
  out.max_fails = job.getMaxFails();
  out.nodes = job.getNodes();
  out.tasks.reserve(job.getTasks().size());
  for (auto t : job.getTasks()) {
    auto task_body = body_from_record(t.getBody());
    if (!task_body) {
      return Error{fmt::format("task {} of a journaled job: {}", t.getId(), task_body.message())};
    }
    GraphTaskSpec& task = out.tasks.emplace_back();
    task.id = t.getId();
    task.body = std::move(*task_body);
    for (uint32_t d : t.getDeps()) task.deps.push_back(d);
  }
  if (job.hasGraph()) {
    if (!out.tasks.empty())
      return Error{"a journaled job has its tasks both as a list and columns"};
    auto graph = job.getGraph();
    GraphColumns columns;
    columns.ids = list_to_vector<uint32_t>(graph.getIds());
    for (auto b : graph.getBodies()) {
      auto body = body_from_record(b);
      if (!body) return Error{"a task body of a journaled job: " + body.message()};
      columns.bodies.push_back(std::move(*body));
    }
    columns.body_of = list_to_vector<uint32_t>(graph.getBodyOf());
    auto argv = graph.getArgv();
    columns.argv.assign(reinterpret_cast<const char*>(argv.begin()), argv.size());
    columns.argv_end = list_to_vector<uint32_t>(graph.getArgvEnd());
    columns.dep_end = list_to_vector<uint32_t>(graph.getDepEnd());
    columns.deps = list_to_vector<uint32_t>(graph.getDeps());
    for (auto p : graph.getParams()) {
      columns.params.push_back({p.getId(), p.getPriority(), p.getCrashLimit(), p.getNodes()});
    }
    auto tasks = unpack_graph(std::move(columns));
    if (!tasks) return Error{"a journaled job's tasks: " + tasks.message()};
    out.tasks = std::move(*tasks);
  }
  out.entries.reserve(job.getEntries().size());
  for (auto e : job.getEntries()) out.entries.push_back(text(e));
  return out;
}

bool needs_tasks_submitted(const JobDescriptionSpec& job) {
  if (job.job != 0 || !job.submit_deps.empty()) return true;
  return std::any_of(job.tasks.begin(), job.tasks.end(),
                     [](const GraphTaskSpec& t) { return t.own_params; });
}

void to_record(JobId job, const JobDescriptionSpec& description, bool new_job,
               schema::TasksSubmitted::Builder out) {
  out.setJob(job);
  out.setNewJob(new_job);
  to_record(description, out.initDescription());
  const auto& ranges = description.submit_deps.ranges();
  auto deps = out.initSubmitDeps(ranges.size());
  for (size_t i = 0; i < ranges.size(); ++i) {
    deps[i].setStart(ranges[i].start);
    deps[i].setEnd(ranges[i].end);
    deps[i].setStep(ranges[i].step);
  }
}

Result<JobDescriptionSpec> from_record(schema::TasksSubmitted::Reader submitted) {
  auto description = from_record(submitted.getDescription());
  if (!description) return description;
  std::vector<IdRange> ranges;
  for (auto r : submitted.getSubmitDeps()) {
    if (r.getStep() == 0 || r.getEnd() < r.getStart()) {
      return Error{fmt::format("invalid dependency range {}-{}:{} in a journaled submit",
                               r.getStart(), r.getEnd(), r.getStep())};
    }
    ranges.push_back({r.getStart(), r.getEnd(), r.getStep()});
  }
  description->submit_deps = IdSet(std::move(ranges));
  description->job = submitted.getNewJob() ? 0 : submitted.getJob();
  return description;
}

}  // namespace hq::journal
