"""Workers: loss, restart of tasks elsewhere, stop, idle timeout, heartbeats."""

import json
import os
import signal

from conftest import wait_until


def live_group_members(pgid):
    """Pids of the processes of group `pgid` that have not exited (a zombie only waits to be
    reaped by whoever inherited it)."""
    members = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                text = f.read()
        except OSError:
            continue
        state, _ppid, group = text[text.rindex(")") + 2:].split()[:3]
        if int(group) == pgid and state not in ("Z", "X"):
            members.append(int(name))
    return members


def test_killed_worker_tasks_run_again_elsewhere(hq_env):
    hq_env.start_server()
    w1 = hq_env.start_worker(cpus=2)
    gate = hq_env.root / "gate"
    job = hq_env.submit([
        "--array", "1-2", "--", "bash", "-c",
        f'echo $HQ_INSTANCE_ID > {hq_env.root}/inst-$HQ_TASK_ID-$HQ_INSTANCE_ID; '
        f'while [ ! -e {gate} ]; do sleep 0.05; done'])
    hq_env.wait_for_task_state(job, 1, "running")
    hq_env.wait_for_task_state(job, 2, "running")
    hq_env.kill(w1)
    # The server notices the closed connection and puts both tasks back to waiting.
    wait_until(lambda: all(t["state"] == "waiting" and t["instance"] == 1
                           for t in hq_env.tasks(job)), message="tasks back to waiting")
    w2 = hq_env.start_worker(cpus=2)
    gate.touch()
    assert hq_env.wait_job(job) == 0
    for t in hq_env.tasks(job):
        assert t["instance"] == 1 and t["worker"] == w2.worker_id
        assert (hq_env.root / f"inst-{t['id']}-1").read_text() == "1\n"
    workers = {w["id"]: w for w in hq_env.json(["worker", "list", "--all"])}
    assert workers[w1.worker_id]["state"] == "connection_lost"
    assert workers[w1.worker_id]["end_reason"].startswith("connection lost")


def test_tasks_die_with_a_sigkilled_worker(hq_env):
    hq_env.start_server()
    worker = hq_env.start_worker(cpus=1)
    pids = hq_env.root / "pids"
    # The task (its own group's leader) starts a child of its own, in its group.
    job = hq_env.submit(["--", "bash", "-c", f"sleep 300 & echo $$ $! > {pids}.tmp; "
                         f"mv {pids}.tmp {pids}; wait"])
    wait_until(pids.exists, message="the task to start its child")
    leader, child = map(int, pids.read_text().split())
    assert sorted(live_group_members(leader)) == sorted([leader, child])

    hq_env.kill(worker)  # SIGKILL: the worker cleans nothing up itself
    wait_until(lambda: not live_group_members(leader), timeout=1.0,
               message="the task's process group to die with its worker")
    hq_env.wait_for_task_state(job, 0, "waiting")


def test_worker_stop_and_list(hq_env):
    hq_env.start_server()
    w1 = hq_env.start_worker(1, "--hostname", "node-a")
    w2 = hq_env.start_worker(cpus=3)
    listed = {w["id"]: w for w in hq_env.json(["worker", "list"])}
    assert listed[w1.worker_id]["configuration"]["hostname"] == "node-a"
    assert listed[w2.worker_id]["cpus"] == 3
    info = hq_env.json(["worker", "info", str(w1.worker_id)])
    assert info["id"] == w1.worker_id and info["state"] == "running"
    out = hq_env.command(["worker", "stop", str(w1.worker_id)])
    assert f"Worker {w1.worker_id} stopped" in out
    assert w1.wait(timeout=30) == 0
    wait_until(lambda: hq_env.connected_workers() == [w2.worker_id],
               message="the stopped worker to disappear")
    offline = hq_env.json(["worker", "info", str(w1.worker_id)])
    assert offline["state"] == "stopped" and offline["end_reason"] == "stopped"
    err = hq_env.command(["worker", "info", "99"], expect_fail=True)
    assert "worker 99 not found" in err
    err = hq_env.command(["worker", "stop", "99"], expect_fail=True)
    assert "worker 99 not found" in err
    err = hq_env.command(["worker", "stop", "100-4000000000"], expect_fail=True)
    assert "worker 100-4000000000 not found" in err


