#include "common/task_graph.h"

#include <gtest/gtest.h>

#include <random>

namespace hq {
namespace {

TEST(TaskGraph, AcyclicGraphsHaveNoCycle) {
  EXPECT_FALSE(find_cycle({}).has_value());
  // A diamond: 1 -> {2, 3} -> 4.
  std::vector<TaskDeps> diamond = {{1, {}}, {2, {1}}, {3, {1}}, {4, {2, 3}}};
  EXPECT_FALSE(find_cycle(diamond).has_value());
  EXPECT_TRUE(check_task_graph(diamond).is_ok());
}

TEST(TaskGraph, FindsTheCycleAndNamesItsTasks) {
  std::vector<TaskDeps> tasks = {{1, {}}, {2, {1, 4}}, {3, {2}}, {4, {3}}, {5, {4}}};
  auto cycle = find_cycle(tasks);
  ASSERT_TRUE(cycle.has_value());
  // Starts and ends with the same task, and walks 2 -> 4 -> 3 -> 2 in some rotation.
  ASSERT_EQ(cycle->size(), 4u);
  EXPECT_EQ(cycle->front(), cycle->back());
  for (size_t i = 0; i + 1 < cycle->size(); ++i) {
    const TaskId from = (*cycle)[i], to = (*cycle)[i + 1];
    auto it = std::find_if(tasks.begin(), tasks.end(), [from](auto& t) { return t.id == from; });
    EXPECT_NE(std::find(it->deps.begin(), it->deps.end(), to), it->deps.end())
        << from << " does not depend on " << to;
  }
  Status st = check_task_graph(tasks);
  EXPECT_NE(st.message().find("cycle"), std::string::npos) << st.message();
}

TEST(TaskGraph, NamesDuplicatesSelfAndDanglingDependencies) {
  EXPECT_NE(check_task_graph({{1, {}}, {1, {}}}).message().find("task 1 is defined more than once"),
            std::string::npos);
  EXPECT_NE(check_task_graph({{1, {1}}}).message().find("task 1 depends on itself"),
            std::string::npos);
  EXPECT_NE(check_task_graph({{1, {7}}}).message().find("depends on task 7, which the job"),
            std::string::npos);
}

// A long chain (deeper than any recursion would survive) and random DAGs with one back edge.
TEST(TaskGraph, DeepChainsAndRandomGraphs) {
  std::vector<TaskDeps> chain;
  for (TaskId i = 0; i < 1'000'000; ++i)
    chain.push_back({i, i ? std::vector<TaskId>{i - 1} : std::vector<TaskId>{}});
  EXPECT_FALSE(find_cycle(chain).has_value());
  chain[0].deps.push_back(999'999);
  auto cycle = find_cycle(chain);
  ASSERT_TRUE(cycle.has_value());
  EXPECT_EQ(cycle->size(), 1'000'001u);

  std::mt19937 rng(7);
  for (int round = 0; round < 50; ++round) {
    const uint32_t n = 2 + rng() % 200;
    std::vector<TaskDeps> dag(n);
    for (uint32_t i = 0; i < n; ++i) {
      dag[i].id = i * 3;
      for (uint32_t k = 0; k < i && k < 4; ++k) dag[i].deps.push_back((rng() % i) * 3);
    }
    EXPECT_FALSE(find_cycle(dag).has_value());
    // A path n-1 -> ... -> 0 and an edge back from 0 to n-1: a cycle through every task.
    for (uint32_t i = 1; i < n; ++i) dag[i].deps.push_back((i - 1) * 3);
    EXPECT_FALSE(find_cycle(dag).has_value());
    dag[0].deps.push_back((n - 1) * 3);
    auto found = find_cycle(dag);
    ASSERT_TRUE(found.has_value());
    EXPECT_EQ(found->front(), found->back());
    EXPECT_GE(found->size(), 3u);
  }
}

}  // namespace
}  // namespace hq
