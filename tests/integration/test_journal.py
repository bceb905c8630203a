"""The journal: a server killed with SIGKILL restarts with nothing lost and nothing run twice."""

import json
import os
import random
import subprocess

from conftest import HQ_BIN, wait_until


def marker_job(hq_env, ids, gate=None, extra=()):
    """Submits tasks that append $HQ_INSTANCE_ID to a per-task marker file (a rerun is visible),
    then, with `gate`, wait for that file to exist."""
    marks = hq_env.root / "marks"
    marks.mkdir(exist_ok=True)
    script = f'echo $HQ_INSTANCE_ID >> {marks}/$HQ_JOB_ID.$HQ_TASK_ID'
    if gate is not None:
        script += f'; while [ ! -e {gate} ]; do sleep 0.05; done'
    return hq_env.submit(["--array", ids, "--stdout", "none", "--stderr", "none", *extra,
                          "--", "bash", "-c", script])


def marks_of(hq_env, job, task):
    path = hq_env.root / "marks" / f"{job}.{task}"
    return path.read_text().split() if path.exists() else []


def kill_server(hq_env):
    hq_env.kill(hq_env.server)


def test_restart_keeps_finished_waiting_and_partial_jobs(hq_env):
    hq_env.start_server()
    w = hq_env.start_worker(2, "--on-server-lost", "stop")
    done = marker_job(hq_env, "1-4")
    assert hq_env.wait_job(done) == 0
    gate = hq_env.root / "gate"
    partial = marker_job(hq_env, "1-6", gate=gate)
    hq_env.wait_for_task_state(partial, 1, "running")
    hq_env.wait_for_task_state(partial, 2, "running")
    waiting = marker_job(hq_env, "1-3", extra=["--cpus", "4"])  # never fits a 2-CPU worker
    info_before = json.loads((hq_env.server_dir / "access.json").read_text())

    kill_server(hq_env)
    w.wait(timeout=30)  # --on-server-lost stop: the worker dies with its server
    hq_env.start_server()
    # The same identity, keys and ports: clients set up with the old access file keep working.
    info_after = json.loads((hq_env.server_dir / "access.json").read_text())
    for key in ("server_uid", "client", "worker"):
        assert info_after[key] == info_before[key], key
    log = hq_env.log_of(hq_env.server).splitlines()
    assert "restored 3 job(s) and 13 task(s)" in log[0], log[0]

    assert hq_env.job(done)["state"] == "finished"
    tasks = {t["id"]: t for t in hq_env.tasks(partial)}
    # The two that were running wait again as instance 1. The others never ran; those the journal
    # had reserved for assignment (maybe started, for all it knows) also get a new instance.
    for t in (1, 2):
        assert tasks[t]["state"] == "waiting" and tasks[t]["instance"] == 1, tasks[t]
    for t in (3, 4, 5, 6):
        assert tasks[t]["state"] == "waiting" and tasks[t]["instance"] in (0, 1), tasks[t]
        assert marks_of(hq_env, partial, t) == []
    assert hq_env.job(waiting)["state"] == "waiting"

    gate.touch()
    hq_env.start_worker(cpus=2)
    assert hq_env.wait_job(partial) == 0
    for t in range(1, 5):
        assert marks_of(hq_env, done, t) == ["0"], "a finished task ran again"
    assert marks_of(hq_env, partial, 1) == ["0", "1"]
    for t in range(3, 7):  # each ran once (as instance 1 if it was reserved before the crash)
        assert len(marks_of(hq_env, partial, t)) == 1
    # Job ids continue after the largest ever used.
    assert marker_job(hq_env, "1") == waiting + 1


def test_crash_counters_and_worker_ids_survive_restart(hq_env):
    hq_env.start_server()
    gate = hq_env.root / "gate"
    job = marker_job(hq_env, "1", gate=gate)
    hq_env.run_on_a_dying_worker(job, 1, instance=0)
    w2 = hq_env.start_worker(1, "--on-server-lost", "stop")
    hq_env.wait_for_task_state(job, 1, "running")
    kill_server(hq_env)
    w2.wait(timeout=30)
    hq_env.start_server()
    [t] = hq_env.tasks(job)
    assert t["state"] == "waiting" and t["instance"] == 2
    assert t["crash_count"] == 1
    w3 = hq_env.start_worker(cpus=1)
    assert w3.worker_id > w2.worker_id
    gate.touch()
    assert hq_env.wait_job(job) == 0
    assert marks_of(hq_env, job, 1) == ["0", "1", "2"]


