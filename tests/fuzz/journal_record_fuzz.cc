// libFuzzer target for journal records: arbitrary bytes read back from a damaged disk, decoded as
// an Event, must never crash the decoder or a reader of the event it returns. Damage may only be
// reported as an error; once decode() succeeds, reading any field must not throw.

#include <cstddef>
#include <cstdint>

#include "journal/events.h"

namespace {

using hq::journal::schema::Event;

// Reads what a replaying server reads.
void read_event(Event::Reader event) {
  (void)hq::journal::event_type_name(event.which());
  (void)hq::journal::event_job(event);
  switch (event.which()) {
    case Event::JOB_SUBMITTED: {
      auto spec = hq::journal::from_record(event.getJobSubmitted().getDescription());
      if (spec) (void)spec->task_ids.size();
      break;
    }
    case Event::TASK_FAILED:
      (void)event.getTaskFailed().getError().size();
      break;
    case Event::WORKER_CONNECTED:
      (void)event.getWorkerConnected().getHostname().size();
      break;
    default:
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static hq::journal::EventDecoder decoder;  // reused, as replay does
  auto event = decoder.decode(data, size);
  if (event) read_event(*event);  // a kj::Exception here is a bug: libFuzzer reports it
  return 0;
}
