// `hq alloc ...` requests: allocation queues (server/allocator.h does the work).

#include <memory>

#include <capnp/message.h>
#include <fmt/format.h>

#include "server/allocator.h"
#include "server/server_state.h"

namespace hq::server {

void Server::reply_alloc_queues(net::Connection& c, const std::vector<uint32_t>& ids) {
  capnp::MallocMessageBuilder reply;
  auto list =
      reply.initRoot<wire::ClientResponse>().initAllocQueues(static_cast<unsigned>(ids.size()));
  allocator_->fill(list, ids);
  c.send(reply);
}

void Server::reply_alloc_queues_durably(const std::shared_ptr<net::Connection>& connection,
                                        const std::vector<uint32_t>& ids) {
  auto reply = std::make_shared<capnp::MallocMessageBuilder>();
  allocator_->fill(
      reply->initRoot<wire::ClientResponse>().initAllocQueues(static_cast<unsigned>(ids.size())),
      ids);
  std::weak_ptr<net::Connection> weak = connection;
  when_durable([this, weak, reply](const Status& stored) {
    auto c = weak.lock();
    if (!c) return;
    if (!stored) {
      return reply_error(*c, "the journal could not store the change: " + stored.message());
    }
    c->send(*reply);
  });
}

void Server::handle_alloc_request(const std::shared_ptr<net::Connection>& connection,
                                  wire::ClientRequest::Reader request) {
  net::Connection& c = *connection;
  switch (request.which()) {
    case wire::ClientRequest::ALLOC_ADD: {
      auto id = allocator_->add_queue(request.getAllocAdd());
      if (!id) return reply_error(c, "cannot add the allocation queue: " + id.message());
      return reply_alloc_queues_durably(connection, {*id});
    }
    case wire::ClientRequest::ALLOC_LIST:
      return reply_alloc_queues(c, allocator_->queue_ids());
    case wire::ClientRequest::ALLOC_PAUSE:
    case wire::ClientRequest::ALLOC_RESUME: {
      bool pause = request.which() == wire::ClientRequest::ALLOC_PAUSE;
      uint32_t id = pause ? request.getAllocPause() : request.getAllocResume();
      Status st = pause ? allocator_->pause(id) : allocator_->resume(id);
      if (!st) return reply_error(c, st.message());
      return reply_alloc_queues_durably(connection, {id});
    }
    case wire::ClientRequest::ALLOC_REMOVE: {
      uint32_t id = request.getAllocRemove().getQueue();
      if (!allocator_->has_queue(id)) {
        return reply_error(c, fmt::format("allocation queue {} not found", id));
      }
      // The answer shows the queue as it was; it is sent once its allocations are canceled.
      auto before = std::make_shared<capnp::MallocMessageBuilder>();
      allocator_->fill(before->initRoot<wire::ClientResponse>().initAllocQueues(1), {id});
      std::weak_ptr<net::Connection> weak = connection;
      allocator_->remove(
          id, request.getAllocRemove().getForce(), [this, weak, before, id](const Status& st) {
            auto conn = weak.lock();
            if (!conn) return;
            if (!st) {
              return reply_error(*conn,
                                 fmt::format("removing allocation queue {}: {}", id, st.message()));
            }
            when_durable([this, weak, before](const Status& stored) {
              auto c = weak.lock();
              if (!c) return;
              if (!stored) {
                return reply_error(*c,
                                   "the journal could not store the change: " + stored.message());
              }
              c->send(*before);
            });
          });
      return;
    }
    default:
      return reply_error(c, "not an allocation request");
  }
}

}  // namespace hq::server
