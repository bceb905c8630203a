// The columns a job file's tasks travel and are journaled in: round trips through the wire and
// the journal, bodies stored once, and damaged columns refused with the column named.

#include <capnp/message.h>
#include <gtest/gtest.h>

#include "common/graph_columns.h"
#include "journal/events.h"
#include "net/convert.h"

namespace hq {
namespace {

GraphTaskSpec task(uint32_t id, std::vector<std::string> program, std::vector<uint32_t> deps,
                   std::string cwd = "/tmp") {
  GraphTaskSpec t;
  t.id = id;
  t.body.program = std::move(program);
  t.body.cwd = std::move(cwd);
  t.deps = std::move(deps);
  return t;
}

std::vector<GraphTaskSpec> sample() {
  return {task(1, {"prepare"}, {}), task(2, {"sim", "a b", ""}, {1}), task(3, {"sim", "2"}, {1}),
          task(7, {"reduce"}, {2, 3}, "/elsewhere"), task(8, {}, {7})};
}

void expect_same(const std::vector<GraphTaskSpec>& a, const std::vector<GraphTaskSpec>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].id, b[i].id);
    EXPECT_EQ(a[i].body, b[i].body) << "task " << a[i].id;
    EXPECT_EQ(a[i].deps, b[i].deps) << "task " << a[i].id;
    EXPECT_EQ(a[i].own_params, b[i].own_params) << "task " << a[i].id;
    EXPECT_EQ(a[i].priority, b[i].priority) << "task " << a[i].id;
    EXPECT_EQ(a[i].crash_limit, b[i].crash_limit) << "task " << a[i].id;
    EXPECT_EQ(a[i].nodes, b[i].nodes) << "task " << a[i].id;
  }
}

// Tasks 2 and 7 with their own priority, crash limit and nodes.
std::vector<GraphTaskSpec> with_params() {
  std::vector<GraphTaskSpec> tasks = sample();
  for (GraphTaskSpec& t : tasks) {
    if (t.id != 2 && t.id != 7) continue;
    t.own_params = true;
    t.priority = -static_cast<int32_t>(t.id);
    t.crash_limit = t.id + 10;
    t.nodes = t.id == 7 ? 2 : 0;
  }
  return tasks;
}

TEST(GraphColumnsTest, BodiesEqualButForTheirProgramsAreStoredOnce) {
  GraphColumns c = pack_graph(sample());
  ASSERT_EQ(c.bodies.size(), 2u);
  EXPECT_TRUE(c.bodies[0].program.empty());
  EXPECT_EQ(c.body_of, (std::vector<uint32_t>{0, 0, 0, 1, 0}));
  EXPECT_EQ(c.deps, (std::vector<uint32_t>{1, 1, 2, 3, 7}));
  auto back = unpack_graph(c);
  ASSERT_TRUE(back) << back.message();
  expect_same(*back, sample());
}

TEST(GraphColumnsTest, OneBodyNeedsNoBodyColumn) {
  std::vector<GraphTaskSpec> tasks;
  for (uint32_t i = 0; i < 1000; ++i)
    tasks.push_back(task(i, {"/bin/true", std::to_string(i)}, {}));
  GraphColumns c = pack_graph(tasks);
  EXPECT_EQ(c.bodies.size(), 1u);
  EXPECT_TRUE(c.body_of.empty());
  auto back = unpack_graph(c);
  ASSERT_TRUE(back) << back.message();
  expect_same(*back, tasks);
}

TEST(GraphColumnsTest, RoundTripsThroughTheWireAndTheJournal) {
  JobDescriptionSpec job;
  job.name = "graph";
  job.task_ids = IdSet::parse("1-3,7-8").value();
  job.tasks = sample();
  job.body = job.tasks.front().body;

  capnp::MallocMessageBuilder wire_message;
  auto wire = wire_message.initRoot<wire::JobDescription>();
  net::to_wire(job, wire);
  EXPECT_EQ(wire.getTasks().size(), 0u) << "columns replace the task list";
  auto from_wire = net::from_wire(wire.asReader());
  ASSERT_TRUE(from_wire) << from_wire.message();
  expect_same(from_wire->tasks, job.tasks);

  capnp::MallocMessageBuilder record_message;
  auto record = record_message.initRoot<journal::schema::JobDescription>();
  journal::to_record(job, record);
  auto from_record = journal::from_record(record.asReader());
  ASSERT_TRUE(from_record) << from_record.message();
  expect_same(from_record->tasks, job.tasks);
}

