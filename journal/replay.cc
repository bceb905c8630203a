#include "journal/replay.h"

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "journal/keys.h"

namespace hq::journal {
namespace {

// Emits decoded events in order and keeps the stats.
class Emitter {
 public:
  Emitter(const ReplayFn& fn, ReplayStats& stats) : fn_(fn), stats_(stats) {}

  void emit(Seq seq, std::optional<JobId> job, const rocksdb::Slice& value) {
    auto event = decoder_.decode(value.data(), value.size());
    if (!event) {
      stats_.damage.push_back(fmt::format("seq {}{}: {}", seq, where(job), event.message()));
      return;
    }
    if (seq <= stats_.last_seq && stats_.events > 0) {
      stats_.damage.push_back(fmt::format("seq {}{} comes after seq {}: events out of order", seq,
                                          where(job), stats_.last_seq));
    }
    fn_(seq, *event);
    if (stats_.events++ == 0) stats_.first_seq = seq;
    stats_.last_seq = std::max(stats_.last_seq, seq);
    stats_.bytes += value.size();
  }

  static std::string where(std::optional<JobId> job) {
    return job ? fmt::format(" (job {})", *job) : std::string();
  }

 private:
  const ReplayFn& fn_;
  ReplayStats& stats_;
  EventDecoder decoder_;
};

// Skips keys of the wrong size, reporting them.
void skip_bad_keys(rocksdb::Iterator& it, size_t size, const char* family, ReplayStats& stats) {
  while (it.Valid() && it.key().size() != size) {
    stats.damage.push_back(
        fmt::format("{} key of {} bytes skipped: not a journal key", family, it.key().size()));
    it.Next();
  }
}

void report_stop(rocksdb::Iterator& it, const char* family, ReplayStats& stats) {
  if (!it.status().ok()) {
    stats.damage.push_back(
        fmt::format("reading the {} events stopped early: {}", family, it.status().ToString()));
  }
}

// Events of one job, in seq order, for the merge of replay_all().
class Source {
 public:
  explicit Source(JobId job) : job_(job) {}
  virtual ~Source() = default;
  JobId job() const { return job_; }
  virtual bool valid() const = 0;
  virtual Seq seq() const = 0;
  virtual rocksdb::Slice value() const = 0;
  virtual void next() = 0;

 private:
  JobId job_;
};

// Events copied out of the database: a small job, or the first events of a large one.
class Buffered final : public Source {
 public:
  using Source::Source;
  void add(Seq seq, const rocksdb::Slice& value) {
    arena_.append(value.data(), value.size());
    ends_.emplace_back(seq, arena_.size());
  }
  size_t size() const { return ends_.size(); }
  bool valid() const override { return next_ < ends_.size(); }
  Seq seq() const override { return ends_[next_].first; }
  rocksdb::Slice value() const override {
    size_t begin = next_ == 0 ? 0 : ends_[next_ - 1].second;
    return rocksdb::Slice(arena_.data() + begin, ends_[next_].second - begin);
  }
  void next() override { ++next_; }

 private:
  std::string arena_;
  std::vector<std::pair<Seq, size_t>> ends_;  // seq, end of its value in arena_
  size_t next_ = 0;
};

// The rest of a large job, read in place by an iterator of its own.
class Streamed final : public Source {
 public:
  Streamed(JobId job, std::unique_ptr<rocksdb::Iterator> it, Seq from, ReplayStats& stats)
      : Source(job), it_(std::move(it)), from_(from), stats_(stats) {
    settle();
  }
  bool valid() const override { return valid_; }
  Seq seq() const override { return get_be64(it_->key().data() + 4); }
  rocksdb::Slice value() const override { return it_->value(); }
  void next() override {
    it_->Next();
    settle();
  }

 private:
  // Moves to the next event of the job at or after `from_`, or becomes invalid.
  void settle() {
    for (;;) {
      skip_bad_keys(*it_, kJobKeySize, "job", stats_);
      valid_ = it_->Valid() && get_be32(it_->key().data()) == job();
      if (!valid_ || seq() >= from_) break;
      it_->Next();
    }
    if (!valid_) report_stop(*it_, "job", stats_);
  }

