// The server's side of the durability contract (DESIGN.md): records every state change in the
// journal as the scheduler accepts it, holds back what clients see until it is synced, and
// rebuilds the state from the journal at start.
//
// Why records follow the scheduler rather than precede it: the scheduler decides whether a report
// changes anything (a stale or duplicate report does not), and only changes are recorded, in the
// order they were applied. Replaying them in that order rebuilds the same state. Workers may act
// on a change before it is synced (a finished task frees its CPUs at once), but no client sees
// it before: every reply goes through respond(), which waits for the records appended before it.
// A crash in between loses only changes nobody was told about; a task whose end was lost runs
// again, and no client ever saw it finished.

#include <algorithm>
#include <chrono>
#include <tuple>
#include <utility>

#include <capnp/message.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "net/framing.h"
#include "server/server_state.h"

namespace hq::server {

namespace schema = journal::schema;

// --- Start: open and replay -------------------------------------------------------------------

Status Server::open_journal() {
  if (options_.no_journal) return Status::ok();
  journal_path_ =
      options_.journal.empty() ? journal_dir_path(options_.server_dir) : options_.journal;
  journal::Options options;
  options.post = [this](std::function<void()> fn) { asio::post(io_, std::move(fn)); };
  options.health = [this](Status health) { on_journal_health(health); };
  auto opened = journal::Journal::open(journal_path_, std::move(options));
  if (!opened) return Status::error("cannot open the journal: " + opened.message());
  journal_ = std::move(*opened);

  const auto begin = std::chrono::steady_clock::now();
  Restore restore(scheduler_, jobs_);
  auto stats = journal_->replay(
      {}, [&restore](journal::Seq seq, schema::Event::Reader event) { restore.apply(seq, event); });
  if (!stats) return Status::error("cannot replay the journal: " + stats.message());
  if (!restore.status()) {
    return Status::error("cannot restore the journal: " + restore.status().message());
  }
  restore.finish(/*reattach=*/true);
  reattach_expected_ = restore.connected_workers();
  allocator_->restore(restore.alloc_queues(), restore.max_queue_id());
  forgotten_.insert(restore.forgotten().begin(), restore.forgotten().end());
  for (auto& [id, job] : jobs_) {
    ++restored_jobs_;
    restored_tasks_ += scheduler_.counts(id).total();
  }
  const auto& recovery = journal_->recovery();
  last_job_id_ = std::max({last_job_id_, restore.max_job_id(), recovery.max_job_id});
  last_worker_id_ = std::max(last_worker_id_, recovery.max_worker_id);
  replay_ms_ = static_cast<uint32_t>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                         std::chrono::steady_clock::now() - begin)
                                         .count());
  // The first line of the log: what came back, and how long it took.
  spdlog::info("restored {} job(s) and {} task(s) from the journal '{}' in {} ms ({} events)",
               restored_jobs_, restored_tasks_, journal_path_.string(), replay_ms_, stats->events);
  for (const auto& line : recovery.damage) spdlog::warn("journal damage: {}", line);
  for (const auto& line : stats->damage) spdlog::warn("journal damage: {}", line);
  return Status::ok();
}

// --- Recording --------------------------------------------------------------------------------

namespace {

// How long a record nobody waits for may stay unsynced. A crash loses at most this much of the
// task starts and ends; no client has seen them, so the tasks may run again (a worker that
// reattaches presents the ends again). Each sync costs the server about 0.3 ms of CPU here:
// 20 ms made it a third of the server's time per `/bin/true` task (docs/benchmarks.md).
constexpr auto kLazyCommit = std::chrono::milliseconds(100);

}  // namespace

void Server::record(journal::EventMessage& event) {
  if (!journal_ || journal_broken_) return;
  flush_task_batches();
  auto seq = journal_->append(event.message());
  if (!seq) return fail_journal(seq.message());
  appended_seq_ = *seq;
  arm_lazy_commit();
}

void Server::record_task(TaskRecord kind, WorkerId worker, TaskKey key, int64_t time) {
  if (!journal_ || journal_broken_) return;
  pending_tasks_[static_cast<int>(kind)].push_back({key, time, worker});
  arm_lazy_commit();
}

