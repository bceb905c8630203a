#pragma once
// Private to journal/: reading events back in seq order (Journal::replay). A job's events are
// read from its key range; all events are the merge of the jobs and global families.

#include <rocksdb/db.h>

#include "common/result.h"
#include "journal/journal.h"

namespace hq::journal {

// The events of `job` with seq >= from, in seq order. `jobs` may be null (no such family).
Result<ReplayStats> replay_job_events(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* jobs, JobId job,
                                      Seq from, const rocksdb::ReadOptions& read,
                                      const ReplayFn& fn);
// Every event with seq >= from, in seq order. Either family may be null.
Result<ReplayStats> replay_all_events(rocksdb::DB& db, rocksdb::ColumnFamilyHandle* jobs,
                                      rocksdb::ColumnFamilyHandle* global, Seq from,
                                      const rocksdb::ReadOptions& read, const ReplayFn& fn);

}  // namespace hq::journal
