#pragma once
// Printing for people: aligned tables, "key: value" lines, state names. cli/json_output.h
// holds what scripts read.

#include <string>
#include <vector>

#include "net/protocol.capnp.h"

namespace hq::cli {

// A plain text table: a header row, then rows, columns aligned.
class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  size_t pending() const { return rows_.size(); }
  std::string render() const;
  // The rows added since the last call (after the header, on the first), and forgets them: a
  // long listing prints in bounded memory. Column widths only grow from one call to the next,
  // so rows stay aligned unless a later one is wider than all before it.
  std::string render_more();

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
  std::vector<size_t> width_;  // of what render_more() printed
  bool header_done_ = false;
};

// "key: value" lines, keys aligned.
std::string render_pairs(const std::vector<std::pair<std::string, std::string>>& pairs);

const char* state_name(wire::TaskState s);
const char* state_name(wire::JobState s);
// A worker's state for scripts: running, connection_lost, heartbeat_lost, stopped,
// idle_timeout, time_limit_reached.
const char* state_name(wire::WorkerState s);
// ... and for people, in HyperQueue's words: RUNNING, CONNECTION LOST, HEARTBEAT LOST, STOPPED,
// IDLE TIMEOUT, TIME LIMIT REACHED.
std::string state_text(wire::WorkerState s);

// "cpus 2x4; gpus/nvidia 2; mem 64000".
std::string resources_text(wire::WorkerSummary::Reader worker);
// "RUNNING 2, FINISHED 5" style, only non-zero counts.
std::string counts_text(wire::TaskCounts::Reader c);

}  // namespace hq::cli