void Server::flush_task_batches() {
  auto clear = [this] {
    for (auto& tasks : pending_tasks_) tasks.clear();
  };
  if (!journal_ || journal_broken_) return clear();
  if (pending_tasks_[0].empty() && pending_tasks_[1].empty()) return;
  // One taskTimes record per job and worker: a task started and finished since the last flush
  // is one entry of `ran`, the others are entries of `started` or `finished`.
  struct Item {
    PendingTask t;
    int kind;
  };
  std::vector<Item> items;
  items.reserve(pending_tasks_[0].size() + pending_tasks_[1].size());
  for (int kind = 0; kind < 2; ++kind) {
    for (const PendingTask& t : pending_tasks_[kind]) items.push_back({t, kind});
  }
  clear();
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return std::tie(a.t.key.job, a.t.worker, a.t.key.task, a.t.key.instance, a.kind) <
           std::tie(b.t.key.job, b.t.worker, b.t.key.task, b.t.key.instance, b.kind);
  });
  using journal::TaskTimeEntry;
  using journal::TaskTimesList;
  std::vector<TaskTimeEntry> lists[3];  // by TaskTimesList
  for (size_t begin = 0; begin < items.size();) {
    const JobId job = items[begin].t.key.job;
    const WorkerId worker = items[begin].t.worker;
    int64_t base = 0;
    for (auto& list : lists) list.clear();
    size_t end = begin;
    for (; end < items.size() && items[end].t.key.job == job && items[end].t.worker == worker;
         ++end) {
      const Item& it = items[end];
      base = std::max(base, it.t.time);
      if (it.kind == 1) {
        auto& ran = lists[static_cast<int>(TaskTimesList::kRan)];
        if (end > begin && items[end - 1].kind == 0 && items[end - 1].t.key == it.t.key) {
          lists[static_cast<int>(TaskTimesList::kStarted)].pop_back();
          ran.push_back({it.t.key.task, it.t.key.instance, items[end - 1].t.time, it.t.time});
        } else {
          lists[static_cast<int>(TaskTimesList::kFinished)].push_back(
              {it.t.key.task, it.t.key.instance, 0, it.t.time});
        }
      } else {
        lists[static_cast<int>(TaskTimesList::kStarted)].push_back(
            {it.t.key.task, it.t.key.instance, it.t.time, 0});
      }
    }
    journal::EventMessage message(base);
    auto record = message.event().initTaskTimes();
    record.setJob(job);
    record.setWorker(worker);
    auto set = [&](TaskTimesList which, auto setter) {
      const auto& list = lists[static_cast<int>(which)];
      if (list.empty()) return;
      const std::string bytes = journal::pack_task_times(list, which, base);
      (record.*
       setter)(capnp::Data::Reader(reinterpret_cast<const kj::byte*>(bytes.data()), bytes.size()));
    };
    set(TaskTimesList::kStarted, &journal::schema::TaskTimes::Builder::setStarted);
    set(TaskTimesList::kRan, &journal::schema::TaskTimes::Builder::setRan);
    set(TaskTimesList::kFinished, &journal::schema::TaskTimes::Builder::setFinished);
    auto seq = journal_->append(message.message());
    if (!seq) return fail_journal(seq.message());
    appended_seq_ = *seq;
    begin = end;
  }
}

bool Server::all_durable() const {
  if (!journal_) return true;
  for (const auto& tasks : pending_tasks_) {
    if (!tasks.empty()) return false;
  }
  return durable_seq_ >= appended_seq_;
}

void Server::arm_lazy_commit() {
  if (lazy_commit_armed_ || stopping_) return;
  lazy_commit_armed_ = true;
  lazy_commit_timer_.expires_after(kLazyCommit);
  lazy_commit_timer_.async_wait([this](const std::error_code& error) {
    lazy_commit_armed_ = false;
    if (!error) commit_journal();
  });
}

void Server::commit_now() {
  if (commit_posted_) return;
  commit_posted_ = true;
  // After the events of this loop iteration: they share the commit.
  asio::post(io_, [this] {
    commit_posted_ = false;
    commit_journal();
  });
}

