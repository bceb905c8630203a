# The hq wire protocol: every message between the server, its workers and its clients.
# Sent in Cap'n Proto's standard stream framing over TLS 1.3 with a pre-shared key.
# Never renumber or reuse a field; add new ones at the end of a struct or union.
@0xac75ee85bcfce4e4;

using Cxx = import "/capnp/c++.capnp";
$Cxx.namespace("hq::wire");

# Bumped whenever a peer of an older version could misread a message.
const protocolVersion :UInt32 = 4;

enum Role {
  client @0;
  worker @1;
}

# First message on every connection, from the connecting side.
struct Hello {
  version @0 :UInt32;
  role @1 :Role;
}

# The server's answer to Hello. When ok is false the server closes the connection after it.
struct HelloReply {
  ok @0 :Bool;
  error @1 :Text;
  version @2 :UInt32;
  serverUid @3 :Text;
}

struct IdRange {
  start @0 :UInt32;
  end @1 :UInt32;   # inclusive
  step @2 :UInt32;
}

struct KeyValue {
  key @0 :Text;
  value @1 :Text;
}

enum TaskState {
  waiting @0;
  running @1;
  finished @2;
  failed @3;
  canceled @4;
  aborted @5;
}

enum JobState {
  waiting @0;
  running @1;
  finished @2;
  failed @3;
  canceled @4;
  aborted @5;
  opened @6;
}

# How a request spreads over a resource's groups (common/resources.h).
enum AllocationPolicy {
  compact @0;
  forceCompact @1;          # compact!
  tight @2;
  forceTight @3;            # tight!
  scatter @4;
  all @5;                   # the whole resource; amount unused
}

struct ResourceEntry {
  name @0 :Text;
  amount @1 :UInt64;        # in 1/10000 of a unit
  policy @2 :AllocationPolicy;
}

# One resource of a worker: a list of units in groups, or a sum.
struct ResourceDefinition {
  name @0 :Text;
  union {
    groups @1 :List(List(Text));
    sum @2 :UInt64;
  }
}

enum PinMode {
  none @0;
  taskset @1;               # CPU affinity of the task's process
  omp @2;                   # OMP_PLACES / OMP_PROC_BIND
}

# What a task runs; shared by all tasks of a job. Paths may hold placeholders.
struct TaskBody {
  program @0 :List(Text);   # argv; argv[0] is looked up in PATH
  env @1 :List(KeyValue);
  cwd @2 :Text;             # pattern; the worker creates it when missing
  stdout @3 :Text;          # pattern; empty means discard
  stderr @4 :Text;          # pattern; empty means discard
  submitDir @5 :Text;
  cpus @6 :UInt32;
  timeLimitMs @7 :UInt64;   # 0: none
  resources @8 :List(ResourceEntry);  # sorted by name, "cpus" among them; empty: `cpus` CPUs
  pin @9 :PinMode;
  timeRequestMs @10 :UInt64;  # run only on a worker that lives this long after the start; 0: any
  stdin @11 :Data;          # given to the task on its standard input; empty: /dev/null
  taskDir @12 :Bool;        # a fresh directory per task instance in HQ_TASK_DIR
  stdoutRemoveIfFinished @13 :Bool;  # the stdout file is removed when the task finishes
  stderrRemoveIfFinished @14 :Bool;
  # Alternatives (job file: several [[task.request]]): empty, or two or more requests in file
  # order, the first equal to `resources`; a task runs with one of them (HQ_RESOURCE_VARIANT).
  variants @15 :List(ResourceVariant);
}

struct ResourceVariant {
  resources @0 :List(ResourceEntry);  # as TaskBody.resources
}

struct JobDescription {
  name @0 :Text;
  taskIds @1 :List(IdRange);
  priority @2 :Int32;
  body @3 :TaskBody;
  stream @4 :Text;          # output stream directory; empty: per-task files
  crashLimit @5 :UInt32 = 5; # 0: unlimited
  maxFails @6 :Int64 = -1;   # -1: none
  nodes @7 :UInt32;         # whole workers per task (`--nodes`); 0 or 1: one worker's resources
  tasks @8 :List(GraphTask);  # empty: every task runs `body`; else one entry per task (job files)
  graph @9 :GraphColumns;   # per-task bodies and dependencies (job files): see below
  entries @10 :List(Text);   # HQ_ENTRY of each task, one per task in id order; empty: none
  job @11 :UInt32;          # the open job these tasks are added to (`--job`); 0: a new job
  submitDeps @12 :List(IdRange);  # no `graph`: every task depends on these tasks of the open job
  autoIds @13 :Bool;        # into an open job: taskIds start at 0 and move past its highest id
}

