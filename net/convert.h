#pragma once
// Mapping between the wire schema and the plain C++ types of common/.

#include <cstddef>
#include <cstdint>
#include <vector>

#include "common/graph_columns.h"
#include "common/id_set.h"
#include "common/ids.h"
#include "common/job_spec.h"
#include "common/resources.h"
#include "net/protocol.capnp.h"

namespace hq::net {

void to_wire(const IdSet& set, capnp::List<wire::IdRange>::Builder out);
capnp::List<wire::IdRange>::Builder to_wire(const IdSet& set, wire::JobDescription::Builder parent);
// Fails on a zero step or a reversed range.
Result<IdSet> from_wire(capnp::List<wire::IdRange>::Reader ranges);

void to_wire(const TaskKey& key, wire::TaskKey::Builder out);
TaskKey from_wire(wire::TaskKey::Reader key);
// Fills a list of task keys.
void to_wire(const std::vector<TaskKey>& keys, capnp::List<wire::TaskKey>::Builder out);

void to_wire(const TaskBodySpec& body, wire::TaskBody::Builder out);
// Fails on resources or a pin mode the parsers would refuse.
Result<TaskBodySpec> from_wire(wire::TaskBody::Reader body);

void to_wire(const ResourceRequest& request, capnp::List<wire::ResourceEntry>::Builder out);
// Fails on an entry the parsers would refuse (unknown policy, bad name, zero amount).
Result<ResourceRequest> from_wire(capnp::List<wire::ResourceEntry>::Reader entries);
void to_wire(const ResourceDescriptor& descriptor,
             capnp::List<wire::ResourceDefinition>::Builder out);
// Fails on a definition the parsers would refuse (duplicate name or unit, empty group).
Result<ResourceDescriptor> from_wire(capnp::List<wire::ResourceDefinition>::Reader defs);

void to_wire(const GraphColumns& columns, wire::GraphColumns::Builder out);
// Fails on columns that disagree (unpack_graph) or a body the parsers would refuse.
Result<std::vector<GraphTaskSpec>> from_wire(wire::GraphColumns::Reader graph);

// A job with per-task bodies goes as GraphColumns (its `tasks` list stays empty). Lists of one
// element per task (per-task bodies, entries) longer than `max_per_task` are left empty (an
// answer that shows a job stays small).
void to_wire(const JobDescriptionSpec& job, wire::JobDescription::Builder out,
             size_t max_per_task = SIZE_MAX);
Result<JobDescriptionSpec> from_wire(wire::JobDescription::Reader job);

// A worker's state in HyperQueue's words, lower case joined by '_' (running, connection_lost,
// heartbeat_lost, stopped, idle_timeout, time_limit_reached): the JSON `state` of `hq worker
// list`; the server's end reasons and the tables write the same words with spaces.
const char* worker_state_name(wire::WorkerState state);

}  // namespace hq::net
