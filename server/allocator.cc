#include "server/allocator.h"

#include <algorithm>

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

Allocator::Allocator(asio::io_context& io, fs::path server_dir, DemandFn demand)
    : io_(io),
      server_dir_(std::move(server_dir)),
      demand_(std::move(demand)),
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

Result<uint32_t> Allocator::add_queue(wire::AllocQueueParams::Reader p) {
  if (stopped_) return Error{"the server is stopping"};
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
  q->id = ++last_queue_id_;
  uint32_t id = q->id;
  queues_.emplace(id, std::move(q));
  spdlog::info("allocation queue {} added ({})", id, p.getManager().cStr());
  if (queues_.size() == 1) arm_tick();
  return id;
}

Status Allocator::pause(uint32_t id) {
  auto it = queues_.find(id);
  if (it == queues_.end()) return Status::error(fmt::format("allocation queue {} not found", id));
  it->second->logic->pause("paused by `hq alloc pause`");
  return Status::ok();
}

Status Allocator::resume(uint32_t id) {
  auto it = queues_.find(id);
  if (it == queues_.end()) return Status::error(fmt::format("allocation queue {} not found", id));
  it->second->logic->resume();
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

void Allocator::on_worker_connected(WorkerId worker, const std::string& group) {
  int64_t now = unix_millis_now();
  for (auto& [id, q] : queues_) {
    if (!q->logic->allocations().contains(group)) continue;
    q->logic->on_worker_connected(group, now);
    q->worker_ids[group].push_back(worker);
    worker_alloc_[worker] = {id, group};
    spdlog::info("worker {} belongs to allocation {} of queue {}", worker, group, id);
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

void Allocator::stop() {
  if (stopped_) return;
  stopped_ = true;
  timer_.cancel();
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
    workers += (d.cpu_amount + per_worker - 1) / per_worker;
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
    plan.push_back({n, alloc_dir_path(server_dir_, q.id, ++q.next_dir).string()});
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
          } else {
            spdlog::warn("queue {}: submitting an allocation failed: {}", id, s.id.message());
            q.logic->on_submit_failed(s.workers, s.id.message(), now);
          }
        }
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
