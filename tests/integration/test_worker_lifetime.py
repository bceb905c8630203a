"""Worker lifetime: --time-limit, tasks' --time-request, --group and --on-server-lost."""

import os
import re
import subprocess

from conftest import wait_until


def wait_exit(process, timeout):
    """The exit code of `process`, which must end within `timeout` seconds."""
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the process did not exit within {timeout}s") from None


def gated_task(root, name):
    """A task that writes its PID to ROOT/NAME.pid, waits for ROOT/NAME.go, then writes "done"
    to ROOT/NAME.done."""
    return ["--stdout", "none", "--stderr", "none", "--", "bash", "-c",
            f'echo $$ > {root}/{name}.pid.tmp && mv {root}/{name}.pid.tmp {root}/{name}.pid; '
            f'while [ ! -e {root}/{name}.go ]; do sleep 0.05; done; '
            f'echo done > {root}/{name}.done']


def pid_of(root, name):
    path = root / f"{name}.pid"
    wait_until(path.exists, message=f"{path} to be written")
    return int(path.read_text())


def test_time_limit_stops_the_worker_cleanly_and_requeues_without_a_crash(hq_env):
    hq_env.start_server()
    started = hq_env.root / "started"
    job = hq_env.submit(["--stdout", "none", "--", "bash", "-c", f"touch {started}; sleep 60"])
    # Long enough for a worker started on a loaded machine to get the task before it stops.
    worker = hq_env.start_worker(1, "--time-limit", "10s")
    wait_until(started.exists, message="the task to start")
    assert wait_exit(worker, 30) == 0, hq_env.log_of(worker)

    def requeued():
        [t] = hq_env.tasks(job)
        return t if t["state"] == "waiting" else None
    task = wait_until(requeued, message="the task back to waiting")
    assert task["instance"] == 1
    # A worker that stops at its time limit did not crash: the task is not charged for it.
    assert task["crash_count"] == 0
    [w] = hq_env.json(["worker", "list", "--all"])
    assert w["state"] == "time_limit_reached"


def test_time_request_longer_than_the_worker_lifetime_waits_for_another_worker(hq_env):
    hq_env.start_server()
    short = hq_env.start_worker(2, "--time-limit", "30s")
    job = hq_env.submit(["--time-request", "1h", "--stdout", "none", "--", "true"])
    # A job behind it in the scheduling order (with another request, see the test below) runs
    # on the short-lived worker: the scheduler had its chance to place the first one there.
    other = hq_env.submit(["--cpus", "2", "--stdout", "none", "--", "true"])
    assert hq_env.wait_job(other) == 0
    assert hq_env.tasks(other)[0]["worker"] == short.worker_id
    [t] = hq_env.tasks(job)
    assert t["state"] == "waiting" and "worker" not in t

    explained = hq_env.json(["task", "explain", str(job), "0"])
    [fit] = explained["workers"]
    assert fit["worker"] == short.worker_id
    assert fit["fits"] == "never"
    m = re.fullmatch(r"stops in (\d+) s, before the task's time request of 3600 s", fit["reason"])
    assert m, fit["reason"]
    assert 0 <= int(m.group(1)) <= 30

    long = hq_env.start_worker(1)
    assert hq_env.wait_job(job) == 0
    assert hq_env.tasks(job)[0]["worker"] == long.worker_id


def test_a_job_no_worker_lives_long_enough_for_does_not_block_jobs_behind_it(hq_env):
    hq_env.start_server()
    short = hq_env.start_worker(1, "--time-limit", "60s")
    blocked = hq_env.submit(["--time-request", "1h", "--stdout", "none", "--", "true"])
    job = hq_env.submit(["--stdout", "none", "--", "true"])  # the same request: cpus=1
    assert hq_env.wait_job(job, timeout=20) == 0
    assert hq_env.tasks(job)[0]["worker"] == short.worker_id
    assert hq_env.tasks(blocked)[0]["state"] == "waiting"


def test_time_request_within_the_worker_lifetime_runs_there(hq_env):
    hq_env.start_server()
    worker = hq_env.start_worker(1, "--time-limit", "60s")
    job = hq_env.submit(["--time-request", "2s", "--stdout", "none", "--", "true"])
    assert hq_env.wait_job(job) == 0
    [t] = hq_env.tasks(job)
    assert t["state"] == "finished" and t["worker"] == worker.worker_id
    [fit] = hq_env.json(["task", "explain", str(job), "0"])["workers"]
    assert "stops in" not in fit["reason"]


def test_group_is_listed(hq_env):
    hq_env.start_server()
    gpu = hq_env.start_worker(1, "--group", "gpu-nodes")
    plain = hq_env.start_worker(1)
    groups = {w["id"]: w["configuration"]["group"] for w in hq_env.json(["worker", "list"])}
    assert groups == {gpu.worker_id: "gpu-nodes", plain.worker_id: "default"}


def test_finish_running_lets_the_running_task_end_after_the_server_is_lost(hq_env):
    root = hq_env.root
    hq_env.start_server()
    worker = hq_env.start_worker(1, "--on-server-lost", "finish-running")
    job = hq_env.submit(gated_task(root, "a"))
    hq_env.wait_for_task_state(job, 0, "running")
    pid_of(root, "a")
    # Waiting behind it: must never start once the server is gone.
    later = root / "later"
    hq_env.submit(["--stdout", "none", "--", "touch", str(later)])

    hq_env.kill(hq_env.server)
    wait_until(lambda: "letting 1 running task(s) finish" in hq_env.log_of(worker),
               message="the worker to notice the lost server and drain")
    assert worker.poll() is None, hq_env.log_of(worker)
    assert not (root / "a.done").exists()
    (root / "a.go").touch()
    wait_until((root / "a.done").exists, message="the running task to reach its end")
    assert wait_exit(worker, 15) == 1, hq_env.log_of(worker)
    assert (root / "a.done").read_text() == "done\n"
    assert not later.exists()


def test_stop_on_server_lost_kills_the_running_task(hq_env):
    root = hq_env.root
    hq_env.start_server()
    worker = hq_env.start_worker(1, "--on-server-lost", "stop")
    job = hq_env.submit(gated_task(root, "a"))
    hq_env.wait_for_task_state(job, 0, "running")
    pid = pid_of(root, "a")

    hq_env.kill(hq_env.server)
    assert wait_exit(worker, 15) == 1, hq_env.log_of(worker)
    (root / "a.go").touch()
    # The worker killed and reaped the task before it exited: it cannot write its marker.
    try:
        os.kill(pid, 0)
        raise AssertionError(f"the task (pid {pid}) outlived its worker")
    except ProcessLookupError:
        pass
    assert not (root / "a.done").exists()


def test_on_server_lost_rejects_an_unknown_mode(hq_env):
    err = hq_env.command(["worker", "start", "--cpus", "1", "--on-server-lost", "maybe"],
                         expect_fail=True)
    assert "--on-server-lost" in err
    assert "maybe" in err