void Server::commit_journal() {
  if (!journal_ || journal_broken_) return;
  flush_task_batches();
  if (appended_seq_ <= committed_seq_) return;
  committed_seq_ = appended_seq_;
  const journal::Seq upto = appended_seq_;
  journal_->commit([this, upto](Status status) { on_commit(upto, status); });
}

void Server::on_commit(journal::Seq upto, const Status& status) {
  if (!status) return fail_journal(status.message());
  durable_seq_ = std::max(durable_seq_, upto);
  while (!durable_waiters_.empty() && durable_waiters_.front().first <= durable_seq_) {
    auto fn = std::move(durable_waiters_.front().second);
    durable_waiters_.pop_front();
    fn(Status::ok());
  }
}

void Server::on_journal_health(const Status& health) {
  if (journal_broken_) return;
  if (!health) {
    const bool first = journal_status_.is_ok();
    journal_status_ = Status::error(fmt::format(
        "the journal '{}' cannot store changes ({}); the server retries by itself (free space "
        "on its disk); until then it refuses changes, shows no state it has not stored and gives "
        "workers no task it has not reserved",
        journal_path_.string(), health.message()));
    if (first) spdlog::critical("{}", journal_status_.message());
    return;
  }
  journal_status_ = Status::ok();
  spdlog::warn("the journal '{}' stores changes again: serving", journal_path_.string());
  // Replies and worker messages held meanwhile go out as their commits complete; the waiters
  // whose jobs completed meanwhile are answered once that is stored too.
  notify_waiters(std::exchange(deferred_completions_, {}));
  request_schedule();
}

void Server::fail_journal(const std::string& error) {
  if (journal_broken_) return;
  journal_broken_ = true;
  journal_status_ = Status::error(fmt::format(
      "the journal '{}' cannot store changes ({}); the server refuses new submissions and shows "
      "no state it could not store: restart it once the disk is fixed",
      journal_path_.string(), error));
  spdlog::critical("{}", journal_status_.message());
  auto waiters = std::move(durable_waiters_);
  durable_waiters_.clear();
  for (auto& [seq, fn] : waiters) fn(journal_status_);
}

void Server::when_durable(std::function<void(const Status&)> fn) {
  if (journal_broken_) return fn(journal_status_);
  if (all_durable()) return fn(Status::ok());
  flush_task_batches();
  if (journal_broken_) return fn(journal_status_);
  durable_waiters_.emplace_back(appended_seq_, std::move(fn));
  commit_now();  // somebody waits
}

void Server::respond(net::Connection& c, capnp::MessageBuilder& reply) {
  auto frame = std::make_shared<kj::Array<capnp::word>>(net::encode(reply));
  if (const size_t bytes = frame->size() * sizeof(capnp::word); bytes > net::kMaxMessageBytes) {
    // Answers are bounded where they are built (task lists come in pages): a bug, not the
    // client's fault, but the client hears of it instead of losing its connection.
    spdlog::error("an answer of {} bytes exceeds the {} byte message limit", bytes,
                  net::kMaxMessageBytes);
    return reply_error(c, fmt::format("the answer ({} bytes) exceeds the {} byte message limit; "
                                      "narrow the request",
                                      bytes, net::kMaxMessageBytes));
  }
  if (!journal_broken_ && all_durable()) return c.send_frame(std::move(*frame));
  // While the journal fails, a reply that shows unstored state is refused at once, with why.
  if (!journal_status_) return reply_error(c, journal_status_.message());
  when_durable([this, frame,
                weak = std::weak_ptr<net::Connection>(c.shared_from_this())](const Status& status) {
    auto connection = weak.lock();
    if (!connection) return;
    if (!status) return reply_error(*connection, status.message());
    connection->send_frame(std::move(*frame));
  });
}

void Server::reserve_assigned(JobId job) {
  if (!journal_) return;
  const uint32_t cursor = scheduler_.fresh_cursor(job);
  uint32_t& reserved = reserved_[job];
  if (cursor <= reserved) return;
  // Far enough ahead that a sync is needed once per many passes, not at every one.
  const uint64_t ahead = std::max<uint64_t>(1024, cursor / 2);
  reserved = static_cast<uint32_t>(
      std::min<uint64_t>(scheduler_.counts(job).total(), uint64_t{cursor} + ahead));
  journal::EventMessage event(unix_millis_now());
  auto e = event.event().initJobReserved();
  e.setJob(job);
  e.setTasks(reserved);
  record(event);
  must_sync_seq_ = appended_seq_;
}

