#pragma once
// Mapping between the wire schema and the plain C++ types of common/.

#include <vector>

#include "common/id_set.h"
#include "common/ids.h"
#include "common/job_spec.h"
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
TaskBodySpec from_wire(wire::TaskBody::Reader body);

void to_wire(const JobDescriptionSpec& job, wire::JobDescription::Builder out);
Result<JobDescriptionSpec> from_wire(wire::JobDescription::Reader job);

}  // namespace hq::net