TEST(GraphColumnsTest, OwnParametersTravelForTheTasksThatHaveThem) {
  JobDescriptionSpec job;
  job.name = "mixed";
  job.task_ids = IdSet::parse("1-3,7-8").value();
  job.tasks = with_params();
  job.body = job.tasks.front().body;
  GraphColumns c = pack_graph(job.tasks);
  ASSERT_EQ(c.params.size(), 2u);
  EXPECT_EQ(c.params[1].id, 7u);
  EXPECT_EQ(c.params[1].nodes, 2u);

  capnp::MallocMessageBuilder wire_message;
  auto wire = wire_message.initRoot<wire::JobDescription>();
  net::to_wire(job, wire);
  auto from_wire = net::from_wire(wire.asReader());
  ASSERT_TRUE(from_wire) << from_wire.message();
  expect_same(from_wire->tasks, job.tasks);

  capnp::MallocMessageBuilder record_message;
  auto record = record_message.initRoot<journal::schema::JobDescription>();
  journal::to_record(job, record);
  auto from_record = journal::from_record(record.asReader());
  ASSERT_TRUE(from_record) << from_record.message();
  expect_same(from_record->tasks, job.tasks);
}

TEST(GraphColumnsTest, ResourceVariantsTravelWithTheirBody) {
  JobDescriptionSpec job;
  job.name = "variants";
  job.task_ids = IdSet::parse("1-3,7-8").value();
  job.tasks = sample();
  ResourceRequest four{{{"cpus", 4 * kAmountUnit, AllocationPolicy::kCompact}}};
  ResourceRequest one_gpu{{{"cpus", kAmountUnit, AllocationPolicy::kCompact},
                           {"gpus", kAmountUnit, AllocationPolicy::kTight}}};
  job.tasks[1].body.resources = four;
  job.tasks[1].body.variants = {four, one_gpu};
  job.body = job.tasks.front().body;
  // A body with variants differs from one without.
  GraphColumns c = pack_graph(job.tasks);
  EXPECT_EQ(c.bodies.size(), 3u);

  capnp::MallocMessageBuilder wire_message;
  auto wire = wire_message.initRoot<wire::JobDescription>();
  net::to_wire(job, wire);
  auto from_wire = net::from_wire(wire.asReader());
  ASSERT_TRUE(from_wire) << from_wire.message();
  expect_same(from_wire->tasks, job.tasks);
  EXPECT_EQ(from_wire->tasks[1].body.variants.size(), 2u);

  capnp::MallocMessageBuilder record_message;
  auto record = record_message.initRoot<journal::schema::JobDescription>();
  journal::to_record(job, record);
  auto from_record = journal::from_record(record.asReader());
  ASSERT_TRUE(from_record) << from_record.message();
  expect_same(from_record->tasks, job.tasks);
  EXPECT_EQ(from_record->tasks[1].body.variants.size(), 2u);

  // A lone variant is not a valid list of alternatives.
  wire.getGraph().getBodies()[1].initVariants(1);
  auto bad = net::from_wire(wire.asReader());
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.message().find("resource variants"), std::string::npos) << bad.message();
}

TEST(GraphColumnsTest, DamagedColumnsAreRefusedNamingTheColumn) {
  const GraphColumns good = pack_graph(sample());
  auto refused = [](GraphColumns c, const std::string& word) {
    auto r = unpack_graph(std::move(c));
    ASSERT_FALSE(r);
    EXPECT_NE(r.message().find(word), std::string::npos) << r.message();
  };
  GraphColumns c = good;
  c.argv_end.pop_back();
  refused(c, "argv_end");
  c = good;
  std::swap(c.dep_end[1], c.dep_end[2]);
  refused(c, "dep_end");
  c = good;
  c.deps.push_back(9);
  refused(c, "dep_end");
  c = good;
  c.body_of[0] = 5;
  refused(c, "body");
  c = good;
  c.argv.back() = 'x';
  refused(c, "NUL");
  c = good;
  c.bodies.clear();
  refused(c, "bodies");
  const GraphColumns mixed = pack_graph(with_params());
  c = mixed;
  c.params[0].id = 4;  // no such task
  refused(c, "params");
  c = mixed;
  std::swap(c.params[0], c.params[1]);  // out of order
  refused(c, "params");
}

}  // namespace
}  // namespace hq
