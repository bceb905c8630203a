#include "cli/job_file.h"

#include <gtest/gtest.h>

#include <string>

namespace hq::cli {
namespace {

// The error of parsing `text`, which must fail.
std::string error_of(const std::string& text) {
  Result<JobFile> r = parse_job_file(text, "jobs.toml");
  EXPECT_FALSE(r.is_ok()) << text;
  return r.is_ok() ? std::string() : r.message();
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(JobFile, ReadsTasksWithEveryKey) {
  Result<JobFile> r = parse_job_file(R"(
name = "test-job"
stream = "out/%{JOB_ID}"
max_fails = 11

[[task]]
id = 7
stdout = "testout-%{TASK_ID}"
stderr = { path = "testerr-%{TASK_ID}", mode = "rm-if-finished" }
task_dir = true
time_limit = "1m 10s"
priority = -1
crash_limit = 12
pin = "omp"
cwd = "/tmp"
command = ["/bin/bash", "-c", "echo $ABC"]
env = { "ABC" = "123", "XYZ" = "aaaa" }
stdin = "Hello world!"

[[task.request]]
resources = { "cpus" = "4 compact!", "gpus" = 2 }
time_request = "10s"

[[task.request]]
resources = { "cpus" = 1, "mem" = 0.5 }
time_request = "10s"

[[task]]
command = ["true"]
deps = [7]
)",
                                     "jobs.toml");
  ASSERT_TRUE(r.is_ok()) << r.message();
  EXPECT_EQ(r->name, "test-job");
  EXPECT_EQ(r->stream, "out/%{JOB_ID}");
  EXPECT_EQ(r->max_fails, 11);
  ASSERT_EQ(r->tasks.size(), 2u);
  const JobFileTask& t = r->tasks[0];
  EXPECT_EQ(t.id, 7u);
  EXPECT_EQ(t.command, (std::vector<std::string>{"/bin/bash", "-c", "echo $ABC"}));
  EXPECT_EQ(t.env.size(), 2u);
  EXPECT_EQ(t.stdout_output->path, "testout-%{TASK_ID}");
  EXPECT_FALSE(t.stdout_output->remove_if_finished);
  EXPECT_TRUE(t.stderr_output->remove_if_finished);
  EXPECT_TRUE(t.task_dir);
  EXPECT_EQ(t.time_limit_ms, 70'000u);
  EXPECT_EQ(t.priority, -1);
  EXPECT_EQ(t.crash_limit, 12u);
  EXPECT_EQ(t.pin, "omp");
  EXPECT_EQ(t.stdin_text, "Hello world!");
  ASSERT_EQ(t.requests.size(), 2u);
  EXPECT_EQ(describe(t.requests[0].resources),
            describe(*make_request(
                {*parse_named_request("cpus=4 compact!"), *parse_named_request("gpus=2")})));
  EXPECT_EQ(t.requests[0].time_request_ms, 10'000u);
  EXPECT_EQ(t.requests[1].time_request_ms, 10'000u);
  // The second task has no id: the first free one from 0.
  EXPECT_EQ(r->tasks[1].id, 0u);
  EXPECT_EQ(r->tasks[1].deps, (std::vector<TaskId>{7}));
  EXPECT_EQ(r->tasks[1].requests.size(), 1u);  // the default: 1 CPU
}

TEST(JobFile, ConsecutiveIdsSkipTheGivenOnes) {
  Result<JobFile> r = parse_job_file(R"(
[[task]]
command = ["a"]
[[task]]
id = 1
command = ["b"]
[[task]]
command = ["c"]
)",
                                     "f");
  ASSERT_TRUE(r.is_ok()) << r.message();
  EXPECT_EQ(r->tasks[0].id, 0u);
  EXPECT_EQ(r->tasks[1].id, 1u);
  EXPECT_EQ(r->tasks[2].id, 2u);
}

TEST(JobFile, ArrayWithIdsAndEntries) {
  Result<JobFile> r = parse_job_file(R"(
[array]
ids = "1,2,50-51"
entries = ["One", "Two", "Three", "Four"]
command = ["sleep", "1"]
)",
                                     "f");
  ASSERT_TRUE(r.is_ok()) << r.message();
  ASSERT_EQ(r->tasks.size(), 4u);
  EXPECT_EQ(r->tasks[2].id, 50u);
  EXPECT_EQ(r->tasks[2].entry, "Three");
  Result<JobFile> only_entries =
      parse_job_file("[[array]]\nentries = [\"a\", \"b\"]\ncommand = [\"x\"]\n", "f");
  ASSERT_TRUE(only_entries.is_ok()) << only_entries.message();
  EXPECT_EQ(only_entries->tasks[1].id, 1u);
}

// Every kind of error names the file, the line and the key.
TEST(JobFile, ErrorsNameFileLineAndKey) {
  EXPECT_TRUE(contains(error_of("[[task]]\ncommand = [\"a\"]\ncolour = 1\n"),
                       "jobs.toml:3: key 'task.colour': unknown key"));
  EXPECT_TRUE(contains(error_of("[[task]]\ncommand = \"echo hi\"\n"),
                       "jobs.toml:2: key 'task.command': expected a list of strings"));
  EXPECT_TRUE(contains(error_of("[[task]]\ncommand = [\"a\"]\npriority = \"high\"\n"),
                       "jobs.toml:3: key 'task.priority': expected an integer"));
  EXPECT_TRUE(contains(error_of("[[task]]\nid = 1\ncommand = [\"a\"]\n[[task]]\nid = 1\n"
                                "command = [\"b\"]\n"),
                       "jobs.toml:5: key 'task.id': task id 1 is used twice"));
  EXPECT_TRUE(contains(error_of("[[task]]\nid = 1\ncommand = [\"a\"]\ndeps = [9]\n"),
                       "jobs.toml:1: key 'task.deps': task 1 depends on task 9, which the file "
                       "does not define"));
  const std::string cycle = error_of(
      "[[task]]\nid = 1\ncommand = [\"a\"]\ndeps = [2]\n"
      "[[task]]\nid = 2\ncommand = [\"b\"]\ndeps = [1]\n");
  EXPECT_TRUE(contains(cycle, "key 'task.deps': the dependencies form a cycle: tasks")) << cycle;
  EXPECT_TRUE(contains(cycle, "1 -> 2 -> 1") || contains(cycle, "2 -> 1 -> 2")) << cycle;
  EXPECT_TRUE(contains(error_of("[[task]]\ncommand = [\"a\"]\n[array]\nids = \"1\"\n"
                                "command = [\"b\"]\n"),
                       "key 'array': [array] and [[task]] cannot be mixed"));
  EXPECT_TRUE(contains(error_of("[[task]]\ncommand = [\"a\"]\n[[task.request]]\n"
                                "resources = { gpus = \"two\" }\n"),
                       "jobs.toml:4: key 'task.request.resources.gpus'"));
  EXPECT_TRUE(contains(error_of("[[task]]\ncommand = [\"a\"]\ntime_limit = \"soon\"\n"),
                       "jobs.toml:3: key 'task.time_limit': invalid duration 'soon'"));
  EXPECT_TRUE(contains(error_of("name = \"x\"\n[[task]\ncommand = [\"a\"]\n"), "jobs.toml:2: "));
  EXPECT_TRUE(contains(error_of("name = \"x\"\n"), "defines no task"));
  EXPECT_TRUE(contains(error_of("[[task]]\nenv = { A = \"1\" }\n"), "needs a command"));
  EXPECT_TRUE(contains(error_of("[array]\nids = \"1-3\"\nentries = [\"a\"]\ncommand = [\"x\"]\n"),
                       "1 entries for 3 ids"));
}

// The description a file submits (relative paths against /submit).
JobDescriptionSpec description_of(const std::string& text) {
  Result<JobFile> parsed = parse_job_file(text, "jobs.toml");
  EXPECT_TRUE(parsed.is_ok()) << parsed.message();
  if (!parsed) return {};
  Result<JobDescriptionSpec> job = job_file_description(*parsed, "jobs.toml", "/submit");
  EXPECT_TRUE(job.is_ok()) << job.message();
  return job ? std::move(*job) : JobDescriptionSpec{};
}

TEST(JobFileDescription, StdinTaskDirAndRemovedOutputs) {
  JobDescriptionSpec job = description_of(R"(
[[task]]
id = 0
command = ["cat"]
stdin = "data\n"
task_dir = true
stdout = { path = "out.txt", mode = "rm-if-finished" }
stderr = { path = "err.txt", mode = "rm-if-finished" }
[[task]]
id = 1
command = ["true"]
)");
  ASSERT_EQ(job.tasks.size(), 2u);
  const TaskBodySpec& b = job.tasks[0].body;
  EXPECT_EQ(b.stdin_data, "data\n");
  EXPECT_TRUE(b.task_dir);
  EXPECT_EQ(b.stdout_path, "out.txt");
  EXPECT_TRUE(b.stdout_rm_if_finished);
  EXPECT_EQ(b.stderr_path, "err.txt");
  EXPECT_TRUE(b.stderr_rm_if_finished);
  const TaskBodySpec& other = job.tasks[1].body;
  EXPECT_TRUE(other.stdin_data.empty());
  EXPECT_FALSE(other.task_dir);
  EXPECT_FALSE(other.stdout_rm_if_finished);
  EXPECT_TRUE(job.entries.empty());
}

TEST(JobFileDescription, ArrayIsAnArrayJobWithEntriesInIdOrder) {
  JobDescriptionSpec job = description_of(R"(
[array]
ids = "9,3,5"
entries = ["nine", "three", "five"]
command = ["echo"]
task_dir = true
)");
  EXPECT_TRUE(job.tasks.empty());  // one body for all
  EXPECT_EQ(job.task_ids.to_vector(), (std::vector<uint32_t>{3, 5, 9}));
  EXPECT_EQ(job.entries, (std::vector<std::string>{"three", "five", "nine"}));
  EXPECT_EQ(*task_entry(job, 9), "nine");
  EXPECT_EQ(*task_entry(job, 3), "three");
  EXPECT_EQ(task_entry(job, 4), nullptr);
  EXPECT_EQ(job.body.program, (std::vector<std::string>{"echo"}));
  EXPECT_TRUE(job.body.task_dir);

  JobDescriptionSpec only_entries = description_of(
      "[array]\nentries = [\"a\", \"b\"]\n"
      "command = [\"echo\"]\n");
  EXPECT_EQ(only_entries.task_ids.to_vector(), (std::vector<uint32_t>{0, 1}));
  EXPECT_EQ(only_entries.entries, (std::vector<std::string>{"a", "b"}));
  JobDescriptionSpec only_ids = description_of("[array]\nids = \"1-4\"\ncommand = [\"echo\"]\n");
  EXPECT_EQ(only_ids.task_ids.size(), 4u);
  EXPECT_TRUE(only_ids.entries.empty());
}

TEST(JobFileDescription, StreamSendsUnnamedChannelsThere) {
  JobDescriptionSpec job = description_of(R"(
stream = "logs/%{JOB_ID}"
[[task]]
command = ["true"]
stderr = "err.txt"
)");
  EXPECT_EQ(job.stream, "/submit/logs/%{JOB_ID}");
  EXPECT_EQ(job.tasks[0].body.stdout_path, "");  // into the stream
  EXPECT_EQ(job.tasks[0].body.stderr_path, "err.txt");

  Result<JobFile> parsed =
      parse_job_file("stream = \"s-%{TASK_ID}\"\n[[task]]\ncommand = [\"true\"]\n", "jobs.toml");
  ASSERT_TRUE(parsed.is_ok());
  auto bad = job_file_description(*parsed, "jobs.toml", "/submit");
  ASSERT_FALSE(bad.is_ok());
  EXPECT_TRUE(contains(bad.message(), "%{TASK_ID}")) << bad.message();
}

TEST(JobFileDescription, SeveralRequestsAreVariantsInFileOrder) {
  JobDescriptionSpec job = description_of(
      "[[task]]\nid = 3\ncommand = [\"a\"]\n[[task.request]]\nresources = { cpus = 4 }\n"
      "time_request = \"10s\"\n[[task.request]]\nresources = { cpus = 1, gpus = 1 }\n"
      "time_request = \"10s\"\n"
      "[[task]]\nid = 4\ncommand = [\"b\"]\n[[task.request]]\nresources = { cpus = 2 }\n");
  ASSERT_EQ(job.tasks.size(), 2u);
  const TaskBodySpec& body = job.tasks[0].body;
  ASSERT_EQ(body.variants.size(), 2u);
  EXPECT_EQ(describe(body.variants[0]), "cpus=4");
  EXPECT_EQ(describe(body.variants[1]), "cpus=1; gpus=1");
  EXPECT_TRUE(body.resources == body.variants[0]);
  EXPECT_EQ(body.cpus, 4u);
  EXPECT_EQ(body.time_request_ms, 10'000u);
  // One request: no variants.
  EXPECT_TRUE(job.tasks[1].body.variants.empty());
  EXPECT_EQ(describe(job.tasks[1].body.resources), "cpus=2");
}

TEST(JobFile, VariantsMustAgreeOnNodesAndTimeRequest) {
  EXPECT_TRUE(contains(
      error_of("[[task]]\ncommand = [\"a\"]\n[[task.request]]\nresources = { cpus = 1 }\n"
               "[[task.request]]\nn_nodes = 2\n"),
      "jobs.toml:5: key 'task.request.n_nodes': every [[task.request]] of a task must ask for "
      "the same n_nodes"));
  EXPECT_TRUE(contains(
      error_of("[[task]]\ncommand = [\"a\"]\n[[task.request]]\nresources = { cpus = 1 }\n"
               "[[task.request]]\nresources = { cpus = 2 }\ntime_request = \"1m\"\n"),
      "jobs.toml:5: key 'task.request.time_request': every [[task.request]] of a task must have "
      "the same time_request"));
}

}  // namespace
}  // namespace hq::cli