void Server::record_requeued(const std::vector<TaskKey>& tasks) {
  if (!journal_) return;
  const int64_t now = unix_millis_now();
  for (const TaskKey& key : tasks) {
    journal::EventMessage message(now);
    auto e = message.event().initTaskRequeued();
    e.setJob(key.job);
    e.setTask(key.task);
    e.setInstance(key.instance);
    e.setCrashCounter(scheduler_.crash_count(key.job, key.task));
    record(message);
  }
  // The task must not run again as its new instance before the journal knows that instance.
  if (!tasks.empty()) must_sync_seq_ = appended_seq_;
}

// --- hq journal prune / flush -----------------------------------------------------------------

void Server::handle_journal_prune(net::Connection& c) {
  if (!journal_) return reply_error(c, "the server runs without a journal (--no-journal)");
  if (!journal_status_) return reply_error(c, journal_status_.message());
  // Records still pending go before the range deletions, which then cover them.
  flush_task_batches();
  IdSetBuilder complete;
  uint32_t pruned = 0;
  // Completed jobs and forgotten ones, in increasing id order (the builder's contract).
  auto known = jobs_.begin();
  auto forgotten = forgotten_.begin();
  while (known != jobs_.end() || forgotten != forgotten_.end()) {
    if (forgotten == forgotten_.end() || (known != jobs_.end() && known->first < *forgotten)) {
      if (scheduler_.counts(known->first).complete()) {
        complete.add(known->first);
        ++pruned;
      }
      ++known;
    } else {
      complete.add(*forgotten++);
      ++pruned;
    }
  }
  // Sizes are measured on the journal's maintenance thread (a directory walk waits on the disk):
  // `before` ahead of the prune's commit and compaction, which run after it in order.
  auto before = std::make_shared<uint64_t>(0);
  journal_->measure([before](uint64_t size) { *before = size; });
  Status st = pruned ? journal_->prune(std::move(complete).build()) : Status::ok();
  // Server and worker events stay: the serverStarted records mark the restarts that replay
  // needs (they are few, one per run and worker connection).
  if (!st) return reply_error(c, "cannot prune the journal: " + st.message());
  forgotten_.clear();  // their records went with this prune
  spdlog::info("pruning the journal: {} completed job(s)", pruned);
  auto weak = std::weak_ptr<net::Connection>(c.shared_from_this());
  committed_seq_ = appended_seq_;
  journal_->commit([this, weak, pruned, before, upto = appended_seq_](Status committed) {
    on_commit(upto, committed);
    if (!committed) {
      if (auto connection = weak.lock()) reply_error(*connection, committed.message());
      return;
    }
    // Compacted, so that the space is back on the file system when the client hears of it.
    journal_->compact([this, weak, pruned, before](Status compacted) {
      auto connection = weak.lock();
      if (!connection) return;
      if (!compacted) return reply_error(*connection, "journal compaction: " + compacted.message());
      journal_->measure([weak, pruned, before](uint64_t after) {
        auto connection = weak.lock();
        if (!connection) return;
        capnp::MallocMessageBuilder reply;
        auto r = reply.initRoot<wire::ClientResponse>().initJournalPruned();
        r.setPrunedJobs(pruned);
        r.setSizeBefore(*before);
        r.setSizeAfter(after);
        connection->send(reply);
      });
    });
  });
}

void Server::handle_journal_flush(net::Connection& c) {
  if (!journal_) return reply_error(c, "the server runs without a journal (--no-journal)");
  if (!journal_status_) return reply_error(c, journal_status_.message());
  auto weak = std::weak_ptr<net::Connection>(c.shared_from_this());
  journal_->flush([this, weak](Status flushed) {
    auto connection = weak.lock();
    if (!connection) return;
    if (!flushed) return reply_error(*connection, "journal flush: " + flushed.message());
    capnp::MallocMessageBuilder reply;
    reply.initRoot<wire::ClientResponse>().setOk();
    connection->send(reply);
  });
}

}  // namespace hq::server
