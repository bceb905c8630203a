#include "net/convert.h"

#include <fmt/format.h>

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
}

TaskBodySpec from_wire(wire::TaskBody::Reader body) {
  TaskBodySpec out;
  for (auto arg : body.getProgram()) out.program.emplace_back(arg.cStr(), arg.size());
  for (auto kv : body.getEnv()) out.env.emplace_back(kv.getKey().cStr(), kv.getValue().cStr());
  out.cwd = body.getCwd().cStr();
  out.stdout_path = body.getStdout().cStr();
  out.stderr_path = body.getStderr().cStr();
  out.submit_dir = body.getSubmitDir().cStr();
  out.cpus = body.getCpus();
  out.time_limit_ms = body.getTimeLimitMs();
  return out;
}

void to_wire(const JobDescriptionSpec& job, wire::JobDescription::Builder out) {
  out.setName(job.name);
  to_wire(job.task_ids, out);
  out.setPriority(job.priority);
  to_wire(job.body, out.initBody());
  out.setStream(job.stream);
  out.setCrashLimit(job.crash_limit);
  out.setMaxFails(job.max_fails);
}

Result<JobDescriptionSpec> from_wire(wire::JobDescription::Reader job) {
  JobDescriptionSpec out;
  out.name = job.getName().cStr();
  auto ids = from_wire(job.getTaskIds());
  if (!ids) return ids.error();
  out.task_ids = std::move(*ids);
  out.priority = job.getPriority();
  out.body = from_wire(job.getBody());
  out.stream = job.getStream().cStr();
  out.crash_limit = job.getCrashLimit();
  out.max_fails = job.getMaxFails();
  return out;
}

}  // namespace hq::net