def test_worker_stops_when_server_goes_away(hq_env):
    server = hq_env.start_server()
    w = hq_env.start_worker(1, "--on-server-lost", "stop")  # the default reconnects instead
    hq_env.kill(server)
    assert w.wait(timeout=30) != 0
    assert "lost the server" in hq_env.log_of(w) or "closed the connection" in hq_env.log_of(w)


def test_server_stop_stops_workers(hq_env):
    server = hq_env.start_server()
    w = hq_env.start_worker()
    hq_env.command(["server", "stop"])
    assert server.wait(timeout=30) == 0
    assert w.wait(timeout=30) == 0
    assert "stopped by the server" in hq_env.log_of(w)


def test_idle_timeout(hq_env):
    hq_env.start_server()
    # Not waiting for it to show in `worker list`: on a loaded machine it may be gone by then.
    w = hq_env.start_worker(1, "--idle-timeout", "300ms", wait=False)
    assert w.wait(timeout=30) == 0
    assert "idle timeout" in hq_env.log_of(w)


def test_silent_worker_is_lost_after_missed_heartbeats(hq_env):
    hq_env.start_server("--heartbeat", "200ms")
    w = hq_env.start_worker()
    job = hq_env.submit(["--", "sleep", "300"])
    hq_env.wait_for_task_state(job, 0, "running")
    w.send_signal(signal.SIGSTOP)
    try:
        wait_until(lambda: hq_env.connected_workers() == [], timeout=30,
                   message="the frozen worker to be declared lost")
        [t] = hq_env.tasks(job)
        assert t["state"] == "waiting" and t["instance"] == 1
        info = hq_env.json(["worker", "info", str(w.worker_id)])
        assert info["state"] == "heartbeat_lost"
        assert info["end_reason"].startswith("heartbeat lost"), info["end_reason"]
    finally:
        w.send_signal(signal.SIGCONT)


def test_cpu_accounting_limits_parallelism(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    log = hq_env.root / "cpus.log"
    job = hq_env.submit(["--array", "1-6", "--cpus", "2", "--", "bash", "-c",
                         f'echo "$HQ_CPUS" >> {log}'])
    assert hq_env.wait_job(job) == 0
    assert log.read_text().split() == ["0,1"] * 6
    big = hq_env.submit(["--cpus", "3", "--", "true"])
    # No worker has 3 CPUs: the task waits (a bigger worker may come).
    hq_env.start_worker(cpus=1)
    assert hq_env.tasks(big)[0]["state"] == "waiting"
    hq_env.start_worker(cpus=4)
    assert hq_env.wait_job(big) == 0


def test_a_zero_work_worker_ends_tasks_at_once_through_the_journal(hq_env):
    # The benchmark mode (`--zero-work`): every task is reported started and finished without
    # its program running, through the same messages and journal as real tasks.
    hq_env.start_server()
    worker = hq_env.start_worker(4, "--zero-work")
    marks = hq_env.root / "marks"
    marks.mkdir()
    job = hq_env.submit(["--array", "1-3000", "--", "bash", "-c", f"touch {marks}/$HQ_TASK_ID"])
    wide = hq_env.submit(["--array", "1-50", "--cpus", "3", "--", "touch", f"{marks}/wide"])
    assert hq_env.wait_job(job) == 0
    assert hq_env.wait_job(wide) == 0
    assert list(marks.iterdir()) == []
    tasks = hq_env.tasks(job)
    assert len(tasks) == 3000
    assert all(t["state"] == "finished" and t["instance"] == 0 and t["worker"] == worker.worker_id
               for t in tasks)
    hq_env.command(["journal", "flush"])
    events = [json.loads(line)["event"] for line in
              hq_env.command(["journal", "export"]).splitlines()]
    for kind in ("task-started", "task-finished"):
        ends = [(e["job"], e["task"]) for e in events if e["type"] == kind]
        assert sorted(ends) == sorted([(job, t) for t in range(1, 3001)] +
                                      [(wide, t) for t in range(1, 51)]), kind
    # Recorded, not only reported: a restarted server has the same campaign.
    hq_env.kill(hq_env.server)
    hq_env.start_server()
    assert hq_env.job(job)["task_stats"]["finished"] == 3000
