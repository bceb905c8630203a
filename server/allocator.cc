#include "server/allocator.h"

#include <algorithm>

#include <capnp/serialize.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "common/resources.h"
#include "common/time.h"

namespace hq::server {
namespace {

std::vector<std::string> texts(capnp::List<capnp::Text>::Reader list) {
  std::vector<std::string> out;
  for (auto t : list) out.emplace_back(t.cStr());
  return out;
}

alloc::AllocationSpec spec_of(wire::AllocQueueParams::Reader p, uint32_t workers,
                              std::string log_dir) {
  alloc::AllocationSpec spec;
  spec.name = p.getName().cStr();
  spec.time_limit = Millis(static_cast<int64_t>(p.getTimeLimitMs()));
  if (p.getWorkerTimeLimitMs() != 0) {
    spec.worker_time_limit = Millis(static_cast<int64_t>(p.getWorkerTimeLimitMs()));
  }
  spec.workers = workers;
  spec.hq_binary = p.getHqBinary().cStr();
  spec.server_dir = p.getServerDir().cStr();
  spec.worker_args = texts(p.getWorkerArgs());
  spec.batch_args = texts(p.getBatchArgs());
  spec.worker_start_cmd = p.getWorkerStartCmd().cStr();
  spec.worker_stop_cmd = p.getWorkerStopCmd().cStr();
  spec.worker_wrap_cmd = p.getWorkerWrapCmd().cStr();
  spec.log_dir = std::move(log_dir);
  return spec;
}

}  // namespace

Allocator::Allocator(asio::io_context& io, fs::path server_dir, DemandFn demand, RecordFn record)
    : io_(io),
      server_dir_(std::move(server_dir)),
      demand_(std::move(demand)),
      record_(std::move(record)),
      timer_(io),
      batch_thread_(std::make_unique<asio::thread_pool>(1)) {}

Allocator::~Allocator() {
  alive_.reset();
  batch_thread_->join();
}

template <typename T>
void Allocator::run_batch(std::function<T()> work, std::function<void(T&)> then) {
  std::weak_ptr<int> alive = alive_;
  asio::io_context* io = &io_;
  asio::post(*batch_thread_, [work = std::move(work), then = std::move(then), alive, io] {
    auto result = std::make_shared<T>(work());
    asio::post(*io, [then, result, alive] {
      if (alive.lock()) then(*result);
    });
  });
}

wire::AllocQueueParams::Reader Allocator::params_of(const Queue& q) const {
  return q.params->getRoot<wire::AllocQueueParams>().asReader();
}

Result<std::unique_ptr<Allocator::Queue>> Allocator::make_queue(wire::AllocQueueParams::Reader p) {
  auto kind = alloc::parse_manager(p.getManager().cStr());
  if (!kind) return kind.error();
  if (p.getTimeLimitMs() == 0) return Error{"an allocation queue needs a positive --time-limit"};
  if (p.getBacklog() == 0) return Error{"--backlog must be at least 1"};
  if (p.getMaxWorkersPerAlloc() == 0) return Error{"--max-workers-per-alloc must be at least 1"};
  if (p.getHqBinary().size() == 0 || p.getServerDir().size() == 0) {
    return Error{"an allocation queue needs the workers' hq binary and server directory"};
  }
  auto q = std::make_unique<Queue>();
  q->kind = *kind;
  // What the workers offer, as far as the options tell before they start.
  if (p.getWorkerCpus().size() > 0 || p.getWorkerResources().size() > 0) {
    ResourceDescriptor d;
    std::vector<std::string> defined;
    if (p.getWorkerCpus().size() > 0) {
      auto cpus = parse_cpu_definition(p.getWorkerCpus().cStr());
      if (!cpus) return Error{"invalid --cpus: " + cpus.message()};
      q->worker_cpus = cpus->size();
      if (auto st = add_definition(d, std::move(*cpus), defined); !st) return Error{st.message()};
    }
    for (auto r : p.getWorkerResources()) {
      auto def = parse_resource_definition(r.cStr());
      if (!def) return Error{"invalid --resource: " + def.message()};
      if (auto st = add_definition(d, std::move(*def), defined); !st) return Error{st.message()};
    }
    // Workers with resources but no --cpus detect their CPUs: they are not known here.
    if (q->worker_cpus != 0) q->shape.resources = std::move(d);
  }
  q->shape.lifetime_ms =
      p.getWorkerTimeLimitMs() != 0 ? p.getWorkerTimeLimitMs() : p.getTimeLimitMs();
  alloc::QueueLimits limits;
  limits.backlog = p.getBacklog();
  limits.max_workers_per_alloc = p.getMaxWorkersPerAlloc();
  if (p.getMaxWorkerCount() != 0) limits.max_worker_count = p.getMaxWorkerCount();
  q->logic = std::make_unique<alloc::AllocationQueue>(limits);
  q->params = std::make_unique<capnp::MallocMessageBuilder>();
  q->params->setRoot(p);
  q->batch = std::make_shared<alloc::BatchSystem>(alloc::make_backend(*kind), runner_);
  return Result<std::unique_ptr<Queue>>(std::move(q));
}

Result<uint32_t> Allocator::add_queue(wire::AllocQueueParams::Reader p) {
  if (stopped_) return Error{"the server is stopping"};
  auto made = make_queue(p);
  if (!made) return made.error();
  std::unique_ptr<Queue> q = std::move(*made);
  q->id = ++last_queue_id_;
  uint32_t id = q->id;
  kj::Array<capnp::word> words = capnp::messageToFlatArray(*q->params);
  kj::ArrayPtr<const kj::byte> bytes = words.asBytes();
  record_([&](journal::schema::Event::Builder e) {
    auto added = e.initAllocQueueAdded();
    added.setQueue(id);
    added.setParams(capnp::Data::Reader(bytes.begin(), bytes.size()));
  });
  queues_.emplace(id, std::move(q));
  spdlog::info("allocation queue {} added ({})", id, p.getManager().cStr());
  if (queues_.size() == 1) arm_tick();
  return id;
}

void Allocator::restore(const std::map<uint32_t, RestoredQueue>& queues, uint32_t max_id) {
  last_queue_id_ = std::max(last_queue_id_, max_id);
  for (const auto& [id, restored] : queues) {
    Result<std::unique_ptr<Queue>> made = Error{"no parameters"};
    Status read = with_queue_params(
        restored.params, [&](wire::AllocQueueParams::Reader p) { made = make_queue(p); });
    if (!read || !made) {
      spdlog::warn("allocation queue {} of the journal is not restored: {}", id,
                   read ? made.message() : read.message());
      continue;
    }
    Queue& q = **made;
    q.id = id;
    if (restored.pause_reason) {
      q.logic->pause(*restored.pause_reason);
      q.paused_journaled = true;
    }
    uint32_t live = 0;
    for (const RestoredAllocation& r : restored.allocations) {
      alloc::Allocation a;
      a.id = r.id;
      a.workers = r.workers;
      a.submitted_at = r.submit_time;
      a.detail = r.detail;
      if (r.end_time) {
        a.state = r.failed ? alloc::AllocationState::kFailed : alloc::AllocationState::kFinished;
        a.ended_at = r.end_time;
        q.ended_journaled.insert(r.id);
      } else {
        ++live;
      }
      q.logic->restore(std::move(a));
      if (!r.log_dir.empty()) q.log_dirs[r.id] = r.log_dir;
    }
    q.next_dir = static_cast<uint32_t>(restored.allocations.size());
    spdlog::info("allocation queue {} restored: {} allocation(s) to find again in the batch system",
                 id, live);
    queues_.emplace(id, std::move(*made));
  }
  if (!queues_.empty()) arm_tick();
}

void Allocator::journal_changes(Queue& q) {
  const uint32_t id = q.id;
  for (const auto& [aid, a] : q.logic->allocations()) {
    if (!a.ended_at || q.ended_journaled.contains(aid)) continue;
    q.ended_journaled.insert(aid);
    record_([&](journal::schema::Event::Builder e) {
      auto ended = e.initAllocationEnded();
      ended.setQueue(id);
      ended.setAllocation(aid);
      ended.setFailed(a.state == alloc::AllocationState::kFailed);
      ended.setDetail(a.detail);
    });
  }
  if (q.logic->paused() != q.paused_journaled) {
    q.paused_journaled = q.logic->paused();
    record_([&](journal::schema::Event::Builder e) {
      if (q.paused_journaled) {
        auto paused = e.initAllocQueuePaused();
        paused.setQueue(id);
        paused.setReason(q.logic->pause_reason());
      } else {
        e.initAllocQueueResumed().setQueue(id);
      }
    });
  }
}

Status Allocator::pause(uint32_t id) {
  auto it = queues_.find(id);
  if (it == queues_.end()) return Status::error(fmt::format("allocation queue {} not found", id));
  it->second->logic->pause("paused by `hq alloc pause`");
  journal_changes(*it->second);
  return Status::ok();
}

Status Allocator::resume(uint32_t id) {
  auto it = queues_.find(id);
  if (it == queues_.end()) return Status::error(fmt::format("allocation queue {} not found", id));
  it->second->logic->resume();
  journal_changes(*it->second);
  return Status::ok();
}

void Allocator::remove(uint32_t id, bool force, std::function<void(const Status&)> done) {
  auto it = queues_.find(id);
  if (it == queues_.end() || it->second->removing) {
    return done(Status::error(fmt::format("allocation queue {} not found", id)));
  }
  Queue& q = *it->second;
  if (!force) {
    for (const auto& [aid, a] : q.logic->allocations()) {
      if (a.connected > 0) {
        return done(Status::error(fmt::format(
            "allocation queue {} has workers connected (allocation {}); `hq alloc remove "
            "--force {}` cancels its allocations with them",
            id, aid, id)));
      }
    }
  }
  q.removing = true;
  alloc::Decisions d = q.logic->remove();
  cancel(q, std::move(d.cancel), [this, id, done](const Status& st) {
    record_([id](journal::schema::Event::Builder e) { e.initAllocQueueRemoved().setQueue(id); });
    queues_.erase(id);
    for (auto w = worker_alloc_.begin(); w != worker_alloc_.end();) {
      w = w->second.first == id ? worker_alloc_.erase(w) : std::next(w);
    }
    spdlog::info("allocation queue {} removed", id);
    done(st);
  });
}

std::vector<uint32_t> Allocator::queue_ids() const {
  std::vector<uint32_t> out;
  for (const auto& [id, q] : queues_) {
    if (!q->removing) out.push_back(id);
  }
  return out;
}

void Allocator::fill(capnp::List<wire::AllocQueueSummary>::Builder out,
                     const std::vector<uint32_t>& ids) const {
  for (uint32_t i = 0; i < ids.size(); ++i) {
    const Queue& q = *queues_.at(ids[i]);
    auto s = out[i];
    s.setId(q.id);
    s.setParams(params_of(q));
    s.setState(q.logic->paused() ? "paused" : "active");
    if (q.logic->paused()) s.setPauseReason(q.logic->pause_reason());
    s.setLastError(q.logic->last_error());
    s.setDemand(q.demand);
    auto unfit = s.initUnfit(static_cast<unsigned>(q.unfit.size()));
    for (uint32_t k = 0; k < q.unfit.size(); ++k) unfit.set(k, q.unfit[k]);
    const auto& allocations = q.logic->allocations();
    auto list = s.initAllocations(static_cast<unsigned>(allocations.size()));
    uint32_t k = 0;
    for (const auto& [aid, a] : allocations) {
      auto o = list[k++];
      o.setId(aid);
      o.setState(std::string(alloc::state_name(a.state)));
      o.setWorkers(a.workers);
      o.setDetail(a.detail);
      o.setSubmitTime(a.submitted_at);
      o.setStartTime(a.started_at.value_or(0));
      o.setEndTime(a.ended_at.value_or(0));
      if (auto d = q.log_dirs.find(aid); d != q.log_dirs.end()) o.setLogDir(d->second);
      if (auto w = q.worker_ids.find(aid); w != q.worker_ids.end()) {
        auto ws = o.initWorkerIds(static_cast<unsigned>(w->second.size()));
        for (uint32_t j = 0; j < w->second.size(); ++j) ws.set(j, w->second[j]);
      }
    }
  }
}

void Allocator::on_worker_connected(WorkerId worker, const std::string& allocation) {
  int64_t now = unix_millis_now();
  for (auto& [id, q] : queues_) {
    if (!q->logic->allocations().contains(allocation)) continue;
    q->logic->on_worker_connected(allocation, now);
    q->worker_ids[allocation].push_back(worker);
    worker_alloc_[worker] = {id, allocation};
    spdlog::info("worker {} belongs to allocation {} of queue {}", worker, allocation, id);
    return;
  }
}

void Allocator::on_worker_lost(WorkerId worker) {
  auto it = worker_alloc_.find(worker);
  if (it == worker_alloc_.end()) return;
  auto q = queues_.find(it->second.first);
  if (q != queues_.end()) q->second->logic->on_worker_lost(it->second.second);
  worker_alloc_.erase(it);
}

void Allocator::stop(bool cancel) {
  if (stopped_) return;
  stopped_ = true;
  timer_.cancel();
  if (!cancel) return;
  // The workers are told to stop by the server; what is left in the batch system goes too.
  for (auto& [id, q] : queues_) {
    std::vector<std::string> ids = q->logic->ids_to_query();
    if (ids.empty()) continue;
    std::shared_ptr<alloc::BatchSystem> batch = q->batch;
    asio::post(*batch_thread_, [batch, ids] {
      if (Status st = batch->cancel(ids); !st) {
        spdlog::warn("canceling allocations at stop: {}", st.message());
      }
    });
  }
}

void Allocator::arm_tick() {
  timer_.expires_after(kTick);
  timer_.async_wait([this, alive = std::weak_ptr<int>(alive_)](const std::error_code& ec) {
    if (ec || !alive.lock() || stopped_) return;
    tick();
    if (!queues_.empty()) arm_tick();
  });
}

uint32_t Allocator::demand_of(Queue& q) {
  sched::AllocationDemand d = demand_(q.shape);
  q.unfit = std::move(d.unfit);
  uint64_t workers = d.whole_workers;
  if (q.worker_cpus != 0) {
    const uint64_t per_worker = uint64_t{q.worker_cpus} * kAmountUnit;
    workers += d.cpu_amount / per_worker;
    // The CPUs left over ask for one more worker when they would use --min-utilization of it.
    const uint64_t rest = d.cpu_amount % per_worker;
    const double utilization = static_cast<double>(rest) / static_cast<double>(per_worker);
    if (rest > 0 && utilization >= params_of(q).getMinUtilization()) ++workers;
  } else {
    // The workers' CPUs are not known: each waiting task may need a worker of its own (the
    // queue's limits bound what that submits).
    workers = d.tasks;
  }
  return static_cast<uint32_t>(std::min<uint64_t>(workers, UINT32_MAX));
}

void Allocator::tick() {
  int64_t now = unix_millis_now();
  for (auto& [id, holder] : queues_) {
    Queue& q = *holder;
    if (q.busy || q.removing) continue;
    if (now - q.last_query >= kRefresh.count() && !q.logic->ids_to_query().empty()) {
      query(q);
      continue;
    }
    q.demand = demand_of(q);
    alloc::Decisions d = q.logic->plan(q.demand, now);
    if (!d.cancel.empty()) {
      cancel(q, std::move(d.cancel), [](const Status& st) {
        if (!st) spdlog::warn("canceling idle allocations: {}", st.message());
      });
    }
    if (!d.submit.empty()) submit(q, d.submit);
  }
}

void Allocator::submit(Queue& q, const std::vector<uint32_t>& workers) {
  struct Submitted {
    uint32_t workers;
    std::string log_dir;
    Result<std::string> id = Error{"not submitted"};
  };
  std::vector<Submitted> plan;
  for (uint32_t n : workers) {
    // After a restart, numbers that failed submissions took may be there already.
    fs::path dir;
    do {
      dir = alloc_dir_path(server_dir_, q.id, ++q.next_dir);
    } while (fs::exists(dir));
    plan.push_back({n, dir.string()});
  }
  std::vector<alloc::AllocationSpec> specs;
  for (const Submitted& s : plan) specs.push_back(spec_of(params_of(q), s.workers, s.log_dir));
  q.busy = true;
  uint32_t id = q.id;
  std::shared_ptr<alloc::BatchSystem> batch = q.batch;
  run_batch<std::vector<Submitted>>(
      [batch, specs, plan]() mutable {
        for (size_t i = 0; i < plan.size(); ++i) plan[i].id = batch->submit(specs[i]);
        return plan;
      },
      [this, id](std::vector<Submitted>& done) {
        auto it = queues_.find(id);
        if (it == queues_.end()) return;
        Queue& q = *it->second;
        q.busy = false;
        int64_t now = unix_millis_now();
        for (Submitted& s : done) {
          if (s.id) {
            spdlog::info("queue {}: allocation {} submitted ({} workers)", id, *s.id, s.workers);
            q.log_dirs[*s.id] = s.log_dir;
            q.logic->on_submitted(*s.id, s.workers, now);
            record_([&](journal::schema::Event::Builder e) {
              auto submitted = e.initAllocationSubmitted();
              submitted.setQueue(id);
              submitted.setAllocation(*s.id);
              submitted.setWorkers(s.workers);
              submitted.setLogDir(s.log_dir);
            });
          } else {
            spdlog::warn("queue {}: submitting an allocation failed: {}", id, s.id.message());
            q.logic->on_submit_failed(s.workers, s.id.message(), now);
          }
        }
        journal_changes(q);
        // A queue removed meanwhile cancels what was just submitted.
        if (q.removing) {
          std::vector<std::string> ids = q.logic->ids_to_query();
          cancel(q, ids, [](const Status&) {});
        }
      });
}

void Allocator::query(Queue& q) {
  q.busy = true;
  q.last_query = unix_millis_now();
  uint32_t id = q.id;
  std::shared_ptr<alloc::BatchSystem> batch = q.batch;
  std::vector<std::string> ids = q.logic->ids_to_query();
  using Answer = Result<std::map<std::string, alloc::AllocationStatus>>;
  run_batch<Answer>([batch, ids] { return batch->query(ids); },
                    [this, id](Answer& answer) {
                      auto it = queues_.find(id);
                      if (it == queues_.end()) return;
                      Queue& q = *it->second;
                      q.busy = false;
                      if (!answer) {
                        spdlog::warn("queue {}: status query failed: {}", id, answer.message());
                        return;
                      }
                      q.logic->on_status(*answer, unix_millis_now());
                      journal_changes(q);
                    });
}

void Allocator::cancel(Queue& q, std::vector<std::string> ids,
                       std::function<void(const Status&)> done) {
  if (ids.empty()) return done(Status::ok());
  std::shared_ptr<alloc::BatchSystem> batch = q.batch;
  q.busy = true;
  uint32_t id = q.id;
  run_batch<Status>([batch, ids] { return batch->cancel(ids); },
                    [this, id, done](Status& st) {
                      if (auto it = queues_.find(id); it != queues_.end()) {
                        it->second->busy = false;
                      }
                      done(st);
                    });
}

}  // namespace hq::server
