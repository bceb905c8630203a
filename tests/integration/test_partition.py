"""A worker behind a real network link that goes down and comes back: the worker runs in a
network namespace of the test's own, joined to the server's by a veth pair (iproute2). A
partition longer than the heartbeat timeout loses the worker (its tasks wait again as instance
+ 1); when the link returns the worker reconnects, its stale runs are killed there and its late
results are ignored. A partition shorter than the timeout changes nothing."""

import json
import os
import subprocess
import time

import pytest

from conftest import HQ_BIN, wait_until
from test_reattach import alive, marks_of, marker_task, pid_of, task_of


def ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def netns():
    """A namespace with one end of a veth pair; yields (namespace, host-side link, host address).
    Skips, saying why, where namespaces cannot be made (not root, no iproute2)."""
    tag = f"{os.getpid() % 10000}"
    ns, host_if, ns_if = f"hqt{tag}", f"hqh{tag}", f"hqw{tag}"
    subnet = f"10.{77 + os.getpid() % 100}.{os.getpid() % 250}"
    try:
        made = ip("netns", "add", ns, check=False)
    except FileNotFoundError:
        pytest.skip("iproute2 (`ip`) is not installed")
    if made.returncode != 0:
        pytest.skip(f"cannot make a network namespace: {made.stderr.strip()}")
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{subnet}.1/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("netns", "exec", ns, "ip", "addr", "add", f"{subnet}.2/24", "dev", ns_if)
        ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_if, f"{subnet}.1"
    finally:
        ip("link", "del", host_if, check=False)
        ip("netns", "del", ns, check=False)


def start_worker_in(hq_env, ns, cpus, *args):
    """`hq worker start` inside namespace `ns`; returns the Popen with worker_id."""
    before = set(hq_env.connected_workers())
    log = hq_env.root / f"nsworker{len(hq_env.processes)}.log"
    with open(log, "w") as out:
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, HQ_BIN, "worker", "start", "--cpus", str(cpus), *args],
            cwd=hq_env.work, env=hq_env.env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    hq_env.processes.append(("nsworker", p, log))

    def registered():
        if p.poll() is not None:
            raise AssertionError(f"worker exited with {p.returncode}:\n{log.read_text()}")
        return set(hq_env.connected_workers()) - before
    p.worker_id = max(wait_until(registered, message="the namespaced worker to register"))
    return p


def workers_by_id(hq_env):
    return {w["id"]: w for w in hq_env.json(["worker", "list", "--all"])}


def finish_events(hq_env, job):
    hq_env.command(["journal", "flush"])
    events = [json.loads(line) for line in hq_env.command(["journal", "export"]).splitlines()]
    return [(e["event"]["task"], e["event"].get("instance")) for e in events
            if e["event"]["type"] == "task-finished" and e["event"]["job"] == job]


def test_partitions_shorter_and_longer_than_the_heartbeat_timeout(hq_env, netns):
    ns, link, address = netns
    root = hq_env.root
    # Lost after 3 missed heartbeats of 2 s: 6 s of silence.
    hq_env.start_server(host=address)
    # Two CPUs for the tasks held across the partitions, one for probes.
    worker = start_worker_in(hq_env, ns, 3, "--heartbeat", "2s")
    gates = {t: root / f"gate.{t}" for t in (1, 2)}
    job = hq_env.submit(["--array", "1-2", "--stdout", "none", "--stderr", "none", "--",
                         *marker_task(root, "p", gate=f"{root}/gate.$HQ_TASK_ID")])
    for t in (1, 2):
        hq_env.wait_for_task_state(job, t, "running")
    first_pids = {t: pid_of(root, "p", t) for t in (1, 2)}

    # A 1 s partition, well inside the timeout: the worker stays, its tasks run on.
    ip("link", "set", link, "down")
    time.sleep(1)  # the partition itself, not a wait for an event
    ip("link", "set", link, "up")
    # Work given out after the link returns ends there: the connection carries messages again,
    # so the silence before it can no longer count.
    probe = hq_env.submit(["--", "true"])
    assert hq_env.wait_job(probe) == 0
    w = workers_by_id(hq_env)[worker.worker_id]
    assert w["state"] == "running", w
    for t in (1, 2):
        assert task_of(hq_env, job, t)["instance"] == 0
        assert alive(first_pids[t])

    # A partition longer than the timeout: the server loses the worker and both tasks wait again
    # as instance 1; meanwhile task 1 ends on the far side (a result the server never hears).
    ip("link", "set", link, "down")
    wait_until(lambda: workers_by_id(hq_env)[worker.worker_id]["state"] != "running",
               timeout=60, message="the partitioned worker to be lost")
    for t in (1, 2):
        wait_until(lambda: task_of(hq_env, job, t)["instance"] == 1, message=f"task {t} requeued")
    gates[1].touch()
    wait_until((root / "p.1.done").exists, message="task 1 to end behind the partition")
    assert alive(first_pids[2])
    ip("link", "set", link, "up")

    # The worker comes back as a new worker: its stale run of task 2 is killed there, its late
    # result of task 1 is ignored, and both tasks run again as instance 1 on it.
    wait_until(lambda: not alive(first_pids[2]), timeout=120,
               message="the stale run of task 2 to be killed on the reconnected worker")
    gates[2].touch()
    assert hq_env.wait_job(job, timeout=120) == 0
    assert worker.poll() is None, hq_env.log_of(worker)
    for t in (1, 2):
        info = task_of(hq_env, job, t)
        assert info["state"] == "finished" and info["instance"] == 1, info
        assert marks_of(root, "p", t) == ["0", "1"]
    # Each task is recorded finished once, as the instance the server expected.
    finished = finish_events(hq_env, job)
    assert sorted(t for t, _ in finished) == [1, 2], finished
    assert all(instance == 1 for _, instance in finished), finished
