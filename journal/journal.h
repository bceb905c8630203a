#pragma once
// The journal: every state change of the server, as Event records (journal/events.capnp) in a
// RocksDB database, synced in groups, replayed on restart, pruned of completed jobs.
//
// Layout (docs/journal-format.md has the details). Three column families:
//   "default"  meta keys: "format" -> Format {magic "hq-journal", major, minor, created}, checked
//              on open; "state" -> State {last seq, max job id, max worker id, server UID},
//              rewritten by every batch, so ids survive the pruning of the events that carried
//              them.
//   "jobs"     [job id: 4 bytes BE][seq: 8 bytes BE] -> Event: the events of one job (submitted,
//              task started/finished/failed/canceled/requeued, canceled, forgotten).
//   "global"   [seq: 8 bytes BE] -> Event: server and worker events.
// A job's events are contiguous, so pruning a job is one range deletion, and its space comes back
// with a compaction of that range alone. Replay merges the two families by seq: job ids are given
// in submission order, so the jobs' first events come in seq order too, and once the replay has
// read up to a job it may emit everything before that job's first event. Small jobs are copied
// while they interleave with later ones; a large job (over 4096 events) is read in place by an
// iterator of its own, so memory stays bounded by the small jobs in flight.
//
// Durability: append() adds records to the open group; commit() closes the group and hands it to
// the journal thread, which writes every group queued meanwhile as ONE WriteBatch and syncs it
// once (group commit), then posts each group's callback, in commit order. A group is atomic: after
// a crash it is either all there or not at all. RocksDB recovers its WAL up to the first damaged
// record (kPointInTimeRecovery): a torn tail loses only the groups that were never acknowledged,
// and what was dropped is reported by recovery(). A failed write (a full disk) holds the journal
// back, never drops a record: the journal thread retries the same batch with backoff (100 ms,
// doubling to 5 s), first reopening the database (RocksDB stays read-only after a failed WAL
// write; the reopen recovers the WAL up to the torn record, and a flush puts the tables past
// it); the callbacks of the groups behind it run only once they are written. Meanwhile append() and
// commit() go on queueing in memory, status() is the error, and Options::health hears of the
// failure and of the recovery. A record written twice by a retry lands on its own key again: replay
// sees it once.
//
// Threads: one owner thread (the server's event loop) calls append, prune, prune_global, commit,
// flush, compact and measure; stats() and size_on_disk() may be called from any thread. Writes run
// on the journal thread; flushes and compactions on a maintenance thread, so that neither blocks
// the owner nor delays syncs.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <capnp/message.h>

#include "common/id_set.h"
#include "common/ids.h"
#include "common/paths.h"
#include "common/result.h"
#include "journal/events.h"

namespace rocksdb {
class Env;
}

