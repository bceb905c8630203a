// server::Restore, the one fold of journal events into the scheduler (server start and
// `hq journal report`).
#include "server/restore.h"

#include <gtest/gtest.h>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "journal/events.h"

namespace hq::server {
namespace {

using journal::schema::Event;

JobDescriptionSpec job_with(IdSet ids) {
  JobDescriptionSpec spec;
  spec.name = "j";
  spec.task_ids = std::move(ids);
  spec.body.program = {"true"};
  return spec;
}

class Fold {
 public:
  void submit(JobId id, const JobDescriptionSpec& job) {
    journal::EventMessage message(1000 + static_cast<int64_t>(seq_));
    auto s = message.event().initJobSubmitted();
    s.setJob(id);
    journal::to_record(job, s.initDescription());
    apply(message);
  }
  template <typename Fill>
  void event(Fill&& fill) {
    journal::EventMessage message(1000 + static_cast<int64_t>(seq_));
    fill(message.event());
    apply(message);
  }

  sched::Scheduler scheduler;
  std::map<JobId, JobRecord> jobs;
  Restore restore{scheduler, jobs};

 private:
  void apply(journal::EventMessage& message) { restore.apply(++seq_, message.event().asReader()); }
  journal::Seq seq_ = 0;
};

TEST(Restore, AJobThatFailsTodaysValidationRefusesTheStartNamingIt) {
  Fold f;
  f.submit(1, job_with(IdSet::range(1, 3)));
  f.submit(2, job_with(IdSet()));  // acknowledged by some hq, refused by this one
  f.submit(3, job_with(IdSet::single(1)));
  f.restore.finish();
  ASSERT_FALSE(f.restore.status());
  const std::string error = f.restore.status().message();
  EXPECT_NE(error.find("job 2 was acknowledged but cannot be restored"), std::string::npos)
      << error;
  EXPECT_NE(error.find("seq 2"), std::string::npos) << error;
  EXPECT_EQ(f.restore.max_job_id(), 3u);
  EXPECT_TRUE(f.scheduler.has_job(1));
  EXPECT_TRUE(f.scheduler.has_job(3));
}

// A job with per-task bodies and dependencies, journaled once with its submit: the replay
// rebuilds the graph and each body, keeps finished tasks finished, and derives the aborts of a
// failed task's dependants (they have no records of their own).
TEST(Restore, AGraphJobComesBackWithItsBodiesAndDependencies) {
  JobDescriptionSpec job;
  job.name = "pipeline";
  for (uint32_t id : {3u, 1u, 2u, 4u}) {  // any order: the server sorts them
    GraphTaskSpec t;
    t.id = id;
    t.body.program = {"echo", std::to_string(id)};
    t.body.env = {{"STEP", std::to_string(id)}};
    t.body.stdout_path = "out." + std::to_string(id);
    if (id == 2 || id == 3) t.deps = {1};
    if (id == 4) t.deps = {2, 3};
    job.tasks.push_back(std::move(t));
  }
  Fold f;
  f.submit(1, job);
  auto end = [&f](uint32_t task, bool ok) {
    f.event([task](Event::Builder e) {
      auto t = e.initTaskStarted();
      t.setJob(1);
      t.setTask(task);
      t.setWorker(1);
    });
    f.event([task, ok](Event::Builder e) {
      if (ok) {
        auto t = e.initTaskFinished();
        t.setJob(1);
        t.setTask(task);
      } else {
        auto t = e.initTaskFailed();
        t.setJob(1);
        t.setTask(task);
        t.setError("exit code 1");
      }
    });
  };
  end(1, true);
  end(2, false);
  f.restore.finish();
  ASSERT_TRUE(f.restore.status()) << f.restore.status().message();
  f.scheduler.check_invariants();
  EXPECT_EQ(f.scheduler.dependency_count(1), 4u);
  EXPECT_EQ(f.scheduler.dependencies(1, 4), (std::vector<TaskId>{2, 3}));
  EXPECT_EQ(f.scheduler.task(1, 1)->state, sched::TaskState::kFinished);
  EXPECT_EQ(f.scheduler.task(1, 3)->state, sched::TaskState::kWaiting);
  EXPECT_EQ(f.scheduler.task(1, 4)->state, sched::TaskState::kAborted);
  EXPECT_EQ(*f.scheduler.task(1, 4)->aborted_by, (TaskRef{1, 2}));
  EXPECT_EQ(f.scheduler.waiting_tasks(), 1u);  // only 3
  const JobDescriptionSpec& back = f.jobs.at(1).description;
  ASSERT_EQ(back.tasks.size(), 4u);
  EXPECT_EQ(back.tasks[0].id, 1u);
  EXPECT_EQ(task_body(back, 3).program, (std::vector<std::string>{"echo", "3"}));
  EXPECT_EQ(task_body(back, 3).stdout_path, "out.3");
  EXPECT_EQ(task_body(back, 3).env.at(0).second, "3");
  EXPECT_EQ(back.tasks[3].deps, (std::vector<uint32_t>{2, 3}));
  EXPECT_EQ(back.task_ids.size(), 4u);
}

TEST(Restore, AGraphJobWithACycleIsRefusedNamingIt) {
  JobDescriptionSpec job;
  for (uint32_t id : {1u, 2u}) {
    GraphTaskSpec t;
    t.id = id;
    t.body.program = {"true"};
    t.deps = {id == 1 ? 2u : 1u};
    job.tasks.push_back(std::move(t));
  }
  Fold f;
  f.submit(1, job);
  f.restore.finish();
  ASSERT_FALSE(f.restore.status());
  EXPECT_NE(f.restore.status().message().find("cycle"), std::string::npos)
      << f.restore.status().message();
}

TEST(Restore, FoldsAsAServerRestarts) {
  Fold f;
  f.submit(1, job_with(IdSet::range(1, 4)));
  f.event([](Event::Builder e) {
    auto t = e.initTaskStarted();
    t.setJob(1);
    t.setTask(1);
    t.setWorker(1);
  });
  f.event([](Event::Builder e) {
    auto t = e.initTaskFinished();
    t.setJob(1);
    t.setTask(1);
  });
  f.event([](Event::Builder e) {
    auto t = e.initTaskStarted();
    t.setJob(1);
    t.setTask(2);
    t.setWorker(1);
  });
  f.submit(2, job_with(IdSet::range(1, 2)));
  f.event([](Event::Builder e) { e.initJobAborted().setJob(2); });
  f.restore.finish();
  ASSERT_TRUE(f.restore.status()) << f.restore.status().message();
  // The running task waits again as a new instance; an aborted job stays aborted.
  auto counts = f.scheduler.counts(1);
  EXPECT_EQ(counts[sched::TaskState::kFinished], 1u);
  EXPECT_EQ(counts[sched::TaskState::kWaiting], 3u);
  EXPECT_EQ(f.scheduler.task(1, 2)->instance, 1u);
  EXPECT_EQ(f.scheduler.counts(2)[sched::TaskState::kAborted], 2u);
  EXPECT_EQ(f.jobs.at(2).end_time, 1000 + 5);
  EXPECT_EQ(f.jobs.at(1).end_time, 0);
  f.scheduler.check_invariants();
}

// Task starts and ends as the server writes them (taskTimes, packed) and as earlier servers did
// (tasksStarted and tasksFinished batches): both fold into the same states, workers and times.
TEST(Restore, PackedAndBatchedTaskTimesFoldAlike) {
  Fold f;
  f.submit(1, job_with(IdSet::range(1, 6)));
  f.event([](Event::Builder e) {
    e.setTime(5000);
    auto r = e.initTaskTimes();
    r.setJob(1);
    r.setWorker(4);
    auto set = [](std::vector<journal::TaskTimeEntry> list, journal::TaskTimesList which,
                  auto setter) {
      const std::string bytes = journal::pack_task_times(list, which, 5000);
      setter(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
    };
    set({{3, 0, 4990, 0}}, journal::TaskTimesList::kStarted,
        [&](capnp::Data::Reader d) { r.setStarted(d); });
    set({{1, 0, 4000, 4500}, {2, 0, 4100, 4999}}, journal::TaskTimesList::kRan,
        [&](capnp::Data::Reader d) { r.setRan(d); });
  });
  f.event([](Event::Builder e) {
    e.setTime(6000);
    auto r = e.initTaskTimes();
    r.setJob(1);
    r.setWorker(4);
    const std::string bytes =
        journal::pack_task_times({{3, 0, 0, 5900}}, journal::TaskTimesList::kFinished, 6000);
    r.setFinished(
        capnp::Data::Reader(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
  });
  // The batched forms of an older journal: task 4 started and finished, task 5 started.
  auto batch = [](journal::schema::TaskBatch::Builder b,
                  std::vector<std::pair<TaskId, int64_t>> tasks) {
    b.setJob(1);
    b.setWorker(2);
    auto list = b.initTasks(static_cast<unsigned>(tasks.size()));
    for (size_t i = 0; i < tasks.size(); ++i) {
      list[i].setTask(tasks[i].first);
      list[i].setTime(tasks[i].second);
    }
  };
  f.event([&](Event::Builder e) { batch(e.initTasksStarted(), {{4, 7000}, {5, 7001}}); });
  f.event([&](Event::Builder e) { batch(e.initTasksFinished(), {{4, 7100}}); });
  f.restore.finish();
  ASSERT_TRUE(f.restore.status()) << f.restore.status().message();
  struct Want {
    TaskId task;
    int64_t start, end;
    WorkerId worker;
  };
  for (const Want& w : {Want{1, 4000, 4500, 4}, Want{2, 4100, 4999, 4}, Want{3, 4990, 5900, 4},
                        Want{4, 7000, 7100, 2}}) {
    auto v = f.scheduler.task(1, w.task);
    ASSERT_TRUE(v);
    EXPECT_EQ(v->state, sched::TaskState::kFinished) << w.task;
    EXPECT_EQ(v->start_time, w.start) << w.task;
    EXPECT_EQ(v->end_time, w.end) << w.task;
    EXPECT_EQ(v->worker, w.worker) << w.task;
  }
  // Task 5 was running at the stop: it waits again as a new instance; task 6 never ran.
  EXPECT_EQ(f.scheduler.task(1, 5)->state, sched::TaskState::kWaiting);
  EXPECT_EQ(f.scheduler.task(1, 5)->instance, 1u);
  EXPECT_EQ(f.scheduler.task(1, 6)->instance, 0u);
  EXPECT_EQ(f.jobs.at(1).end_time, 0);  // not complete
  f.scheduler.check_invariants();
}

// The bytes an allocQueueAdded record carries for a queue named `name`.
std::string queue_params(const std::string& name) {
  capnp::MallocMessageBuilder message;
  auto p = message.initRoot<wire::AllocQueueParams>();
  p.setManager("slurm");
  p.setName(name);
  p.setTimeLimitMs(3'600'000);
  kj::Array<capnp::word> words = capnp::messageToFlatArray(message);
  auto bytes = words.asBytes();
  return std::string(reinterpret_cast<const char*>(bytes.begin()), bytes.size());
}

TEST(Restore, AllocationQueuesComeBackWithTheirAllocationsAndPauseState) {
  Fold f;
  auto add = [&f](uint32_t queue, const std::string& name) {
    const std::string bytes = queue_params(name);
    f.event([&](Event::Builder e) {
      auto a = e.initAllocQueueAdded();
      a.setQueue(queue);
      a.setParams(
          capnp::Data::Reader(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
    });
  };
  auto submitted = [&f](uint32_t queue, const std::string& id) {
    f.event([&](Event::Builder e) {
      auto a = e.initAllocationSubmitted();
      a.setQueue(queue);
      a.setAllocation(id);
      a.setWorkers(2);
      a.setLogDir("/dir/" + id);
    });
  };
  add(1, "kept");
  add(2, "gone");
  add(3, "paused");
  submitted(1, "100");
  submitted(1, "101");
  submitted(2, "200");
  f.event([](Event::Builder e) {
    auto a = e.initAllocationEnded();
    a.setQueue(1);
    a.setAllocation("100");
    a.setFailed(true);
    a.setDetail("FAILED");
  });
  f.event([](Event::Builder e) { e.initAllocQueueRemoved().setQueue(2); });
  f.event([](Event::Builder e) {
    auto p = e.initAllocQueuePaused();
    p.setQueue(3);
    p.setReason("paused by `hq alloc pause`");
  });
  f.event([](Event::Builder e) {
    auto p = e.initAllocQueuePaused();
    p.setQueue(1);
    p.setReason("3 allocations in a row failed");
  });
  f.event([](Event::Builder e) { e.initAllocQueueResumed().setQueue(1); });
  f.restore.finish();
  ASSERT_TRUE(f.restore.status()) << f.restore.status().message();

  const auto& queues = f.restore.alloc_queues();
  ASSERT_EQ(queues.size(), 2u);
  EXPECT_EQ(f.restore.max_queue_id(), 3u);  // a removed queue's id is not given again
  const RestoredQueue& kept = queues.at(1);
  EXPECT_FALSE(kept.pause_reason);
  ASSERT_EQ(kept.allocations.size(), 2u);
  EXPECT_EQ(kept.allocations[0].id, "100");
  ASSERT_TRUE(kept.allocations[0].end_time);
  EXPECT_TRUE(kept.allocations[0].failed);
  EXPECT_EQ(kept.allocations[0].detail, "FAILED");
  EXPECT_EQ(kept.allocations[1].id, "101");
  EXPECT_FALSE(kept.allocations[1].end_time);
  EXPECT_EQ(kept.allocations[1].workers, 2u);
  EXPECT_EQ(kept.allocations[1].log_dir, "/dir/101");
  std::string name;
  ASSERT_TRUE(with_queue_params(
      kept.params, [&name](wire::AllocQueueParams::Reader p) { name = p.getName().cStr(); }));
  EXPECT_EQ(name, "kept");
  EXPECT_EQ(queues.at(3).pause_reason.value_or(""), "paused by `hq alloc pause`");
}

TEST(Restore, DamagedQueueParametersAreAnErrorNotACrash) {
  EXPECT_FALSE(with_queue_params("", [](wire::AllocQueueParams::Reader) {}));
  EXPECT_FALSE(with_queue_params("1234567", [](wire::AllocQueueParams::Reader) {}));
  // Eight bytes of a segment table that promises more than there is.
  const std::string torn("\0\0\0\0\xff\0\0\0", 8);
  Status st = with_queue_params(torn, [](wire::AllocQueueParams::Reader) {});
  EXPECT_FALSE(st);
  EXPECT_NE(st.message().find("queue parameters"), std::string::npos) << st.message();
}

}  // namespace
}  // namespace hq::server
