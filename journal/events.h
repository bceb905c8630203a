#pragma once
// Journal records: building, encoding and decoding the Event messages of journal/events.capnp.
//
// A record is one Event in Cap'n Proto's standard flat serialization (segment table, then the
// segments), unpacked: word-aligned copies of it are read in place. Bytes read back from disk may
// be damaged, so decoding bounds sizes, sets traversal and nesting limits and checks every field
// of the event before handing it out; it reports damage as an error and never throws.

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>
#include <capnp/serialize.h>

#include "common/ids.h"
#include "common/job_spec.h"
#include "common/result.h"
#include "journal/events.capnp.h"

namespace hq::journal {

// Events are numbered from 1 in the order they are appended; the number is stored in the key.
using Seq = uint64_t;

// The largest record a journal writes or reads (a job description with a huge id list).
inline constexpr size_t kMaxRecordBytes = 128u << 20;

// Builds one event. The first segment is inline and large enough for every task and worker event,
// so building those allocates nothing. Lives on the stack of whoever appends it.
class EventMessage {
 public:
  explicit EventMessage(int64_t time_ms);
  EventMessage(const EventMessage&) = delete;
  EventMessage& operator=(const EventMessage&) = delete;

  schema::Event::Builder event() { return event_; }
  capnp::MessageBuilder& message() { return builder_; }

 private:
  std::array<capnp::word, 32> first_segment_{};  // zeroed, as MallocMessageBuilder requires
  capnp::MallocMessageBuilder builder_;
  schema::Event::Builder event_;
};

// Appends the record of `message` (whose root is an Event) to `out`; returns its size in bytes.
size_t encode(capnp::MessageBuilder& message, std::string& out);

// Decodes records one at a time, reusing its buffers. Not thread-safe; one per reader.
class EventDecoder {
 public:
  // The event stored in `data`, checked: every field of its active member can be read (several
  // times over) without throwing. Valid until the next decode() or the decoder's destruction.
  // Fails with a description of the damage (truncated, bad segment table, out-of-bounds or shared
  // pointers, trailing bytes...). An event of a type this version does not know decodes fine:
  // which() is then outside the known members.
  Result<schema::Event::Reader> decode(const void* data, size_t size);

 private:
  std::vector<uint64_t> words_;  // word-aligned storage (capnp::word cannot be copied)
  std::optional<capnp::FlatArrayMessageReader> reader_;
};

// "task-finished", "worker-lost"...; "unknown" for a type this version does not know.
const char* event_type_name(schema::Event::Which which);

// The job an event belongs to; nullopt for server and worker events (and unknown types).
std::optional<JobId> event_job(schema::Event::Reader event);

// One task of a packed list of a taskTimes record: `start` or `end` is 0 in the lists that
// hold only the other one.
struct TaskTimeEntry {
  TaskId task = 0;
  InstanceId instance = 0;
  int64_t start = 0;
  int64_t end = 0;
};
// Which list of a taskTimes record, and so which times an entry has.
enum class TaskTimesList { kStarted, kRan, kFinished };

// Packs `entries` (sorted by task, then instance) into one list of a taskTimes record, its
// times counted from `base` (the record's time).
std::string pack_task_times(const std::vector<TaskTimeEntry>& entries, TaskTimesList list,
                            int64_t base);
// The entries of a packed list, in order; fails on bytes that do not decode (cut short, a
// value too long, a task id or instance beyond 32 bits).
Result<std::vector<TaskTimeEntry>> unpack_task_times(const uint8_t* data, size_t size,
                                                     TaskTimesList list, int64_t base);

void to_record(const JobDescriptionSpec& job, schema::JobDescription::Builder out);
// Fails on a zero step or a reversed id range.
Result<JobDescriptionSpec> from_record(schema::JobDescription::Reader job);
// Whether a submit is journaled as tasksSubmitted (added to an open job, with per-task
// parameters or dependencies of a plain submit) rather than jobSubmitted.
bool needs_tasks_submitted(const JobDescriptionSpec& job);
void to_record(JobId job, const JobDescriptionSpec& description, bool new_job,
               schema::TasksSubmitted::Builder out);
// The description with its per-task parameters and submit dependencies; `job` is the open job
// it was added to, 0 for a new job.
Result<JobDescriptionSpec> from_record(schema::TasksSubmitted::Reader submitted);

}  // namespace hq::journal
