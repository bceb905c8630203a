# The journal's records: one Event per state change of the server, stored in RocksDB (the key
# layout is in journal/journal.h and docs/journal-format.md).
# Never renumber or reuse a field; add new ones at the end of a struct or of the Event union.
# A reader that meets a union member it does not know skips the record (it was written by a
# newer minor version).
@0x9c7da3af01f69865;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("hq::journal::schema");

# The value of the "format" key, checked on open. A journal of another major version is refused;
# a newer minor version only adds fields and events, which older readers skip.
# 2: task starts and ends are written as taskTimes, which a 1.x reader would skip. A 1.x journal
# is read, and becomes 2.0 when it is first opened for writing.
const formatMagic :Text = "hq-journal";
const formatMajor :UInt16 = 2;
const formatMinor :UInt16 = 0;
const formatOldestMajor :UInt16 = 1;  # the oldest major version this reader takes

struct Format {
  magic @0 :Text;
  major @1 :UInt16;
  minor @2 :UInt16;
  created @3 :Int64;        # Unix ms
}

# The value of the "state" key, rewritten by every batch: what must survive the pruning of the
# events that carried it (ids are never reused, across restarts too).
struct State {
  lastSeq @0 :UInt64;       # the highest seq ever written
  maxJob @1 :UInt32;        # the highest job id ever journaled
  maxWorker @2 :UInt32;     # the highest worker id ever journaled
  serverUid @3 :Text;       # of the last serverStarted event
  liveJobs @4 :UInt64;      # jobs submitted and not pruned (0 in journals of hq before 1.1)
  lastJobEventJob @5 :UInt32;   # the newest event of the jobs family: its job and seq (0: none)
  lastJobEventSeq @6 :UInt64;
  lastGlobalSeq @7 :UInt64;     # the newest event of the global family (0: none)
  globalPrunedBefore @8 :UInt64;  # prune_global() removed the global events before this seq
}

# --- The job description, as submitted (a copy of the wire's, so that the two formats evolve
# apart: journals outlive protocol versions) ---

struct IdRange {
  start @0 :UInt32;
  end @1 :UInt32;           # inclusive
  step @2 :UInt32;
}

struct KeyValue {
  key @0 :Text;
  value @1 :Text;
}

struct TaskBody {
  program @0 :List(Text);   # argv
  env @1 :List(KeyValue);
  cwd @2 :Text;             # pattern
  stdout @3 :Text;          # pattern; empty means discard
  stderr @4 :Text;          # pattern; empty means discard
  submitDir @5 :Text;
  cpus @6 :UInt32;
  timeLimitMs @7 :UInt64;   # 0: none
  resources @8 :List(ResourceEntry);  # sorted by name; empty: `cpus` CPUs, compact
  pin @9 :UInt8;            # 0 none, 1 taskset, 2 omp
  timeRequestMs @10 :UInt64; # 0: any worker
  stdin @11 :Data;          # the task's standard input; empty: /dev/null
  taskDir @12 :Bool;        # a fresh directory per task instance (HQ_TASK_DIR)
  stdoutRemoveIfFinished @13 :Bool;  # output files removed when the task finishes
  stderrRemoveIfFinished @14 :Bool;
  # Alternatives (several [[task.request]]): empty, or two or more in file order, the first
  # equal to `resources`.
  variants @15 :List(ResourceVariant);
}

struct ResourceVariant {
  resources @0 :List(ResourceEntry);  # as TaskBody.resources
}

struct ResourceEntry {
  name @0 :Text;
  amount @1 :UInt64;        # in 1/10000 of a unit
  policy @2 :UInt8;         # 0 compact, 1 compact!, 2 tight, 3 tight!, 4 scatter, 5 all
}

struct JobDescription {
  name @0 :Text;
  taskIds @1 :List(IdRange);
  priority @2 :Int32;
  body @3 :TaskBody;
  stream @4 :Text;          # output stream directory; empty: per-task files
  crashLimit @5 :UInt32 = 5; # 0: unlimited
  maxFails @6 :Int64 = -1;   # -1: none
  nodes @7 :UInt32;         # whole workers per task; 0 or 1: one worker's resources
  tasks @8 :List(GraphTask); # empty: every task runs `body`; else one per task, by id
  graph @9 :GraphColumns;   # per-task bodies and dependencies (job files): see below
  entries @10 :List(Text);   # HQ_ENTRY of each task, in id order; empty: none
}

