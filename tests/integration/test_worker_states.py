"""How workers end, in HyperQueue's words: `hq worker list --filter offline`, `--all` and `hq
worker info` show STOPPED, IDLE TIMEOUT, TIME LIMIT REACHED, CONNECTION LOST and HEARTBEAT LOST;
only the two losses count as a crash of the tasks that were running there."""

import signal
import subprocess

from conftest import wait_until


def wait_exit(process, timeout=30):
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the worker did not exit within {timeout}s") from None


def offline(hq_env, worker_id, timeout=30):
    """The JSON of worker `worker_id` once `hq worker list --filter offline` lists it."""
    def listed():
        for w in hq_env.json(["worker", "list", "--filter", "offline"]):
            if w["id"] == worker_id:
                return w
        return None
    return wait_until(listed, timeout=timeout, message=f"worker {worker_id} to be offline")


def human_state(hq_env, worker_id):
    """The State of `hq worker info` for people."""
    for line in hq_env.command(["worker", "info", str(worker_id)]).splitlines():
        if line.startswith("State:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no State line")


def running_task(hq_env, worker):
    """Submits a long task and waits until it runs on `worker`; returns the job id."""
    job = hq_env.submit(["--stdout", "none", "--stderr", "none", "--", "sleep", "300"])
    t = hq_env.wait_for_task_state(job, 0, "running")
    assert t["worker"] == worker.worker_id
    return job


def requeued(hq_env, job):
    def waiting():
        [t] = hq_env.tasks(job)
        return t if t["state"] == "waiting" else None
    return wait_until(waiting, message="the task back to waiting")


def test_running_worker_is_running(hq_env):
    hq_env.start_server()
    w = hq_env.start_worker(1)
    assert hq_env.json(["worker", "info", str(w.worker_id)])["state"] == "running"
    assert human_state(hq_env, w.worker_id) == "RUNNING"
    table = hq_env.command(["worker", "list"])
    assert "RUNNING" in table.splitlines()[1]


def test_server_idle_timeout_stops_an_idle_worker(hq_env):
    hq_env.start_server("--idle-timeout", "500ms")
    # No --idle-timeout of its own: the server's applies (it stops before a poll may see it).
    w = hq_env.start_worker(1, wait=False)
    assert wait_exit(w) == 0, hq_env.log_of(w)
    [listed] = hq_env.json(["worker", "list", "--filter", "offline"])
    assert listed["state"] == "idle_timeout" and listed["end_reason"] == "idle timeout"
    assert "IDLE TIMEOUT" in hq_env.command(["worker", "list", "--filter", "offline"])
    assert human_state(hq_env, listed["id"]) == "IDLE TIMEOUT"


def test_worker_own_idle_timeout_wins_over_the_servers(hq_env):
    hq_env.start_server("--idle-timeout", "300ms")
    w = hq_env.start_worker(1, "--idle-timeout", "1h")
    # Busy, then idle again: it would be gone by now with the server's 300ms.
    job = hq_env.submit(["--", "true"])
    assert hq_env.wait_job(job) == 0
    short = hq_env.start_worker(1, wait=False)
    assert wait_exit(short) == 0
    assert w.poll() is None and w.worker_id in hq_env.connected_workers()


def test_time_limit_reached(hq_env):
    hq_env.start_server()
    # Long enough to register first on a loaded machine (it counts from the worker's start).
    w = hq_env.start_worker(1, "--time-limit", "3s", wait=False)
    assert wait_exit(w) == 0, hq_env.log_of(w)
    [listed] = hq_env.json(["worker", "list", "--all"])
    assert listed["state"] == "time_limit_reached"
    assert "TIME LIMIT REACHED" in hq_env.command(["worker", "list", "--all"])
    assert human_state(hq_env, listed["id"]) == "TIME LIMIT REACHED"


def test_worker_stop_is_stopped_and_no_crash(hq_env):
    hq_env.start_server()
    w = hq_env.start_worker(1)
    job = running_task(hq_env, w)
    hq_env.command(["worker", "stop", str(w.worker_id)])
    assert wait_exit(w) == 0
    listed = offline(hq_env, w.worker_id)
    assert listed["state"] == "stopped"
    assert "STOPPED" in hq_env.command(["worker", "list", "--filter", "offline"])
    assert human_state(hq_env, w.worker_id) == "STOPPED"
    t = requeued(hq_env, job)
    assert t["crash_count"] == 0 and t["instance"] == 1


def test_sigterm_of_the_worker_is_stopped_and_no_crash(hq_env):
    hq_env.start_server()
    w = hq_env.start_worker(1)
    job = running_task(hq_env, w)
    w.send_signal(signal.SIGTERM)
    assert wait_exit(w) == 0
    assert offline(hq_env, w.worker_id)["state"] == "stopped"
    assert requeued(hq_env, job)["crash_count"] == 0


def test_sigkilled_worker_is_connection_lost_and_a_crash(hq_env):
    hq_env.start_server()
    w = hq_env.start_worker(1)
    job = running_task(hq_env, w)
    hq_env.kill(w)
    listed = offline(hq_env, w.worker_id)
    assert listed["state"] == "connection_lost"
    assert listed["end_reason"].startswith("connection lost")
    assert "CONNECTION LOST" in hq_env.command(["worker", "list", "--filter", "offline"])
    assert human_state(hq_env, w.worker_id) == "CONNECTION LOST"
    assert requeued(hq_env, job)["crash_count"] == 1


def test_frozen_worker_with_a_short_heartbeat_is_heartbeat_lost(hq_env):
    # The server's default is far longer than the test waits: only the worker's own
    # --heartbeat can get it declared lost in time.
    hq_env.start_server("--heartbeat", "1h")
    w = hq_env.start_worker(1, "--heartbeat", "200ms")
    job = running_task(hq_env, w)
    w.send_signal(signal.SIGSTOP)
    try:
        listed = offline(hq_env, w.worker_id, timeout=20)
        assert listed["state"] == "heartbeat_lost", listed
        assert listed["end_reason"].startswith("heartbeat lost"), listed
        assert "HEARTBEAT LOST" in hq_env.command(["worker", "list", "--all"])
        assert human_state(hq_env, w.worker_id) == "HEARTBEAT LOST"
        assert requeued(hq_env, job)["crash_count"] == 1
    finally:
        w.send_signal(signal.SIGCONT)


def test_worker_heartbeat_is_validated(hq_env):
    err = hq_env.command(["worker", "start", "--heartbeat", "10ms"], expect_fail=True)
    assert "--heartbeat must be at least 100ms" in err