def test_cancel_and_failure_survive_restart(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    failing = hq_env.submit(["--stdout", "none", "--", "bash", "-c", "exit 3"])
    assert hq_env.wait_job(failing) != 0
    canceled = marker_job(hq_env, "1-2", extra=["--cpus", "8"])
    hq_env.command(["job", "cancel", str(canceled)])
    kill_server(hq_env)
    hq_env.start_server()
    assert hq_env.job(failing)["state"] == "failed"
    [t] = hq_env.tasks(failing)
    assert "3" in t["error"]
    assert hq_env.job(canceled)["state"] == "canceled"


def test_graceful_stop_and_cancel_of_running_tasks_survive_restart(hq_env):
    hq_env.start_server()
    w = hq_env.start_worker(cpus=2)
    gate = hq_env.root / "gate"
    running = marker_job(hq_env, "1", gate=gate)
    canceled = marker_job(hq_env, "1", gate=gate)
    hq_env.wait_for_task_state(running, 1, "running")
    hq_env.wait_for_task_state(canceled, 1, "running")
    hq_env.command(["job", "cancel", str(canceled)])
    hq_env.command(["server", "stop"])
    hq_env.server.wait(timeout=30)
    w.wait(timeout=30)
    hq_env.start_server()
    [t] = hq_env.tasks(running)
    # Stopped on purpose: back to waiting as a new instance (1, or 2 if the journal cannot rule
    # out that instance 1 started), no crash counted.
    assert t["state"] == "waiting" and t["instance"] in (1, 2) and t["crash_count"] == 0, t
    assert hq_env.job(canceled)["state"] == "canceled"
    gate.touch()
    hq_env.start_worker(cpus=2)
    assert hq_env.wait_job(running) == 0
    assert marks_of(hq_env, running, 1) == ["0", str(t["instance"])]
    assert marks_of(hq_env, canceled, 1) == ["0"]


def test_torn_journal_tail_restarts_cleanly(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    job = marker_job(hq_env, "1-3")
    assert hq_env.wait_job(job) == 0
    second = marker_job(hq_env, "1", extra=["--cpus", "8"])
    kill_server(hq_env)
    # Cut bytes off the end of the newest write-ahead log, as a power loss mid-write would.
    logs = sorted((hq_env.server_dir / "journal").glob("*.log"), key=lambda p: p.stat().st_mtime)
    assert logs, "the journal has no write-ahead log"
    wal = logs[-1]
    size = wal.stat().st_size
    assert size > 40
    os.truncate(wal, size - 13)
    hq_env.start_server()
    log = hq_env.log_of(hq_env.server)
    assert "restored" in log.splitlines()[0]
    assert "journal damage" in log
    # Everything before the damage is there; the cut write (the second submission's, synced
    # and then destroyed, as a disk losing written data would) is dropped whole.
    assert hq_env.job(job)["state"] == "finished"
    ids = [j["id"] for j in hq_env.json(["job", "list", "--all"])]
    assert job in ids
    assert set(ids) <= {job, second}
    # The server goes on: a new job runs (its id may be the lost one's: that job is gone).
    hq_env.start_worker(cpus=2)
    assert hq_env.wait_job(marker_job(hq_env, "1")) == 0


def test_journal_commands_on_a_running_server(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    jobs = [marker_job(hq_env, "1-50") for _ in range(4)]
    for j in jobs:
        assert hq_env.wait_job(j) == 0
    hq_env.command(["journal", "flush"])
    # The journal is readable while the server runs, without stopping it.
    events = [json.loads(line) for line in hq_env.command(["journal", "export"]).splitlines()]
    finished = {(e["event"]["job"], e["event"]["task"]) for e in events
                if e["event"]["type"] == "task-finished"}
    assert finished == {(j, t) for j in jobs for t in range(1, 51)}
    only = [json.loads(line) for line in hq_env.command(
        ["--output-mode", "json", "journal", "replay", "--job", str(jobs[1])]).splitlines()]
    assert only[0]["event"]["type"] == "job-submitted"
    assert len([e for e in only if e["event"]["type"] == "task-finished"]) == 50
    assert all(e["event"]["job"] == jobs[1] for e in only)
    report = hq_env.json(["journal", "report"])
    assert report["tasks_by_state"]["finished"] == 200

    pruned = hq_env.json(["journal", "prune"])
    assert pruned["pruned_jobs"] == 4
    assert pruned["size_after"] < pruned["size_before"]
    kill_server(hq_env)
    hq_env.start_server()
    assert hq_env.json(["job", "list", "--all"]) == []
    assert marker_job(hq_env, "1") == jobs[-1] + 1


def test_no_journal_keeps_nothing(hq_env):
    hq_env.start_server("--no-journal")
    hq_env.start_worker(cpus=1)
    job = marker_job(hq_env, "1")
    assert hq_env.wait_job(job) == 0
    assert not (hq_env.server_dir / "journal").exists()
    err = hq_env.command(["journal", "prune"], expect_fail=True)
    assert "without a journal" in err
    kill_server(hq_env)
    hq_env.start_server("--no-journal")
    assert hq_env.json(["job", "list", "--all"]) == []


def test_crash_loop(hq_env):
    """One campaign of 5,000 tasks, the server killed with SIGKILL 10 times (some mid-submit),
    restarted each time with fresh workers. At the end every task finished, every acknowledged
    submission is there, and no task seen finished by a client ran again.

    The kills come after observed progress, never after a time: each round hands out a random
    number of tokens (1-150), a task must take one to run, and the round ends when they are all
    taken. So every kill hits the campaign in progress, on a fast machine or a loaded one."""
    rng = random.Random(int(os.environ.get("HQ_CRASH_SEED", "7")))
    tokens = hq_env.root / "tokens"
    taken = hq_env.root / "taken"
    unlimited = hq_env.root / "unlimited"
    tokens.mkdir()
    taken.mkdir()
    # A token is a file; taking it is a rename, which only one task wins.
    gate = (f'until [ -e {unlimited} ]; do '
            f'for t in {tokens}/*; do [ -e "$t" ] && mv "$t" {taken}/ 2>/dev/null && break 2; '
            f'done; sleep 0.01; done; ')
    marks = hq_env.root / "marks"
    marks.mkdir()
    hq_env.start_server()
    workers = [hq_env.start_worker(2, "--on-server-lost", "stop"), hq_env.start_worker(2, "--on-server-lost", "stop")]
    campaign = hq_env.submit(["--array", "1-5000", "--stdout", "none", "--stderr", "none", "--",
                              "bash", "-c",
                              gate + f"echo $HQ_INSTANCE_ID >> {marks}/$HQ_JOB_ID.$HQ_TASK_ID"])
    acknowledged = {campaign: 5000}
    seen_finished = {}  # (job, task) -> its markers when a client saw it finished
    handed_out = 0

    def observe():
        for job in acknowledged:
            for t in hq_env.tasks(job):
                if t["state"] == "finished" and (job, t["id"]) not in seen_finished:
                    seen_finished[(job, t["id"])] = marks_of(hq_env, job, t["id"])

    def hand_out(n):
        nonlocal handed_out
        for _ in range(n):
            handed_out += 1
            (tokens / str(handed_out)).touch()

    kills_mid_campaign = 0
    for round_no in range(10):
        observe()
        hand_out(rng.randint(1, 150))
        submitter = None
        if round_no % 3 == 1:  # a further job whose submission races the kill
            submitter = subprocess.Popen(
                [HQ_BIN, "--output-mode", "quiet", "submit", "--array", "1-20", "--stdout",
                 "none", "--stderr", "none", "--", "bash", "-c",
                 f'echo $HQ_INSTANCE_ID >> {marks}/$HQ_JOB_ID.$HQ_TASK_ID'],
                cwd=hq_env.work, env=hq_env.env, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            # Mid-submit: the kill races the client's connection, request and reply (the race
            # is the point; no assertion depends on who wins it).
            try:
                submitter.wait(timeout=rng.uniform(0.0, 0.4))
            except subprocess.TimeoutExpired:
                pass
        else:
            # After this round's progress: every token taken.
            wait_until(lambda: not any(tokens.iterdir()), timeout=120,
                       message="the round's tokens to be taken",
                       interval=rng.uniform(0.005, 0.05))
        # No more tasks than tokens handed out can have run: the campaign is in progress.
        if sum(1 for _ in marks.glob(f"{campaign}.*")) < 5000:
            kills_mid_campaign += 1
        kill_server(hq_env)
        if submitter:
            out, _ = submitter.communicate(timeout=60)
            if submitter.returncode == 0:
                acknowledged[int(out.strip())] = 20
        for w in workers:
            w.wait(timeout=30)
        hq_env.start_server()
        workers = [hq_env.start_worker(2, "--on-server-lost", "stop"), hq_env.start_worker(2, "--on-server-lost", "stop")]

    unlimited.touch()
    for job in acknowledged:
        assert hq_env.wait_job(job, timeout=300) == 0, f"job {job} did not finish"
    observe()
    listed = {j["id"]: j for j in hq_env.json(["job", "list", "--all"])}
    for job, count in acknowledged.items():
        assert job in listed, f"acknowledged job {job} is missing"
        assert listed[job]["state"] == "finished"
        assert listed[job]["task_stats"]["finished"] == count
    for (job, task), seen in seen_finished.items():
        assert marks_of(hq_env, job, task) == seen, \
            f"task {job}.{task} ran again after a client saw it finished"
    assert len(seen_finished) >= sum(acknowledged.values())
    # A task that ran again after a crash ran as a new instance, never twice as the same one.
    for path in marks.iterdir():
        runs = path.read_text().split()
        assert len(runs) == len(set(runs)), f"{path.name} ran an instance twice: {runs}"
    # Every kill hit the campaign in progress, not a finished one.
    assert kills_mid_campaign == 10, kills_mid_campaign


def test_a_failed_journal_write_is_retried_and_loses_nothing(hq_env):
    """A journal write that fails (here: the file size limit, as a full disk would) is reported
    loudly and retried: the journal reopens onto a new WAL and the server serves again by
    itself. Meanwhile submissions are answered only once stored, or refused with the reason.
    (test_journal_failure.py fills and frees a real disk.)"""
    import resource

    log = hq_env.root / "limited-server.log"
    limit = 256 * 1024

    def limit_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    with open(log, "w") as out:
        server = subprocess.Popen(
            [HQ_BIN, "server", "start", "--host", "127.0.0.1"], cwd=hq_env.work,
            env=hq_env.env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit_files,
            start_new_session=True)
    hq_env.processes.append(("limited-server", server, log))
    hq_env.server = server
    wait_until(lambda: hq_env.run(["server", "info"]).returncode == 0, message="the server")
    # Each submission carries 8 KiB of environment: the WAL outgrows the limit after some 30.
    big = "x" * 8192
    acknowledged, refused, after_recovery = [], [], 0
    for _ in range(200):
        p = hq_env.run(["--output-mode", "quiet", "submit", "--env", f"BIG={big}", "--",
                        "true"])
        if p.returncode != 0:
            refused.append(p.stderr)
            continue
        acknowledged.append(int(p.stdout))
        if "stores changes again" in log.read_text():
            after_recovery += 1
            if after_recovery == 3:
                break
    assert after_recovery == 3, "the journal never failed, or never recovered"
    text = log.read_text()
    assert "critical" in text and "cannot store changes" in text, text
    assert "retrying in 100 ms (attempt 1)" in text and "writes again after" in text, text
    for err in refused:  # refused while it failed, with the reason
        assert "cannot store changes" in err and "File too large" in err, err
    assert hq_env.json(["server", "info"])["journal_error"] is None
    # Every acknowledged submission survives a restart (without the limit).
    hq_env.kill(server)
    hq_env.start_server()
    listed = {j["id"] for j in hq_env.json(["job", "list", "--all"])}
    assert set(acknowledged) <= listed