# One task of a job with per-task bodies, and the tasks of the job it waits for.
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

# A job file task's own scheduling parameters (`priority`, `crash_limit`, `n_nodes`); tasks
# without such an entry take the job's.
struct TaskParams {
  id @0 :UInt32;
  priority @1 :Int32;
  crashLimit @2 :UInt32;
  nodes @3 :UInt32;
}

struct GraphTask {
  id @0 :UInt32;
  body @1 :TaskBody;
  deps @2 :List(UInt32);
}

# --- Client <-> server ------------------------------------------------------------------------

struct JobSelector {
  union {
    all @0 :Void;
    last @1 :Void;
    ids @2 :List(IdRange);
  }
}

struct TaskCounts {
  waiting @0 :UInt32;
  running @1 :UInt32;
  finished @2 :UInt32;
  failed @3 :UInt32;
  canceled @4 :UInt32;
  aborted @5 :UInt32;
}

struct JobSummary {
  id @0 :UInt32;
  name @1 :Text;
  state @2 :JobState;
  counts @3 :TaskCounts;
  submitTime @4 :Int64;     # Unix ms
  endTime @5 :Int64;        # Unix ms, 0 while not complete
  isOpen @6 :Bool;          # an open job (`hq job open`) that takes more tasks until closed
}

struct JobDetail {
  summary @0 :JobSummary;
  # A job file's job: `tasks` only while the job has at most 1,000 tasks (the answer stays small).
  description @1 :JobDescription;
  dependencies @2 :UInt64;  # between the job's tasks; 0: none
}

struct TaskInfo {
  id @0 :UInt32;
  state @1 :TaskState;
  instance @2 :UInt32;
  worker @3 :UInt32;        # the last worker that ran it, 0 for none
  error @4 :Text;
  startTime @5 :Int64;
  endTime @6 :Int64;
  crashCount @7 :UInt32;    # workers lost while running it
  deps @8 :List(UInt32);    # tasks of the same job it waits for (job files); empty: none
  abortedByJob @9 :UInt32;  # an aborted task: the job and task whose failure or cancel caused
  abortedByTask @10 :UInt32; # it; 0 and 0 otherwise
  reattached @11 :UInt32;   # times this instance survived a server restart on its worker
}

struct TaskQuery {
  job @0 :UInt32;
  tasks @1 :List(IdRange);  # empty: all tasks
  states @2 :List(TaskState);   # empty: all states
  from @3 :UInt32;          # only tasks with an id >= from (the next page of an answer)
}

# One bounded page of a task list, in increasing task id order.
struct TaskPage {
  tasks @0 :List(TaskInfo);
  more @1 :Bool;            # more tasks match: ask again with from = next
  next @2 :UInt32;
}

struct WorkerSummary {
  id @0 :UInt32;
  hostname @1 :Text;
  cpus @2 :UInt32;
  connected @3 :Bool;
  connectTime @4 :Int64;
  endTime @5 :Int64;
  endReason @6 :Text;
  runningTasks @7 :UInt32;
  workDir @8 :Text;
  address @9 :Text;
  resources @10 :List(ResourceDefinition);
  limitTime @11 :Int64;     # Unix ms when its --time-limit stops it; 0: none
  group @12 :Text;
  pid @13 :UInt32;          # the worker's process id (on its host)
  state @14 :WorkerState;   # running while connected, else why it ended
  heartbeatMs @15 :UInt32;  # how often it reports
  idleTimeoutMs @16 :UInt64; # it stops after this long without tasks; 0: never
  onServerLost @17 :Text;   # `--on-server-lost`: stop, finish-running or reconnect
  reattachCount @18 :UInt32; # times it reattached (to this server or a restarted one)
  reattachTime @19 :Int64;  # Unix ms of its last reattach; 0: never
}

# A worker's state in HyperQueue's terms: running, or how it ended. Only the two losses
# (connectionLost, heartbeatLost) count as a crash of the tasks it was running.
enum WorkerState {
  running @0;
  connectionLost @1;        # its connection broke or closed unannounced (crash, SIGKILL)
  heartbeatLost @2;         # the server gave up on its missed heartbeats
  stopped @3;               # `hq worker stop`, `hq server stop`, SIGTERM/SIGINT of the worker
  idleTimeout @4;           # no task for its idle timeout
  timeLimitReached @5;      # its --time-limit ran out
}

