// Writes a synthetic journal as a server would after running a large array job, for the restart
// benchmark of tools/bench-journal: one job of N tasks, then taskTimes records of B tasks each
// (the tasks of one worker message, started and finished between two commits), all synced in
// large groups.
//
//   journal-gen DIR TASKS [BATCH]

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "common/id_set.h"
#include "common/job_spec.h"
#include "journal/events.h"
#include "journal/journal.h"

using namespace hq;

namespace {

void die(const std::string& message) {
  std::fprintf(stderr, "journal-gen: %s\n", message.c_str());
  std::exit(1);
}

void check(const Status& st) {
  if (!st) die(st.message());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: journal-gen DIR TASKS [BATCH]\n");
    return 2;
  }
  const long tasks = std::atol(argv[2]);
  const long batch = argc > 3 ? std::atol(argv[3]) : 8;
  if (tasks <= 0 || batch <= 0) die("TASKS and BATCH must be positive");
  auto opened = journal::Journal::open(argv[1], {});
  if (!opened) die(opened.message());
  journal::Journal& j = **opened;
  const int64_t t0 = 1'700'000'000'000;

  {
    journal::EventMessage started(t0);
    auto e = started.event().initServerStarted();
    e.setServerUid("bench1");
    e.setVersion("gen");
    check(j.append(started.message()).status());
    journal::EventMessage connected(t0);
    auto w = connected.event().initWorkerConnected();
    w.setWorker(1);
    w.setHostname("gen");
    w.setCpus(64);
    check(j.append(connected.message()).status());
  }
  JobDescriptionSpec job;
  job.name = "gen";
  IdSetBuilder ids;
  ids.add_range(IdRange{0, static_cast<uint32_t>(tasks - 1), 1});
  job.task_ids = std::move(ids).build();
  job.body.program = {"/bin/true"};
  job.body.cpus = 1;
  journal::EventMessage submitted(t0);
  submitted.event().initJobSubmitted().setJob(1);
  journal::to_record(job, submitted.event().getJobSubmitted().initDescription());
  check(j.append(submitted.message()).status());

  // One taskTimes record per batch, as the server writes the tasks of one worker message that
  // it started and finished between two commits.
  auto write_batch = [&](long first, long count) {
    const int64_t base = t0 + first + count;
    std::vector<journal::TaskTimeEntry> ran;
    for (long i = 0; i < count; ++i) {
      const int64_t start = t0 + first + i;
      ran.push_back({static_cast<uint32_t>(first + i), 0, start, start + 1 + i % 4});
    }
    const std::string bytes = journal::pack_task_times(ran, journal::TaskTimesList::kRan, base);
    journal::EventMessage message(base);
    auto r = message.event().initTaskTimes();
    r.setJob(1);
    r.setWorker(1);
    r.setRan(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
    check(j.append(message.message()).status());
  };
  long since_commit = 0;
  for (long first = 0; first < tasks; first += batch) {
    const long count = std::min(batch, tasks - first);
    write_batch(first, count);
    if ((since_commit += count) >= 50'000) {
      j.commit({});
      since_commit = 0;
    }
  }
  Status result = Status::ok();
  j.commit([&](Status st) { result = st; });
  opened->reset();  // writes what was committed, runs the callbacks
  check(result);
  return 0;
}
