#include "alloc/queue.h"

#include <algorithm>

#include <fmt/format.h>

namespace hq::alloc {
namespace {

bool active(const Allocation& a) {
  return a.state == AllocationState::kQueued || a.state == AllocationState::kRunning;
}

}  // namespace

uint32_t AllocationQueue::pending_workers() const {
  uint32_t n = in_flight_workers_;
  for (const auto& [id, a] : allocations_) {
    if (active(a) && !a.cancel_requested) n += a.workers - a.connected;
  }
  return n;
}

uint32_t AllocationQueue::active_workers() const {
  uint32_t n = in_flight_workers_;
  for (const auto& [id, a] : allocations_) {
    if (active(a) && !a.cancel_requested) n += a.workers;
  }
  return n;
}

Decisions AllocationQueue::plan(uint32_t demand, int64_t now) {
  Decisions d;
  if (removed_) return d;
  if (demand > 0) {
    no_demand_since_.reset();
  } else if (!no_demand_since_) {
    no_demand_since_ = now;
  } else if (limits_.cancel_queued_after &&
             now - *no_demand_since_ >= limits_.cancel_queued_after->count()) {
    for (auto& [id, a] : allocations_) {
      if (a.state == AllocationState::kQueued && !a.cancel_requested) {
        a.cancel_requested = true;
        d.cancel.push_back(id);
      }
    }
  }

  if (paused() || in_flight_ > 0 || (retry_at_ && now < *retry_at_)) return d;
  uint32_t pending = pending_workers();
  uint32_t missing = demand > pending ? demand - pending : 0;
  uint32_t queued = 0;
  for (const auto& [id, a] : allocations_) {
    if (a.state == AllocationState::kQueued && !a.cancel_requested) ++queued;
  }
  uint32_t workers = active_workers();
  while (missing > 0 && queued < limits_.backlog) {
    uint32_t n = std::min(missing, std::max<uint32_t>(limits_.max_workers_per_alloc, 1));
    if (limits_.max_worker_count) {
      if (workers >= *limits_.max_worker_count) break;
      n = std::min(n, *limits_.max_worker_count - workers);
    }
    d.submit.push_back(n);
    missing -= n;
    workers += n;
    ++queued;
  }
  in_flight_ = static_cast<uint32_t>(d.submit.size());
  for (uint32_t n : d.submit) in_flight_workers_ += n;
  return d;
}

void AllocationQueue::on_submitted(const std::string& id, uint32_t workers, int64_t now) {
  if (in_flight_ > 0) {
    --in_flight_;
    in_flight_workers_ -= std::min(in_flight_workers_, workers);
  }
  Allocation a;
  a.id = id;
  a.workers = std::max<uint32_t>(workers, 1);
  a.submitted_at = now;
  allocations_[id] = std::move(a);
  submit_failures_ = 0;
  retry_at_.reset();
}

void AllocationQueue::on_submit_failed(uint32_t workers, const std::string& error, int64_t now) {
  if (in_flight_ > 0) {
    --in_flight_;
    in_flight_workers_ -= std::min(in_flight_workers_, workers);
  }
  ++submit_failures_;
  last_error_ = error;
  int64_t delay = limits_.retry_delay.count();
  for (uint32_t i = 1; i < submit_failures_ && delay < limits_.max_retry_delay.count(); ++i) {
    delay *= 2;
  }
  retry_at_ = now + std::min(delay, static_cast<int64_t>(limits_.max_retry_delay.count()));
  if (submit_failures_ >= limits_.max_submit_failures && !paused()) {
    pause(fmt::format("{} submissions in a row failed; the last: {}", submit_failures_, error));
  }
}

void AllocationQueue::allocation_ended(Allocation& a, bool failed, int64_t now) {
  a.state = failed ? AllocationState::kFailed : AllocationState::kFinished;
  a.ended_at = now;
  a.connected = 0;
  // A queue whose allocations never bring a worker is broken (a wrong worker command, a server
  // the nodes cannot reach): count it, unless hq itself canceled the allocation.
  if (a.any_connected || a.cancel_requested) return;
  ++allocation_failures_;
  std::string words = a.detail.empty() ? std::string(state_name(a.state)) : a.detail;
  last_error_ = fmt::format("allocation {} ended before any worker connected: {}", a.id, words);
  if (allocation_failures_ >= limits_.max_allocation_failures && !paused()) {
    pause(fmt::format("{} allocations in a row ended before any worker connected; the last, {}: {}",
                      allocation_failures_, a.id, words));
  }
}

void AllocationQueue::on_status(const std::map<std::string, AllocationStatus>& status,
                                int64_t now) {
  for (auto& [id, a] : allocations_) {
    if (!active(a)) continue;
    auto it = status.find(id);
    if (it == status.end()) {
      a.detail = "no longer known to the batch system";
      allocation_ended(a, /*failed=*/false, now);
      continue;
    }
    a.detail = it->second.detail;
    switch (it->second.state) {
      case AllocationState::kQueued:
        break;
      case AllocationState::kRunning:
        if (a.state == AllocationState::kQueued) {
          a.state = AllocationState::kRunning;
          a.started_at = now;
        }
        break;
      case AllocationState::kFinished:
      case AllocationState::kFailed:
        if (!a.started_at) a.started_at = now;
        allocation_ended(a, it->second.state == AllocationState::kFailed, now);
        break;
    }
  }
}

void AllocationQueue::restore(Allocation a) {
  a.workers = std::max<uint32_t>(a.workers, 1);
  a.connected = 0;
  a.cancel_requested = false;
  if (a.ended_at) {
    if (active(a)) a.state = AllocationState::kFinished;
  } else {
    a.state = AllocationState::kQueued;
    a.started_at.reset();
    a.any_connected = false;
  }
  const std::string id = a.id;
  allocations_[id] = std::move(a);
}

void AllocationQueue::on_worker_connected(const std::string& id, int64_t now) {
  auto it = allocations_.find(id);
  if (it == allocations_.end() || !active(it->second)) return;
  Allocation& a = it->second;
  if (a.state == AllocationState::kQueued) {
    a.state = AllocationState::kRunning;
    a.started_at = now;
  }
  a.connected = std::min(a.connected + 1, a.workers);
  a.any_connected = true;
  allocation_failures_ = 0;
}

void AllocationQueue::on_worker_lost(const std::string& id) {
  auto it = allocations_.find(id);
  if (it != allocations_.end() && it->second.connected > 0) --it->second.connected;
}

std::vector<std::string> AllocationQueue::ids_to_query() const {
  std::vector<std::string> ids;
  for (const auto& [id, a] : allocations_) {
    if (active(a)) ids.push_back(id);
  }
  return ids;
}

void AllocationQueue::pause(std::string reason) {
  pause_reason_ = reason.empty() ? std::string("paused") : std::move(reason);
}

void AllocationQueue::resume() {
  pause_reason_.reset();
  submit_failures_ = 0;
  allocation_failures_ = 0;
  retry_at_.reset();
}

const std::string& AllocationQueue::pause_reason() const {
  static const std::string kNone;
  return pause_reason_ ? *pause_reason_ : kNone;
}

Decisions AllocationQueue::remove() {
  Decisions d;
  removed_ = true;
  for (auto& [id, a] : allocations_) {
    if (active(a)) {
      a.cancel_requested = true;
      d.cancel.push_back(id);
    }
  }
  return d;
}

Status AllocationQueue::check_invariants() const {
  for (const auto& [id, a] : allocations_) {
    if (a.id != id) return Status::error(fmt::format("allocation {} is filed as {}", a.id, id));
    if (a.workers == 0) return Status::error(fmt::format("allocation {} has no worker", id));
    if (a.connected > a.workers) {
      return Status::error(
          fmt::format("allocation {}: {} of {} workers connected", id, a.connected, a.workers));
    }
    if (active(a) == a.ended_at.has_value()) {
      return Status::error(fmt::format("allocation {} is {} with ended_at {}", id,
                                       state_name(a.state), a.ended_at.has_value()));
    }
    if (a.state != AllocationState::kQueued && !a.started_at && a.any_connected) {
      return Status::error(fmt::format("allocation {} ran without a start time", id));
    }
    if (!active(a) && a.connected != 0) {
      return Status::error(fmt::format("allocation {} ended with workers connected", id));
    }
    if (a.any_connected == false && a.connected > 0) {
      return Status::error(fmt::format("allocation {} has workers but none ever connected", id));
    }
  }
  if (paused() && pause_reason_->empty()) return Status::error("paused without a reason");
  if (!paused() && (submit_failures_ >= limits_.max_submit_failures ||
                    allocation_failures_ >= limits_.max_allocation_failures)) {
    return Status::error("failure limit reached but the queue is not paused");
  }
  if ((in_flight_ == 0) != (in_flight_workers_ == 0)) {
    return Status::error(
        fmt::format("{} submissions in flight with {} workers", in_flight_, in_flight_workers_));
  }
  if (removed_) {
    for (const auto& [id, a] : allocations_) {
      if (active(a) && !a.cancel_requested) {
        return Status::error(fmt::format("allocation {} outlives its removed queue", id));
      }
    }
  }
  return Status::ok();
}

}  // namespace hq::alloc