struct WorkerSelector {
  union {
    all @0 :Void;
    ids @1 :List(IdRange);
  }
}

struct ServerInfo {
  serverUid @0 :Text;
  host @1 :Text;
  clientPort @2 :UInt16;
  workerPort @3 :UInt16;
  pid @4 :Int32;
  startTime @5 :Int64;
  version @6 :Text;
  serverDir @7 :Text;
  journal @8 :Text;         # the journal's directory; empty: none (--no-journal)
  journalError @9 :Text;    # why the journal stopped accepting records; empty while it works
  restoredJobs @10 :UInt32; # what the last start replayed from the journal
  restoredTasks @11 :UInt64;
  replayMs @12 :UInt32;
  workerHost @13 :Text;     # where workers connect (`host` is the clients' host)
}

struct JournalPruneResult {
  prunedJobs @0 :UInt32;    # completed jobs whose history was dropped
  sizeBefore @1 :UInt64;    # bytes of the journal on disk
  sizeAfter @2 :UInt64;
}

struct ClientRequest {
  union {
    submit @0 :JobDescription;
    jobList @1 :Void;
    jobInfo @2 :JobSelector;
    jobCancel @3 :JobSelector;
    jobWait @4 :JobSelector;
    taskList @5 :TaskQuery;
    workerList @6 :Void;
    workerInfo @7 :UInt32;
    workerStop @8 :WorkerSelector;
    serverInfo @9 :Void;
    serverStop @10 :Void;
    journalPrune @11 :Void;
    journalFlush @12 :Void;
    taskExplain @13 :TaskKey;   # instance unused
    taskCancel @14 :TaskCancelRequest;   # answered with `canceled` (one CancelResult)
    jobForget @15 :JobForgetRequest;     # answered with `forgotten`
    jobWatch @16 :JobSelector;           # answered with `progress` messages, the last one `done`
    jobOpen @17 :JobDescription;  # name and maxFails only; answered with `submitted` (its id)
    jobClose @18 :JobSelector;    # answered with `jobs` (the closed jobs)
    jobWaitOpen @19 :JobSelector; # as jobWait, an open job counting as done when idle
    allocAdd @20 :AllocQueueParams;  # answered with `allocQueues` (the new queue)
    allocList @21 :Void;             # answered with `allocQueues` (all, with their allocations)
    allocPause @22 :UInt32;          # answered with `allocQueues` (that queue)
    allocResume @23 :UInt32;
    allocRemove @24 :AllocRemoveRequest;  # answered with `allocQueues` (the removed queue)
  }
}

# `hq alloc add slurm|pbs`: an allocation queue. The client checks the options and builds what
# every allocation runs; the server fills in the node count of each allocation.
struct AllocQueueParams {
  manager @0 :Text;          # slurm or pbs
  name @1 :Text;
  timeLimitMs @2 :UInt64;    # each allocation's walltime
  workerTimeLimitMs @3 :UInt64;  # 0: the walltime's
  backlog @4 :UInt32;
  maxWorkersPerAlloc @5 :UInt32;
  maxWorkerCount @6 :UInt32;     # 0: none
  minUtilization @7 :Float64;
  hqBinary @8 :Text;         # the `hq` the workers run
  serverDir @9 :Text;        # their --server-dir
  workerArgs @10 :List(Text);  # more `hq worker start` options
  batchArgs @11 :List(Text);   # for sbatch / qsub as they are
  workerStartCmd @12 :Text;
  workerStopCmd @13 :Text;
  workerWrapCmd @14 :Text;
  workerCpus @15 :Text;      # the workers' --cpus as given; empty: not known before they start
  workerResources @16 :List(Text);  # their --resource definitions
  idleTimeoutMs @17 :UInt64;
}

struct AllocRemoveRequest {
  queue @0 :UInt32;
  force @1 :Bool;            # also cancel allocations whose workers are connected
}

struct AllocationSummary {
  id @0 :Text;               # the batch system's job id
  state @1 :Text;            # queued, running, finished, failed
  workers @2 :UInt32;        # nodes asked for
  workerIds @3 :List(UInt32);  # hq workers that connected from it
  detail @4 :Text;           # the batch system's last words about it
  submitTime @5 :Int64;      # Unix ms
  startTime @6 :Int64;       # 0: not yet
  endTime @7 :Int64;
  logDir @8 :Text;           # its stdout and stderr files
}