namespace hq::journal {

// Runs a callback on the owner's thread (the server passes one that asio::post's to its loop).
using Post = std::function<void(std::function<void()>)>;
// Told whether a commit, flush or compaction succeeded.
using Done = std::function<void(Status)>;

struct Options {
  // Sees the journal as it was at open(), never writes, takes no lock and never blocks or disturbs
  // a server writing to it; append() and friends fail. While a process of this machine has the
  // journal open (a running server), this is a RocksDB secondary instance, which cannot tell a
  // torn WAL tail from a write in flight; otherwise a read-only instance that recovers the WAL in
  // memory and reports a torn tail in recovery(), as a server would.
  bool read_only = false;
  // Sync every batch to disk before its callbacks run. Off only for throwaway runs and benchmarks:
  // a crash of the machine (not of the server) may then lose acknowledged records.
  bool sync = true;
  // Create the journal when the directory holds none (ignored when read_only).
  bool create_if_missing = true;
  // Runs the callbacks of commit(), flush() and compact(). Empty: they run on the journal's own
  // threads. Must stay usable until the journal is destroyed.
  Post post;
  // The environment RocksDB does its I/O through; nullptr: the real one. Tests pass one that
  // injects failures. Must outlive the journal.
  rocksdb::Env* env = nullptr;
  // Told, through post, when writes start failing (with the error) and when they go through
  // again (ok). Empty: nobody is told (status() still says).
  Done health;
};

// What open() found.
struct RecoveryInfo {
  Seq last_seq = 0;            // the highest seq ever written; appends continue after it
  JobId max_job_id = 0;        // the highest job id ever journaled, pruned jobs included
  WorkerId max_worker_id = 0;  // the highest worker id ever journaled
  std::string server_uid;      // of the last serverStarted event; empty when there was none
  uint16_t format_minor = 0;   // of the journal as found (a newer minor adds records we skip)
  // What recovery dropped, one line each with its position ("WAL recovery: /j/000012.log:
  // dropping 137 bytes; Corruption: truncated record body (recovered through seq 41)"). Empty
  // when the journal was intact. A read-only open adds what is missing against the high-water
  // mark and the state record ("lost records: ..."), which a read-write open refuses instead.
  // Not logged by the journal: the opener reports it.
  std::vector<std::string> damage;
};

struct JournalStats {
  uint64_t appended = 0;        // records appended (range deletions included)
  uint64_t commits = 0;         // commit() calls written
  uint64_t batches = 0;         // WriteBatches written (each synced once when Options::sync)
  uint64_t bytes_written = 0;   // WriteBatch bytes written
  uint64_t compactions = 0;     // compactions of pruned ranges run
  uint64_t write_failures = 0;  // write attempts that failed (each is retried)
  Seq last_seq = 0;             // the last seq on disk
};

struct ReplayOptions {
  Seq from_seq = 0;          // only events with seq >= from_seq
  std::optional<JobId> job;  // only that job's events (no server or worker events)
};

struct ReplayStats {
  uint64_t events = 0;  // events passed to the callback
  uint64_t bytes = 0;   // their record bytes
  Seq first_seq = 0;    // of the first and last event passed; 0 when none
  Seq last_seq = 0;
  std::chrono::microseconds elapsed{0};
  // Records skipped because they could not be decoded, and reads that stopped early, one line
  // each with the position ("seq 1234 (job 7): undecodable record: ...").
  std::vector<std::string> damage;
};

// Called once per event, in seq order. `event` is valid only during the call; every field of it
// can be read without throwing.
using ReplayFn = std::function<void(Seq seq, schema::Event::Reader event)>;

class Journal {
 public:
  // Opens (or creates) the journal in directory `path`. Fails with a message naming the path when
  // it is not a journal, was written by another major format version, or RocksDB cannot open it
  // (another server holds it: "lock ... held"); succeeds on a journal with a torn tail, reporting
  // the loss in recovery().
  //
  // Never creates a journal over a directory that holds journal files but no CURRENT (fails,
  // naming the manifest CURRENT could name). Before a read-write open, which would delete table
  // files a damaged MANIFEST no longer names, a read-only look compares what the journal holds
  // with its high-water mark (a file of its own, kept from the synced state before every flush)
  // and with its state record's count of live jobs: when records are missing it fails, changing
  // nothing, and says what is missing. A read-only open reports the same shortfall in
  // recovery().damage ("lost records: ..."). A read-write open makes the directory 0700 and its
  // files 0600.
  static Result<std::unique_ptr<Journal>> open(const fs::path& path, Options options);

  // Writes the groups already committed and runs their callbacks (through Options::post), waits
  // for running maintenance; drops records appended after the last commit.
  virtual ~Journal() = default;

  virtual const RecoveryInfo& recovery() const = 0;

  // Adds the event built in `event` (root: schema::Event) to the open group and returns its seq.
  // Owner thread. Fails when the journal is read-only or the event is too large: the caller must
  // then refuse the change it was about to acknowledge. A failing disk does not fail it: the
  // record waits in memory for the write to go through.
  virtual Result<Seq> append(capnp::MessageBuilder& event) = 0;

  // Deletes every event of `jobs` (jobs the server has forgotten): range deletions in the open
  // group. Once its commit is written, a compaction of those ranges returns the space to the
  // file system in the background. The highest job id is kept. Owner thread.
  virtual Status prune(const IdSet& jobs) = 0;
  // Deletes the server and worker events before `seq` (e.g. those of the previous runs, at
  // start). Written by the next commit. Owner thread.
  virtual Status prune_global(Seq before) = 0;

  // Closes the open group (possibly empty) and queues it for writing. `done` runs once its batch is
  // written (and synced), however many retries that takes, or with the error when the journal
  // closes before it could be written; callbacks run in commit order. Owner thread.
  virtual void commit(Done done) = 0;

  // Flushes the memtables to table files (the WAL then holds nothing to replay), after every
  // group committed so far is written. `done` runs through Options::post. Owner thread.
  virtual void flush(Done done) = 0;
  // Flushes, then compacts everything (as a prune's compaction, for the whole journal): the disk
  // holds only live records afterwards. After every group committed so far and its pruning
  // compaction. Owner thread.
  virtual void compact(Done done) = 0;

  // Calls `fn` for the events selected by `options`, in seq order, as of the call. Damaged records
  // are skipped and reported in the stats, not failed on; fails only when the journal cannot be
  // read at all. Owner thread (before appending, at start; or any time on a read-only journal).
  virtual Result<ReplayStats> replay(const ReplayOptions& options, const ReplayFn& fn) = 0;

  // Ok while writes go through; else the error of the last failed attempt (retries go on).
  virtual Status status() const = 0;
  virtual JournalStats stats() const = 0;
  // Bytes of every file in the journal directory (WAL, tables, manifest). Walks the directory on
  // the calling thread: not for the owner's event loop, which uses measure().
  virtual uint64_t size_on_disk() const = 0;
  // Calls `done` (through Options::post) with size_on_disk(), measured on the maintenance thread
  // after the work queued before it (commits, flushes, compactions). Owner thread.
  virtual void measure(std::function<void(uint64_t)> done) = 0;
};

}  // namespace hq::journal