  std::unique_ptr<rocksdb::Iterator> it_;
  Seq from_;
  ReplayStats& stats_;
  bool valid_ = false;
};

// Jobs with more events than this are read in place rather than copied.
constexpr size_t kBufferedEvents = 4096;

}  // namespace

Result<ReplayStats> replay_job_events(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* jobs_cf,
                                      JobId job, Seq from, const rocksdb::ReadOptions& read,
                                      const ReplayFn& fn) {
  ReplayStats stats;
  if (!jobs_cf) return stats;
  Emitter emitter(fn, stats);
  std::unique_ptr<rocksdb::Iterator> it(db.NewIterator(read, jobs_cf));
  for (it->Seek(job_key(job, from)); it->Valid(); it->Next()) {
    skip_bad_keys(*it, kJobKeySize, "job", stats);
    if (!it->Valid() || get_be32(it->key().data()) != job) break;
    emitter.emit(get_be64(it->key().data() + 4), job, it->value());
  }
  report_stop(*it, "job", stats);
  return stats;
}

Result<ReplayStats> replay_all_events(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* jobs_cf,
                                      rocksdb::ColumnFamilyHandle* global_cf, Seq from,
                                      const rocksdb::ReadOptions& read, const ReplayFn& fn) {
  ReplayStats stats;
  Emitter emitter(fn, stats);
  std::unique_ptr<rocksdb::Iterator> global, jobs;
  if (global_cf) {
    global.reset(db.NewIterator(read, global_cf));
    global->Seek(global_key(from));
    skip_bad_keys(*global, kGlobalKeySize, "global", stats);
  }
  if (jobs_cf) {
    jobs.reset(db.NewIterator(read, jobs_cf));
    jobs->SeekToFirst();
    skip_bad_keys(*jobs, kJobKeySize, "job", stats);
  }
  auto later = [](const std::unique_ptr<Source>& a, const std::unique_ptr<Source>& b) {
    return a->seq() > b->seq();
  };
  std::vector<std::unique_ptr<Source>> heap;  // min-heap of the jobs read so far, by next seq
  auto push = [&](std::unique_ptr<Source> source) {
    if (!source->valid()) return;
    heap.push_back(std::move(source));
    std::push_heap(heap.begin(), heap.end(), later);
  };
  for (;;) {
    // Jobs are numbered in submission order, so no job after the next one has an event before
    // the next one's first event: everything read so far that comes earlier can go out.
    const bool more_jobs = jobs && jobs->Valid();
    const Seq bound = more_jobs ? get_be64(jobs->key().data() + 4) : kNoSeq;
    for (;;) {
      const Seq g = global && global->Valid() ? get_be64(global->key().data()) : kNoSeq;
      const Seq h = heap.empty() ? kNoSeq : heap.front()->seq();
      const Seq next = std::min(g, h);
      if (next == kNoSeq || (more_jobs && next >= bound)) break;
      if (g < h) {
        emitter.emit(g, std::nullopt, global->value());
        global->Next();
        skip_bad_keys(*global, kGlobalKeySize, "global", stats);
        continue;
      }
      std::pop_heap(heap.begin(), heap.end(), later);
      Source& source = *heap.back();
      emitter.emit(h, source.job(), source.value());
      source.next();
      if (source.valid()) {
        std::push_heap(heap.begin(), heap.end(), later);
      } else {
        heap.pop_back();
      }
    }
    if (!more_jobs) break;
    // The next job: copied when small; else its first events copied, and the rest read in place
    // by an iterator of its own while the main one skips to the job after it.
    const JobId job = get_be32(jobs->key().data());
    auto head = std::make_unique<Buffered>(job);
    while (jobs->Valid() && get_be32(jobs->key().data()) == job) {
      if (head->size() == kBufferedEvents) break;
      const Seq seq = get_be64(jobs->key().data() + 4);
      if (seq >= from) head->add(seq, jobs->value());
      jobs->Next();
      skip_bad_keys(*jobs, kJobKeySize, "job", stats);
    }
    const bool large = jobs->Valid() && get_be32(jobs->key().data()) == job;
    if (large) {
      std::unique_ptr<rocksdb::Iterator> rest(db.NewIterator(read, jobs_cf));
      rest->Seek(jobs->key());
      push(std::make_unique<Streamed>(job, std::move(rest), from, stats));
      jobs->Seek(job_prefix_after(job));
      skip_bad_keys(*jobs, kJobKeySize, "job", stats);
    }
    push(std::move(head));
  }
  if (global) report_stop(*global, "global", stats);
  if (jobs) report_stop(*jobs, "job", stats);
  return stats;
}

}  // namespace hq::journal