struct AllocQueueSummary {
  id @0 :UInt32;
  params @1 :AllocQueueParams;
  state @2 :Text;            # active, paused
  pauseReason @3 :Text;
  lastError @4 :Text;
  allocations @5 :List(AllocationSummary);
  demand @6 :UInt32;         # workers the waiting tasks could use, at the last refresh
  unfit @7 :List(Text);      # why waiting tasks are not demand for this queue (per job)
}

# `hq task cancel JOB TASKS`: single tasks of one job.
struct TaskCancelRequest {
  job @0 :UInt32;
  tasks @1 :List(IdRange);
}

# `hq job forget SELECTOR --filter STATES`: only complete jobs in one of `states` (empty: any
# complete state) are forgotten.
struct JobForgetRequest {
  selector @0 :JobSelector;
  states @1 :List(JobState);
}

struct JobForgetResult {
  forgotten @0 :List(UInt32);  # the jobs forgotten, in id order
  ignored @1 :UInt32;          # selected jobs not complete or not in the wanted states
}

# What `hq job progress` draws: the task counts of the watched jobs, summed. Sent when they
# change (at most a few times per second) and once more when every watched job is complete.
struct JobProgress {
  counts @0 :TaskCounts;
  jobs @1 :UInt32;          # watched jobs
  completeJobs @2 :UInt32;  # of them, with no task waiting or running
  done @3 :Bool;            # the last message: every watched job is complete
}

# Why a task can or cannot run on one worker.
struct WorkerFit {
  worker @0 :UInt32;
  hostname @1 :Text;
  fitsNow @2 :Bool;
  couldFit @3 :Bool;        # with nothing running there
  reason @4 :Text;          # empty when it fits now
}

struct TaskExplanation {
  request @0 :Text;         # the task's request, as `hq submit` takes it
  state @1 :TaskState;
  workers @2 :List(WorkerFit);
  waitingFor @3 :List(UInt32);  # a waiting task: its dependencies not finished yet (same job)
}

struct CancelResult {
  job @0 :UInt32;
  canceledTasks @1 :UInt32;
  alreadyDone @2 :Bool;     # nothing was left to cancel
  # taskCancel only: dependants of the canceled tasks that became aborted, the selected tasks
  # that had already ended, and those the job does not have.
  abortedTasks @3 :UInt32;
  endedTasks @4 :UInt32;
  unknownTasks @5 :UInt32;
}

struct ClientResponse {
  union {
    error @0 :Text;
    submitted @1 :UInt32;             # the new job's id
    jobs @2 :List(JobSummary);        # jobList, jobWait (final states)
    jobDetails @3 :List(JobDetail);   # jobInfo
    canceled @4 :List(CancelResult);
    tasks @5 :List(TaskInfo);         # unused since protocol 2: see taskPage
    workers @6 :List(WorkerSummary);  # workerList, workerInfo, workerStop (the stopped ones)
    serverInfo @7 :ServerInfo;
    ok @8 :Void;                      # serverStop, journalFlush
    journalPruned @9 :JournalPruneResult;
    explanation @10 :TaskExplanation;
    taskPage @11 :TaskPage;           # taskList
    forgotten @12 :JobForgetResult;   # jobForget
    progress @13 :JobProgress;        # jobWatch
    allocQueues @14 :List(AllocQueueSummary);  # allocAdd, allocList, allocPause, ...
  }
}

# --- Worker <-> server ------------------------------------------------------------------------

struct TaskKey {
  job @0 :UInt32;
  task @1 :UInt32;
  instance @2 :UInt32;
}

struct WorkerRegistration {
  hostname @0 :Text;
  cpus @1 :UInt32;
  workDir @2 :Text;
  resources @3 :List(ResourceDefinition);  # "cpus" among them; empty: cpus 0..cpus-1
  timeLimitMs @4 :UInt64;   # the worker stops this long after registering; 0: never
  group @5 :Text;           # `--group`; empty: "default"
  pid @6 :UInt32;           # the worker's process id
  heartbeatMs @7 :UInt32;   # `--heartbeat`: how often it reports; 0: the server's default
  idleTimeoutMs @8 :UInt64; # its own `--idle-timeout`; 0: none (the server's applies)
  onServerLost @9 :Text;    # `--on-server-lost`: stop, finish-running or reconnect
  # A worker back after losing its server (reconnect policy): the id and server it had, and
  # what it holds. The server keeps the id when it expects this worker back (after its own
  # restart); otherwise the worker gets a new id and every claim is stale.
  previousWorkerId @10 :UInt32;  # 0: a new worker
  previousServerUid @11 :Text;
  reattachCount @12 :UInt32;     # times this worker process reconnected, this one included
  running @13 :List(RunningClaim);  # its tasks still running
  ended @14 :List(EndedClaim);      # results the server may not have recorded
  # The batch job it runs in (SLURM_JOB_ID, PBS_JOBID; `--manager`); empty: none. How the server
  # knows which allocation of a queue it comes from, whatever its group.
  allocation @15 :Text;
}

