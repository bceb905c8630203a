#pragma once
// Helpers the client command files share (defined in cli/commands.cc unless templates).

#include <algorithm>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "cli/client.h"
#include "common/id_set.h"
#include "common/ids.h"
#include "common/job_spec.h"
#include "net/convert.h"

namespace hq::cli {

// A selector that names no job: "job 99 not found", "there is no job yet" for `last`.
CommandError no_job(const std::string& selector);
// Text that is not UTF-8 (a file name, say) is printed with replacement characters.
void print_json(const nlohmann::json& j);
// "last", "all" or an id set such as "1-3,7".
void set_job_selector(const std::string& text, wire::JobSelector::Builder out);
// One job id from "ID" or "last" (asks the server for the last).
JobId resolve_job(Client& client, const std::string& job);
// `hq job wait SELECTOR` on an open client: prints the outcome; returns its exit code.
// `without_close`: an open job counts as done once its current tasks are.
int wait_for(const GlobalOptions& g, Client& client, const std::string& selector,
             bool without_close = false);
// The job's stream directory, as its workers will resolve it.
std::string stream_dir(const JobDescriptionSpec& job, JobId id, const std::string& server_uid);
// `hq job progress SELECTOR` on an open client (cli/job_commands.cc): draws the jobs' progress
// as the server reports it (a bar on a terminal, lines otherwise) until every selected job is
// complete; with `print_final`, prints the final counts in JSON mode (else it draws in CLI mode
// only). Fails when no job matches.
void show_progress(const GlobalOptions& g, Client& client, const std::string& selector,
                   bool print_final = false);

// Parses a comma list of task (or job) state names; `flag` names the option in errors.
template <typename Enum>
std::vector<Enum> parse_states(const std::string& filter, const char* what,
                               const char* flag = "--filter") {
  static const std::vector<std::string> kNames = {"waiting", "running",  "finished",
                                                  "failed",  "canceled", "aborted"};
  std::vector<Enum> states;
  if (filter.empty()) return states;
  size_t pos = 0;
  while (pos <= filter.size()) {
    size_t comma = filter.find(',', pos);
    if (comma == std::string::npos) comma = filter.size();
    std::string name = filter.substr(pos, comma - pos);
    auto it = std::find(kNames.begin(), kNames.end(), name);
    if (it == kNames.end()) {
      throw CommandError{fmt::format("unknown {} state '{}' in {} (use {})", what, name, flag,
                                     fmt::join(kNames, ", "))};
    }
    states.push_back(static_cast<Enum>(it - kNames.begin()));
    pos = comma + 1;
  }
  return states;
}

// Calls `fn` for every task of `job` that `tasks` (empty: all) and `states` (empty: any)
// select, in id order. The server answers in bounded pages, each asked for from where the last
// one ended.
template <typename Fn>
void for_each_task(Client& client, JobId job, const std::string& tasks,
                   const std::vector<wire::TaskState>& states, Fn&& fn) {
  capnp::MallocMessageBuilder request;
  auto query = request.initRoot<wire::ClientRequest>().initTaskList();
  query.setJob(job);
  if (!tasks.empty()) {
    IdSet ids = must(IdSet::parse(tasks), "invalid task selection");
    net::to_wire(ids, query.initTasks(ids.ranges().size()));
  }
  auto st = query.initStates(states.size());
  for (size_t i = 0; i < states.size(); ++i) st.set(i, states[i]);
  for (bool more = true; more;) {
    auto response = must(client.call(request));
    auto page = response.root<wire::ClientResponse>().getTaskPage();
    more = page.getMore();
    query.setFrom(page.getNext());
    for (auto t : page.getTasks()) fn(t);
  }
}

}  // namespace hq::cli
