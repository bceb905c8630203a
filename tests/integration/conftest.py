"""Fixtures for black-box tests of the `hq` binary: real servers and workers in temporary
directories, real processes, real TLS on loopback."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

import slurm as local_slurm

ROOT = Path(__file__).resolve().parents[2]
HQ_BIN = os.environ.get("HQ_BIN") or str(ROOT / "build-asan" / "hq")


def wait_until(predicate, timeout=30.0, message="condition", interval=0.02):
    """Polls `predicate` until it returns a truthy value, which is returned; fails at `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


class HqEnv:
    def __init__(self, root: Path):
        self.root = root
        self.server_dir = root / "server"
        self.work = root / "work"
        self.work.mkdir()
        self.processes = []  # (name, Popen, log path)
        self.server = None
        self.env = dict(os.environ)
        self.env["HQ_SERVER_DIR"] = str(self.server_dir)
        self.env.pop("HQ_OUTPUT_MODE", None)
        self.env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        self.env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")

    # --- commands ------------------------------------------------------------------------
    def run(self, args, cwd=None, env=None, timeout=60, server_dir=None):
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        if server_dir is not None:
            full_env["HQ_SERVER_DIR"] = str(server_dir)
        return subprocess.run(
            [HQ_BIN, *args],
            cwd=cwd or self.work,
            env=full_env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def command(self, args, expect_fail=False, **kwargs):
        """Runs `hq ARGS`; returns stdout. Fails the test on an unexpected exit code."""
        p = self.run(args, **kwargs)
        if expect_fail:
            assert p.returncode != 0, f"hq {args} should have failed:\n{p.stdout}\n{p.stderr}"
            return p.stderr
        assert p.returncode == 0, f"hq {args} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}"
        assert "Sanitizer" not in p.stderr, p.stderr
        return p.stdout

    def json(self, args, **kwargs):
        return json.loads(self.command(["--output-mode", "json", *args], **kwargs))

    # --- daemons -------------------------------------------------------------------------
    def _spawn(self, name, args, env=None):
        log = self.root / f"{name}.log"
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        with open(log, "w") as out:
            p = subprocess.Popen(
                [HQ_BIN, *args], cwd=self.work, env=full_env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append((name, p, log))
        return p

    def start_server(self, *args, wait=True, host="127.0.0.1"):
        """`host=None` leaves --host out (it cannot be combined with --access-file)."""
        host_args = ["--host", host] if host else []
        p = self._spawn(f"server{len(self.processes)}", ["server", "start", *host_args, *args])
        self.server = p
        if wait:
            def up():
                if p.poll() is not None:
                    raise AssertionError(f"server exited with {p.returncode}:\n" +
                                         self.log_of(p))
                return self.run(["server", "info"]).returncode == 0
            wait_until(up, message="the server to answer")
        return p

    def connected_workers(self):
        return [w["id"] for w in self.json(["worker", "list"])]

    def start_worker(self, cpus=1, *args, wait=True, env=None):
        before = set(self.connected_workers()) if wait else set()
        p = self._spawn(f"worker{len(self.processes)}",
                        ["worker", "start", "--cpus", str(cpus), *args], env=env)
        if wait:
            def registered():
                if p.poll() is not None:
                    raise AssertionError(f"worker exited with {p.returncode}:\n" +
                                         self.log_of(p))
                new = set(self.connected_workers()) - before
                return new
            new = wait_until(registered, message="the worker to register")
            p.worker_id = max(new)
        return p

    def log_of(self, process):
        for _, p, log in self.processes:
            if p is process:
                return log.read_text()
        return ""

    def kill(self, process, sig=signal.SIGKILL):
        process.send_signal(sig)
        process.wait(timeout=30)

    # --- jobs ----------------------------------------------------------------------------
    def submit(self, args, **kwargs):
        """Submits and returns the job id."""
        out = self.command(["--output-mode", "quiet", "submit", *args], **kwargs)
        return int(out.strip())

    def job_detail(self, job_id):
        """`hq job info` in JSON: the job under "info", its submits, its tasks."""
        [job] = self.json(["job", "info", str(job_id)])
        return job

    def job(self, job_id):
        """The job as `hq job list` shows it (id, name, state, task_stats, ...)."""
        return self.job_detail(job_id)["info"]

    def task_desc(self, job_id):
        """What the job's tasks run: program, resources, pin_mode, time_limit, ..."""
        return self.job_detail(job_id)["submits"][0]["array"]

    def tasks(self, job_id):
        return self.json(["task", "list", str(job_id)])[str(job_id)]

    def wait_job(self, job_id, timeout=60):
        """Waits with `hq job wait`; returns its exit code."""
        return self.run(["job", "wait", str(job_id)], timeout=timeout).returncode

    def run_on_a_dying_worker(self, job_id, task_id, instance):
        """Starts a 1-CPU worker, waits until it runs the task, kills it with SIGKILL and waits
        until the task is back to waiting as `instance` + 1 (or failed); returns the worker."""
        worker = self.start_worker(cpus=1)
        self.wait_for_task_state(job_id, task_id, "running")
        self.kill(worker)

        def requeued():
            t = next(t for t in self.tasks(job_id) if t["id"] == task_id)
            return t["instance"] > instance or t["state"] == "failed"
        wait_until(requeued, message=f"task {job_id}.{task_id} requeued")
        return worker

    def wait_for_task_state(self, job_id, task_id, state, timeout=30):
        def reached():
            for t in self.tasks(job_id):
                if t["id"] == task_id and t["state"] == state:
                    return t
            return None
        return wait_until(reached, timeout, f"task {job_id}.{task_id} to be {state}")

    def close(self):
        for _, p, _ in reversed(self.processes):
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for _, p, _ in self.processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        # Any sanitizer report in a daemon's log fails the test.
        for name, _, log in self.processes:
            text = log.read_text(errors="replace")
            assert "Sanitizer" not in text and "runtime error:" not in text, \
                f"{name} reported a sanitizer error:\n{text}"


@pytest.fixture
def hq_env(tmp_path):
    env = HqEnv(tmp_path)
    yield env
    env.close()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """The local SLURM cluster of this session (tools/local-slurm), started at its first use."""
    reason = local_slurm.unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = local_slurm.LocalSlurm(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def slurm(slurm_cluster):
    """The session's SLURM cluster; jobs a test leaves behind are canceled after it."""
    yield slurm_cluster
    slurm_cluster.cancel_all()