# One task of a job with per-task bodies (a job file's task), and the tasks it waits for: the
# graph is journaled once, with the job; the aborts it causes are not journaled (replay derives
# them from the failures and cancels).
# The tasks of a job with per-task bodies, as columns (common/graph_columns.h): about 16 bytes a
# task, its program's text and 4 bytes a dependency, where a GraphTask costs some 300 bytes.
# Writers fill this and leave `tasks` empty; readers take either.
struct GraphColumns {
  ids @0 :List(UInt32);       # the tasks, in the order of every other column
  bodies @1 :List(TaskBody);  # the distinct bodies, programs left empty
  bodyOf @2 :List(UInt32);    # per task: its body in `bodies`; empty: bodies[0] for every task
  argv @3 :Data;              # every task's program, each argument ending in a NUL
  argvEnd @4 :List(UInt32);   # per task: where its program ends in `argv`
  depEnd @5 :List(UInt32);    # per task: where its dependencies end in `deps`
  deps @6 :List(UInt32);      # task ids of the same job
  params @7 :List(TaskParams);  # the tasks with parameters of their own, in increasing id order
}

struct GraphTask {
  id @0 :UInt32;
  body @1 :TaskBody;
  deps @2 :List(UInt32);
}

# A job file task's own scheduling parameters; tasks without such an entry take the job's.
struct TaskParams {
  id @0 :UInt32;
  priority @1 :Int32;
  crashLimit @2 :UInt32;
  nodes @3 :UInt32;
}

# --- Events ---

struct JobOpened {
  job @0 :UInt32;
  name @1 :Text;
  maxFails @2 :Int64 = -1;  # -1: none
}

# Tasks added to an open job (newJob false), or a new job whose description jobSubmitted cannot
# hold (newJob true: tasks with their own parameters). The dependencies come once, here.
struct TasksSubmitted {
  job @0 :UInt32;
  description @1 :JobDescription;
  submitDeps @2 :List(IdRange);   # a plain submit: every task depends on these earlier tasks
  newJob @3 :Bool;
}

struct ServerStarted {
  serverUid @0 :Text;
  version @1 :Text;
  # The tasks that may be running on workers keep their instance and wait for their workers
  # to reattach (until reattachEnded); false (hq before reattach): they wait again with
  # instance + 1 at once.
  reattach @2 :Bool;
}

struct JobSubmitted {
  job @0 :UInt32;
  description @1 :JobDescription;
}

struct TaskStarted {
  job @0 :UInt32;
  task @1 :UInt32;
  instance @2 :UInt32;
  worker @3 :UInt32;
}

# Also used by taskCanceled.
struct TaskEnded {
  job @0 :UInt32;
  task @1 :UInt32;
  instance @2 :UInt32;
}

struct TaskFailed {
  job @0 :UInt32;
  task @1 :UInt32;
  instance @2 :UInt32;
  error @3 :Text;
  worker @4 :UInt32;        # 0: none (e.g. failed by its crash limit after its worker was lost)
}

# The task goes back to waiting (its worker was lost); it will run as `instance`.
struct TaskRequeued {
  job @0 :UInt32;
  task @1 :UInt32;
  instance @2 :UInt32;      # the new instance
  crashCounter @3 :UInt32;  # how many times a worker died under this task
}

# Also used by jobForgotten.
struct JobRef {
  job @0 :UInt32;
}

# One entry of a TaskBatch.
struct TaskTime {
  task @0 :UInt32;
  instance @1 :UInt32;
  time @2 :Int64;           # Unix ms, as the worker reported it
}

# Tasks of one job that one worker reported started or finished together: a record per worker
# message and job rather than per task keeps the journal at a few bytes per task.
struct TaskBatch {
  job @0 :UInt32;
  worker @1 :UInt32;
  tasks @2 :List(TaskTime);
}

# The starts and ends one worker reported for one job between two journal commits, packed: a
# few bytes per task (docs/journal-format.md, "Packed task times"). The server writes these;
# tasksStarted and tasksFinished are still read.
struct TaskTimes {
  job @0 :UInt32;
  worker @1 :UInt32;
  started @2 :Data;         # started, still running at the commit: task, instance, start
  ran @3 :Data;             # started and finished: task, instance, start, end
  finished @4 :Data;        # finished, started in an earlier record: task, instance, end
}