# A task a reattaching worker still runs.
struct RunningClaim {
  key @0 :TaskKey;
  startTime @1 :Int64;      # Unix ms on the worker
  units @2 :List(AllocatedUnit);  # what it took from the worker's resources
  variant @3 :UInt8;        # the resource variant it runs with (0 without alternatives)
}

struct AllocatedUnit {
  resource @0 :Text;
  unit @1 :UInt32;          # index of the unit in the resource's groups, flattened; sums: 0
  amount @2 :UInt64;        # in 1/10000 of a unit
}

# A task that ended on a reattaching worker, maybe while its server was away.
struct EndedClaim {
  key @0 :TaskKey;
  startTime @1 :Int64;
  endTime @2 :Int64;
  finished @3 :Bool;        # else failed, with `error`
  error @4 :Text;
}

struct RegistrationReply {
  workerId @0 :UInt32;
  serverUid @1 :Text;
  heartbeatMs @2 :UInt32;   # send at least one message this often
  idleTimeoutMs @3 :UInt64; # the server's --idle-timeout, for a worker without its own; 0: none
}

# A job's body, sent once to each worker before its first task of that job.
struct JobBody {
  job @0 :UInt32;
  body @1 :TaskBody;
  stream @2 :Text;
}

# The workers a multi-node task spans, the one it runs on first.
struct TaskNodes {
  key @0 :TaskKey;
  hosts @1 :List(Text);
}

# The body of one task of a job with per-task bodies, sent with the task.
struct TaskBodyOf {
  task @0 :UInt32;
  job @1 :UInt32;
  body @2 :TaskBody;
}

struct Assignment {
  jobs @0 :List(JobBody);
  tasks @1 :List(TaskKey);
  nodes @2 :List(TaskNodes);  # for the multi-node tasks among `tasks`
  # For the tasks among `tasks` of jobs with per-task bodies (their JobBody gives the stream
  # only); empty for array jobs, which cost nothing per task here.
  taskBodies @3 :List(TaskBodyOf);
  # HQ_ENTRY of the tasks among `tasks` of jobs with entries (--each-line, --from-json).
  entries @4 :List(TaskEntry);
  # The variant (index in TaskBody.variants) of the tasks among `tasks` that have variants and
  # run with another than the first; absent: variant 0.
  variants @5 :List(TaskVariant);
}

struct TaskVariant {
  job @0 :UInt32;
  task @1 :UInt32;
  variant @2 :UInt8;
}

# The entry of one task of a job with entries, sent with the task.
struct TaskEntry {
  job @0 :UInt32;
  task @1 :UInt32;
  entry @2 :Text;
}

struct ToWorker {
  union {
    registered @0 :RegistrationReply;
    assign @1 :Assignment;
    cancel @2 :List(TaskKey);     # kill these if running, drop them if queued
    retract @3 :List(TaskKey);    # give these back if they have not started
    stop @4 :Void;                # kill everything and exit
    serving @5 :Bool;             # a secondary node of a multi-node task now, or no longer
    # The server goes away without stopping its workers (SIGTERM/SIGINT of the server): they
    # follow their --on-server-lost policy, as for a broken connection.
    serverLeaving @6 :Void;
  }
}

struct TaskEvent {
  key @0 :TaskKey;
  time @1 :Int64;           # Unix ms on the worker
}

struct TaskFailure {
  key @0 :TaskKey;
  time @1 :Int64;
  error @2 :Text;
}

# Everything a worker reports; an empty one is a heartbeat.
struct WorkerEvents {
  started @0 :List(TaskEvent);
  finished @1 :List(TaskEvent);
  failed @2 :List(TaskFailure);
  retracted @3 :List(TaskKey);  # given back, never started
}

# Why a worker stops on its own account; sent just before it closes the connection, so that
# the server records a stop rather than a loss.
enum WorkerStopReason {
  stopped @0;               # stopped by the server, or SIGTERM/SIGINT
  idleTimeout @1;
  timeLimitReached @2;
}

struct WorkerStopping {
  reason @0 :WorkerStopReason;
}

struct FromWorker {
  union {
    register @0 :WorkerRegistration;
    events @1 :WorkerEvents;
    stopping @2 :WorkerStopping;
  }
}
