#include "net/convert.h"

#include <set>

#include <fmt/format.h>

#include "common/capnp_lists.h"

namespace hq::net {

void to_wire(const IdSet& set, capnp::List<wire::IdRange>::Builder out) {
  const auto& ranges = set.ranges();
  for (size_t i = 0; i < ranges.size(); ++i) {
    out[i].setStart(ranges[i].start);
    out[i].setEnd(ranges[i].end);
    out[i].setStep(ranges[i].step);
  }
}

capnp::List<wire::IdRange>::Builder to_wire(const IdSet& set,
                                            wire::JobDescription::Builder parent) {
  auto out = parent.initTaskIds(set.ranges().size());
  to_wire(set, out);
  return out;
}

Result<IdSet> from_wire(capnp::List<wire::IdRange>::Reader ranges) {
  std::vector<IdRange> out;
  out.reserve(ranges.size());
  for (auto r : ranges) {
    if (r.getStep() == 0 || r.getEnd() < r.getStart()) {
      return Error{fmt::format("invalid id range {}-{}:{}", r.getStart(), r.getEnd(), r.getStep())};
    }
    IdRange range{r.getStart(), r.getEnd(), r.getStep()};
    range.end = range.last();
    out.push_back(range);
  }
  return IdSet(std::move(out));
}

void to_wire(const TaskKey& key, wire::TaskKey::Builder out) {
  out.setJob(key.job);
  out.setTask(key.task);
  out.setInstance(key.instance);
}

TaskKey from_wire(wire::TaskKey::Reader key) {
  return TaskKey{key.getJob(), key.getTask(), key.getInstance()};
}

void to_wire(const std::vector<TaskKey>& keys, capnp::List<wire::TaskKey>::Builder out) {
  for (size_t i = 0; i < keys.size(); ++i) to_wire(keys[i], out[i]);
}

void to_wire(const TaskBodySpec& body, wire::TaskBody::Builder out) {
  auto program = out.initProgram(body.program.size());
  for (size_t i = 0; i < body.program.size(); ++i) program.set(i, body.program[i]);
  auto env = out.initEnv(body.env.size());
  for (size_t i = 0; i < body.env.size(); ++i) {
    env[i].setKey(body.env[i].first);
    env[i].setValue(body.env[i].second);
  }
  out.setCwd(body.cwd);
  out.setStdout(body.stdout_path);
  out.setStderr(body.stderr_path);
  out.setSubmitDir(body.submit_dir);
  out.setCpus(body.cpus);
  out.setTimeLimitMs(body.time_limit_ms);
  to_wire(body.resources, out.initResources(body.resources.entries.size()));
  out.setPin(static_cast<wire::PinMode>(body.pin));
  out.setTimeRequestMs(body.time_request_ms);
  out.setStdin(capnp::Data::Reader(reinterpret_cast<const capnp::byte*>(body.stdin_data.data()),
                                   body.stdin_data.size()));
  out.setTaskDir(body.task_dir);
  out.setStdoutRemoveIfFinished(body.stdout_rm_if_finished);
  auto variants = out.initVariants(static_cast<unsigned>(body.variants.size()));
  for (size_t i = 0; i < body.variants.size(); ++i) {
    to_wire(body.variants[i], variants[i].initResources(body.variants[i].entries.size()));
  }
  out.setStderrRemoveIfFinished(body.stderr_rm_if_finished);
}

void to_wire(const ResourceRequest& request, capnp::List<wire::ResourceEntry>::Builder out) {
  for (size_t i = 0; i < request.entries.size(); ++i) {
    const ResourceRequestEntry& e = request.entries[i];
    out[i].setName(e.name);
    out[i].setAmount(e.amount);
    out[i].setPolicy(static_cast<wire::AllocationPolicy>(e.policy));
  }
}

Result<ResourceRequest> from_wire(capnp::List<wire::ResourceEntry>::Reader entries) {
  std::vector<ResourceRequestEntry> list;
  if (entries.size() > kMaxRequestEntries) {
    return Error{fmt::format("a task requests {} resources; at most {}", entries.size(),
                             kMaxRequestEntries)};
  }
  for (auto e : entries) {
    ResourceRequestEntry entry;
    entry.name = std::string(e.getName().cStr(), e.getName().size());
    if (auto st = check_resource_name(entry.name); !st) return Error{st.message()};
    auto policy = static_cast<uint16_t>(e.getPolicy());
    if (policy > static_cast<uint16_t>(AllocationPolicy::kAll)) {
      return Error{
          fmt::format("unknown allocation policy {} for resource '{}'", policy, entry.name)};
    }
    entry.policy = static_cast<AllocationPolicy>(policy);
    entry.amount = e.getAmount();
    if (entry.policy != AllocationPolicy::kAll && entry.amount == 0) {
      return Error{fmt::format("resource '{}' is requested with a zero amount", entry.name)};
    }
    list.push_back(std::move(entry));
  }
  if (list.empty()) return ResourceRequest{};
  return make_request(std::move(list));
}

void to_wire(const ResourceDescriptor& descriptor,
             capnp::List<wire::ResourceDefinition>::Builder out) {
  for (size_t i = 0; i < descriptor.resources.size(); ++i) {
    const ResourceDefinition& def = descriptor.resources[i];
    out[i].setName(def.name);
    if (def.kind == ResourceKind::kSum) {
      out[i].setSum(def.sum);
      continue;
    }
    auto groups = out[i].initGroups(def.groups.size());
    for (size_t g = 0; g < def.groups.size(); ++g) {
      auto units = groups.init(g, def.groups[g].size());
      for (size_t u = 0; u < def.groups[g].size(); ++u) units.set(u, def.groups[g][u]);
    }
  }
}

Result<ResourceDescriptor> from_wire(capnp::List<wire::ResourceDefinition>::Reader defs) {
  ResourceDescriptor out;
  if (defs.size() > kMaxWorkerResources) {
    return Error{fmt::format("a worker declares {} resources; at most {}", defs.size(),
                             kMaxWorkerResources)};
  }
  std::vector<std::string> defined;
  for (auto d : defs) {
    ResourceDefinition def;
    def.name = std::string(d.getName().cStr(), d.getName().size());
    if (auto st = check_resource_name(def.name); !st) return Error{st.message()};
    if (d.isSum()) {
      def.kind = ResourceKind::kSum;
      def.sum = d.getSum();
      if (def.sum == 0 || def.sum > kMaxSumUnits) {
        return Error{fmt::format("resource '{}' has a bad amount", def.name)};
      }
    } else {
      def.kind = ResourceKind::kIndexed;
      std::set<std::string> seen;
      uint64_t units = 0;
      for (auto g : d.getGroups()) {
        if (g.size() == 0) return Error{fmt::format("resource '{}' has an empty group", def.name)};
        units += g.size();
        if (units > kMaxResourceUnits) {
          return Error{fmt::format("resource '{}' has too many units", def.name)};
        }
        auto& group = def.groups.emplace_back();
        for (auto u : g) {
          group.emplace_back(u.cStr(), u.size());
          if (!seen.insert(group.back()).second) {
            return Error{
                fmt::format("resource '{}' lists unit '{}' twice", def.name, group.back())};
          }
        }
      }
      if (def.groups.empty()) return Error{fmt::format("resource '{}' has no units", def.name)};
    }
    if (auto st = add_definition(out, std::move(def), defined); !st) return Error{st.message()};
  }
  return out;
}

Result<TaskBodySpec> from_wire(wire::TaskBody::Reader body) {
  TaskBodySpec out;
  for (auto arg : body.getProgram()) out.program.emplace_back(arg.cStr(), arg.size());
  for (auto kv : body.getEnv()) out.env.emplace_back(kv.getKey().cStr(), kv.getValue().cStr());
  out.cwd = body.getCwd().cStr();
  out.stdout_path = body.getStdout().cStr();
  out.stderr_path = body.getStderr().cStr();
  out.submit_dir = body.getSubmitDir().cStr();
  out.cpus = body.getCpus();
  out.time_limit_ms = body.getTimeLimitMs();
  out.time_request_ms = body.getTimeRequestMs();
  auto in = body.getStdin();
  out.stdin_data.assign(reinterpret_cast<const char*>(in.begin()), in.size());
  out.task_dir = body.getTaskDir();
  out.stdout_rm_if_finished = body.getStdoutRemoveIfFinished();
  out.stderr_rm_if_finished = body.getStderrRemoveIfFinished();
  auto pin = static_cast<uint16_t>(body.getPin());
  if (pin > static_cast<uint16_t>(PinMode::kOmp))
    return Error{fmt::format("unknown pin mode {}", pin)};
  out.pin = static_cast<PinMode>(pin);
  auto resources = from_wire(body.getResources());
  if (!resources) return resources.error();
  out.resources = std::move(*resources);
  for (auto v : body.getVariants()) {
    auto variant = from_wire(v.getResources());
    if (!variant) return Error{"a resource variant: " + variant.message()};
    out.variants.push_back(std::move(*variant));
  }
  if (out.variants.size() == 1 || out.variants.size() > 255) {
    return Error{
        fmt::format("{} resource variants: a task has none or 2 to 255", out.variants.size())};
  }
  return out;
}

void to_wire(const GraphColumns& columns, wire::GraphColumns::Builder out) {
  vector_to_list<uint32_t>(columns.ids, out.initIds(columns.ids.size()));
  auto bodies = out.initBodies(columns.bodies.size());
  for (size_t i = 0; i < columns.bodies.size(); ++i) to_wire(columns.bodies[i], bodies[i]);
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

Result<std::vector<GraphTaskSpec>> from_wire(wire::GraphColumns::Reader graph) {
  GraphColumns columns;
  columns.ids = list_to_vector<uint32_t>(graph.getIds());
  for (auto b : graph.getBodies()) {
    auto body = from_wire(b);
    if (!body) return Error{"a task body: " + body.message()};
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
  return unpack_graph(std::move(columns));
}

void to_wire(const JobDescriptionSpec& job, wire::JobDescription::Builder out,
             size_t max_per_task) {
  out.setName(job.name);
  to_wire(job.task_ids, out);
  out.setPriority(job.priority);
  to_wire(job.body, out.initBody());
  out.setStream(job.stream);
  out.setCrashLimit(job.crash_limit);
  out.setMaxFails(job.max_fails);
  out.setNodes(job.nodes);
  if (!job.tasks.empty() && job.tasks.size() <= max_per_task) {
    to_wire(pack_graph(job.tasks), out.initGraph());
  }
  const size_t entry_count = job.entries.size() <= max_per_task ? job.entries.size() : 0;
  auto entries = out.initEntries(entry_count);
  for (size_t i = 0; i < entry_count; ++i) entries.set(i, job.entries[i]);
  out.setJob(job.job);
  out.setAutoIds(job.auto_ids);
  auto deps = out.initSubmitDeps(job.submit_deps.ranges().size());
  for (size_t i = 0; i < job.submit_deps.ranges().size(); ++i) {
    const IdRange& r = job.submit_deps.ranges()[i];
    deps[i].setStart(r.start);
    deps[i].setEnd(r.end);
    deps[i].setStep(r.step);
  }
}

Result<JobDescriptionSpec> from_wire(wire::JobDescription::Reader job) {
  JobDescriptionSpec out;
  out.name = job.getName().cStr();
  auto ids = from_wire(job.getTaskIds());
  if (!ids) return ids.error();
  out.task_ids = std::move(*ids);
  out.priority = job.getPriority();
  auto body = from_wire(job.getBody());
  if (!body) return body.error();
  out.body = std::move(*body);
  out.stream = job.getStream().cStr();
  out.crash_limit = job.getCrashLimit();
  out.max_fails = job.getMaxFails();
  out.nodes = job.getNodes();
  out.tasks.reserve(job.getTasks().size());
  for (auto t : job.getTasks()) {
    auto task_body = from_wire(t.getBody());
    if (!task_body) return Error{fmt::format("task {}: {}", t.getId(), task_body.message())};
    GraphTaskSpec& task = out.tasks.emplace_back();
    task.id = t.getId();
    task.body = std::move(*task_body);
    for (uint32_t d : t.getDeps()) task.deps.push_back(d);
  }
  if (job.hasGraph()) {
    if (!out.tasks.empty()) return Error{"a job gives its tasks both as a list and as columns"};
    auto tasks = from_wire(job.getGraph());
    if (!tasks) return tasks.error();
    out.tasks = std::move(*tasks);
  }
  out.entries.reserve(job.getEntries().size());
  for (auto e : job.getEntries()) out.entries.emplace_back(e.cStr(), e.size());
  out.job = job.getJob();
  out.auto_ids = job.getAutoIds();
  auto deps = from_wire(job.getSubmitDeps());
  if (!deps) return deps.error();
  out.submit_deps = std::move(*deps);
  return out;
}

const char* worker_state_name(wire::WorkerState state) {
  switch (state) {
    case wire::WorkerState::RUNNING:
      return "running";
    case wire::WorkerState::CONNECTION_LOST:
      return "connection_lost";
    case wire::WorkerState::HEARTBEAT_LOST:
      return "heartbeat_lost";
    case wire::WorkerState::STOPPED:
      return "stopped";
    case wire::WorkerState::IDLE_TIMEOUT:
      return "idle_timeout";
    case wire::WorkerState::TIME_LIMIT_REACHED:
      return "time_limit_reached";
  }
  return "unknown";
}

}  // namespace hq::net