struct JobReserve {
  job @0 :UInt32;
  tasks @1 :UInt32;         # the first that many tasks of the job in id order
}

# The tasks as ranges: a few bytes however many were canceled.
struct TasksCanceled {
  job @0 :UInt32;
  tasks @1 :List(IdRange);
}

struct WorkerConnected {
  worker @0 :UInt32;
  hostname @1 :Text;
  cpus @2 :UInt32;
  workDir @3 :Text;
  address @4 :Text;
  # Its --on-server-lost policy is reconnect: after a restart, the server waits for it.
  reattaches @5 :Bool;
}

# A worker that was connected before the server restarted is back with its id.
struct WorkerReattached {
  worker @0 :UInt32;
  hostname @1 :Text;
  address @2 :Text;
}

struct WorkerLost {
  worker @0 :UInt32;
  reason @1 :Text;
}

struct Event {
  time @0 :Int64;           # Unix ms, when the server decided it
  union {
    serverStarted @1 :ServerStarted;
    jobSubmitted @2 :JobSubmitted;
    taskStarted @3 :TaskStarted;
    taskFinished @4 :TaskEnded;
    taskFailed @5 :TaskFailed;
    taskCanceled @6 :TaskEnded;
    # Every task of the job not yet finished, failed or canceled becomes canceled.
    jobCanceled @7 :JobRef;
    taskRequeued @8 :TaskRequeued;
    jobForgotten @9 :JobRef;
    workerConnected @10 :WorkerConnected;
    workerLost @11 :WorkerLost;
    # The batched forms of taskStarted and taskFinished, which the server writes.
    tasksStarted @12 :TaskBatch;
    tasksFinished @13 :TaskBatch;
    # The job's max-fails limit was exceeded: every task not yet ended becomes aborted.
    jobAborted @14 :JobRef;
    # Tasks of the job may be handed to workers up to this many (by dense index, in id order):
    # written and synced before any of them is sent. After a crash, every task not ended below
    # it may have run, so it comes back as a new instance.
    jobReserved @15 :JobReserve;
    # Single tasks of the job canceled (`hq task cancel`): those not yet ended then. Their
    # dependants' aborts are derived on replay, as for failures.
    tasksCanceled @16 :TasksCanceled;
    # `hq job open`: a job without tasks that takes them until jobClosed.
    jobOpened @17 :JobOpened;
    jobClosed @18 :JobRef;
    tasksSubmitted @19 :TasksSubmitted;
    workerReattached @20 :WorkerReattached;
    # Tasks a reattached worker claimed, each with the instance it runs and its start time:
    # running again on that worker, same instance.
    tasksReattached @21 :TaskBatch;
    # The reattach grace is over: the tasks no worker claimed wait again with instance + 1.
    reattachEnded @22 :Void;
    # Allocation queues (`hq alloc`), and the allocations they submitted to the batch system.
    allocQueueAdded @23 :AllocQueueAdded;
    allocQueuePaused @24 :AllocQueuePaused;
    allocQueueResumed @25 :AllocQueueRef;
    # `hq alloc remove`: its queued and running allocations were canceled.
    allocQueueRemoved @26 :AllocQueueRef;
    allocationSubmitted @27 :AllocationSubmitted;
    allocationEnded @28 :AllocationEnded;
    taskTimes @29 :TaskTimes;
  }
}

struct AllocQueueAdded {
  queue @0 :UInt32;
  # The queue's parameters as `hq alloc add` sent them: one unpacked Cap'n Proto message whose
  # root is an AllocQueueParams of the client protocol (net/protocol.capnp), so that the two
  # cannot drift apart.
  params @1 :Data;
}

struct AllocQueuePaused {
  queue @0 :UInt32;
  reason @1 :Text;          # `hq alloc pause`, or the failures that paused it
}

struct AllocQueueRef {
  queue @0 :UInt32;
}

struct AllocationSubmitted {
  queue @0 :UInt32;
  allocation @1 :Text;      # the batch system's job id
  workers @2 :UInt32;       # nodes asked for
  logDir @3 :Text;          # its batch script, stdout and stderr
}

struct AllocationEnded {
  queue @0 :UInt32;
  allocation @1 :Text;
  failed @2 :Bool;
  detail @3 :Text;          # the batch system's last words about it
}
