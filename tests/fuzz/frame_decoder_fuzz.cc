// libFuzzer target for net::FrameDecoder: arbitrary socket bytes, fed in pieces, must never crash
// the decoder or a reader of the messages it returns; malformed content may only throw
// kj::Exception. Submissions and worker registrations are also decoded as the server does
// (net/convert.h), resources included.

#include <cstddef>
#include <cstdint>

#include <capnp/any.h>
#include <kj/exception.h>

#include "common/resources.h"
#include "net/convert.h"
#include "net/framing.h"
#include "net/protocol.capnp.h"

namespace {

// Touches the parts of a request a server would read.
void read_request(hq::net::Message& message) {
  auto request = message.root<hq::wire::ClientRequest>();
  switch (request.which()) {
    case hq::wire::ClientRequest::SUBMIT: {
      auto job = request.getSubmit();
      (void)job.getName().size();
      for (auto range : job.getTaskIds()) (void)range.getStep();
      auto body = job.getBody();
      for (auto arg : body.getProgram()) (void)arg.size();
      for (auto pair : body.getEnv()) (void)pair.getKey().size();
      (void)body.getCwd().size();
      // What the server does with a submission: decode it whole (resources included).
      (void)hq::net::from_wire(job);
      break;
    }
    case hq::wire::ClientRequest::JOB_INFO:
      if (request.getJobInfo().isIds()) {
        for (auto range : request.getJobInfo().getIds()) (void)range.getEnd();
      }
      break;
    case hq::wire::ClientRequest::TASK_LIST:
      for (auto state : request.getTaskList().getStates()) (void)state;
      break;
    default:
      break;
  }
  (void)message.root<capnp::AnyPointer>().targetSize();
  // The same bytes as a worker's registration: its resources as the server decodes them.
  auto from_worker = message.root<hq::wire::FromWorker>();
  if (from_worker.isRegister()) {
    auto resources = hq::net::from_wire(from_worker.getRegister().getResources());
    if (resources) (void)hq::describe(*resources);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  hq::net::FrameDecoder decoder;
  // The first byte picks the chunk size, so split frames get exercised too.
  const size_t chunk = size == 0 ? 1 : 1 + data[0] % 64;
  for (size_t offset = 0; offset < size; offset += chunk) {
    const size_t piece = size - offset < chunk ? size - offset : chunk;
    if (!decoder.feed(data + offset, piece)) return 0;
    try {
      while (auto message = decoder.next()) read_request(*message);
    } catch (const kj::Exception&) {
      // Malformed content: the connection would be closed with this reason.
    }
  }
  return 0;
}
