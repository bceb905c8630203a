"""Allocation queues (`hq alloc add|list|info|log|pause|resume|remove`) against the local SLURM:
the server submits allocations while tasks wait, their workers run the tasks and leave when
idle, and nothing is left in SLURM."""

import json
import time

import pytest
from conftest import wait_until

# The one local SLURM cluster is shared: its tests run in one xdist worker, one at a time.
pytestmark = pytest.mark.xdist_group("slurm")


def slurm_server(hq_env, slurm):
    """A server whose batch commands reach the local SLURM."""
    hq_env.env.update(slurm.env)
    hq_env.start_server()


def queue_info(hq_env, queue):
    return hq_env.json(["alloc", "info", str(queue)])


def allocation_ids(hq_env, queue):
    return [a["id"] for a in queue_info(hq_env, queue)["allocations"]]


def add_queue(hq_env, *args):
    out = hq_env.command(["--output-mode", "quiet", "alloc", "add", "slurm", *args])
    return int(out.strip())


def test_queue_runs_50_tasks_with_no_hand_started_worker(hq_env, slurm):
    slurm_server(hq_env, slurm)
    queue = add_queue(hq_env, "--time-limit", "10m", "--idle-timeout", "3s", "--cpus", "1",
                      "--backlog", "2", "--max-worker-count", "2", "--name", "fifty")
    assert [q["id"] for q in hq_env.json(["alloc", "list"])] == [queue]
    assert slurm.active_jobs() == []  # the dry run left nothing; no task waits yet

    job = hq_env.submit(["--array", "1-50", "--", "bash", "-c", "echo $SLURM_JOB_ID"])
    # Allocations appear in squeue, and their workers connect.
    ids = wait_until(lambda: allocation_ids(hq_env, queue), timeout=60,
                     message="the queue to submit an allocation")
    assert set(ids) & set(slurm.active_jobs()) or all(
        slurm.state(i) in ("COMPLETED", "COMPLETING") for i in ids), ids
    assert hq_env.wait_job(job, timeout=300) == 0

    # Every task ran inside one of the queue's allocations.
    info = queue_info(hq_env, queue)
    submitted = {a["id"] for a in info["allocations"]}
    outputs = {(hq_env.work / f"job-{job}" / f"{t}.stdout").read_text().strip()
               for t in range(1, 51)}
    assert outputs <= submitted, (outputs, submitted)
    assert len(submitted) <= 4, info  # bounded by the backlog and the worker count
    assert any(a["worker_ids"] for a in info["allocations"]), info

    # Idle workers leave, their allocations end, and SLURM has nothing left.
    wait_until(lambda: not hq_env.json(["worker", "list"]), timeout=120,
               message="the idle workers to leave")
    wait_until(lambda: slurm.active_jobs() == [], timeout=120,
               message="every allocation to end in SLURM")

    def all_ended():
        states = [a["state"] for a in queue_info(hq_env, queue)["allocations"]]
        return all(s in ("finished", "failed") for s in states) and states
    states = wait_until(all_ended, timeout=60, message="the queue to see its allocations end")
    assert "finished" in states, states
    # The allocation's output is there for `hq alloc log`.
    first = sorted(submitted, key=int)[0]
    hq_env.command(["alloc", "log", first, "stderr"])
    hq_env.command(["alloc", "remove", str(queue)])
    assert hq_env.json(["alloc", "list"]) == []


def test_wrong_sbatch_arguments_fail_at_alloc_add_with_sbatchs_error(hq_env, slurm):
    slurm_server(hq_env, slurm)
    err = hq_env.command(["alloc", "add", "slurm", "--time-limit", "10m", "--",
                          "--partition=nope"], expect_fail=True)
    assert "the allocation queue was not added" in err, err
    assert "Invalid partition name specified" in err, err
    assert hq_env.json(["alloc", "list"]) == []
    assert slurm.active_jobs() == []


def test_tasks_waiting_on_dependencies_make_no_allocation(hq_env, slurm):
    slurm_server(hq_env, slurm)
    hq_env.start_worker(cpus=1)
    gate = hq_env.work / "go"
    lines = ["[[task]]", "id = 1",
             'command = ["bash", "-c", "while [ ! -e go ]; do sleep 0.05; done"]', ""]
    for i in range(2, 12):
        # Long enough that the one worker is still busy with them at the queue's next look.
        lines += ["[[task]]", f"id = {i}", 'command = ["sleep", "1"]', "deps = [1]", ""]
    path = hq_env.work / "chain.toml"
    path.write_text("\n".join(lines) + "\n")
    job = int(hq_env.command(["--output-mode", "quiet", "job", "submit-file",
                              str(path)]).strip())
    hq_env.wait_for_task_state(job, 1, "running")
    queue = add_queue(hq_env, "--time-limit", "10m", "--idle-timeout", "2s", "--cpus", "1",
                      "--no-dry-run")
    # Ten tasks wait, all on a dependency: over several refreshes, nothing is submitted.
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        info = queue_info(hq_env, queue)
        assert info["allocations"] == [] and info["demand"] == 0, info
        assert slurm.active_jobs() == []
        time.sleep(0.5)
    # Once the dependency finished, they are ready: more than the one worker holds, so the
    # queue asks for a worker.
    gate.write_text("")
    wait_until(lambda: allocation_ids(hq_env, queue), timeout=60,
               message="an allocation once the tasks are ready")
    assert hq_env.wait_job(job, timeout=300) == 0
    hq_env.command(["alloc", "remove", "--force", str(queue)])
    wait_until(lambda: slurm.active_jobs() == [], timeout=60,
               message="the removed queue's allocations to end")


def test_requests_no_queue_worker_could_run_are_explained(hq_env, slurm):
    slurm_server(hq_env, slurm)
    queue = add_queue(hq_env, "--time-limit", "10m", "--cpus", "1", "--no-dry-run")
    hq_env.submit(["--cpus", "4", "--", "true"])
    info = wait_until(lambda: (lambda i: i if i["unfit"] else None)(queue_info(hq_env, queue)),
                      timeout=30, message="the queue to explain the task it cannot serve")
    assert "needs 4" in info["unfit"][0], info
    assert info["allocations"] == [] and info["demand"] == 0, info
    out = hq_env.command(["alloc", "info", str(queue)])
    assert "Never on its workers" in out, out
    assert slurm.active_jobs() == []


def test_pause_resume_and_remove_cancel_allocations(hq_env, slurm):
    slurm_server(hq_env, slurm)
    # The workers never start (the start command blocks): allocations stay running.
    queue = add_queue(hq_env, "--time-limit", "10m", "--cpus", "1", "--no-dry-run",
                      "--worker-start-cmd", "sleep 600")
    hq_env.command(["alloc", "pause", str(queue)])
    assert queue_info(hq_env, queue)["state"] == "paused"
    hq_env.submit(["--", "true"])
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert queue_info(hq_env, queue)["allocations"] == []
        time.sleep(0.5)
    hq_env.command(["alloc", "resume", str(queue)])
    [alloc] = wait_until(lambda: allocation_ids(hq_env, queue), timeout=60,
                         message="an allocation after resume")
    assert alloc in slurm.active_jobs()
    hq_env.command(["alloc", "remove", str(queue)])
    assert hq_env.json(["alloc", "list"]) == []
    wait_until(lambda: alloc not in slurm.active_jobs(), timeout=60,
               message="remove to cancel the allocation")
    err = hq_env.command(["alloc", "info", str(queue)], expect_fail=True)
    assert f"allocation queue {queue} not found" in err, err


def test_queue_whose_allocations_fail_pauses_itself_with_the_error(hq_env, slurm):
    slurm_server(hq_env, slurm)
    # `false hq worker start ...`: every allocation fails before a worker connects.
    queue = add_queue(hq_env, "--time-limit", "10m", "--cpus", "1", "--no-dry-run",
                      "--worker-wrap-cmd", "false")
    hq_env.submit(["--", "true"])
    info = wait_until(lambda: (lambda i: i if i["state"] == "paused" else None)(
        queue_info(hq_env, queue)), timeout=180, message="the queue to pause itself")
    assert "ended before any worker connected" in info["pause_reason"], info
    assert "FAILED" in info["pause_reason"], info
    assert len(info["allocations"]) == 3, info
    assert all(a["state"] == "failed" for a in info["allocations"]), info
    out = hq_env.command(["alloc", "info", str(queue)])
    assert "Paused because" in out, out
    # Paused, it submits nothing more.
    assert slurm.active_jobs() == []
    hq_env.command(["alloc", "remove", str(queue)])


def test_a_server_kill_keeps_the_queues_and_adopts_the_running_allocation(hq_env, slurm):
    """kill -9 of the server while an allocation's worker runs a task: the restarted server has
    the queue (and a paused one, still paused), finds the allocation again instead of submitting
    another, its worker reattaches, and the task runs once."""
    slurm_server(hq_env, slurm)
    # A group of its own: the server matches workers to allocations by their batch job.
    queue = add_queue(hq_env, "--time-limit", "10m", "--idle-timeout", "3s", "--cpus", "1",
                      "--max-worker-count", "1", "--no-dry-run", "--name", "adopted",
                      "--group", "adopters")
    paused = add_queue(hq_env, "--time-limit", "5m", "--no-dry-run", "--name", "idle")
    hq_env.command(["alloc", "pause", str(paused)])
    marks = hq_env.work / "marks"
    job = hq_env.submit(["--", "bash", "-c",
                         f"echo $HQ_INSTANCE_ID >> {marks}; "
                         "while [ ! -e go ]; do sleep 0.05; done"])
    [alloc] = wait_until(lambda: allocation_ids(hq_env, queue), timeout=60,
                         message="the queue to submit an allocation")
    hq_env.wait_for_task_state(job, 0, "running", timeout=120)
    [worker] = hq_env.json(["worker", "list"])
    assert worker["configuration"]["group"] == "adopters", worker
    assert queue_info(hq_env, queue)["allocations"][0]["worker_ids"] == [worker["id"]]

    hq_env.kill(hq_env.server)
    assert alloc in slurm.active_jobs()
    hq_env.start_server()
    queues = {q["id"]: q for q in hq_env.json(["alloc", "list"])}
    assert sorted(queues) == [queue, paused]
    assert queues[paused]["state"] == "paused"
    assert queues[queue]["state"] == "active"
    assert allocation_ids(hq_env, queue) == [alloc]
    # The worker comes back with its task; the allocation is running again, and no other is
    # submitted while it serves the queue's one worker.
    wait_until(lambda: [w["id"] for w in hq_env.json(["worker", "list"])] == [worker["id"]],
               timeout=60, message="the allocation's worker to reattach")
    wait_until(lambda: queue_info(hq_env, queue)["allocations"][0]["state"] == "running",
               timeout=60, message="the restarted server to see its allocation running")
    (hq_env.work / "go").write_text("")
    assert hq_env.wait_job(job, timeout=120) == 0
    assert marks.read_text().split() == ["0"]
    assert allocation_ids(hq_env, queue) == [alloc]
    # Idle, the worker leaves and the allocation ends; removing the queues leaves SLURM empty.
    wait_until(lambda: slurm.active_jobs() == [], timeout=120,
               message="the adopted allocation to end")
    wait_until(lambda: queue_info(hq_env, queue)["allocations"][0]["state"] == "finished",
               timeout=60, message="the queue to see its allocation end")
    hq_env.command(["alloc", "remove", str(queue)])
    hq_env.command(["alloc", "remove", str(paused)])
    assert hq_env.json(["alloc", "list"]) == []
    # Removed queues stay removed across a restart.
    hq_env.kill(hq_env.server)
    hq_env.start_server()
    assert hq_env.json(["alloc", "list"]) == []
    # The journal tells the whole story, in docs/json.md's form.
    events = [json.loads(line)["event"] for line in
              hq_env.command(["journal", "export"]).splitlines()]
    kinds = [e["type"] for e in events if e["type"].startswith("alloc")]
    for kind in ("alloc-queue-added", "alloc-queue-paused", "allocation-submitted",
                 "allocation-ended", "alloc-queue-removed"):
        assert kind in kinds, kinds
    [added] = [e for e in events if e["type"] == "alloc-queue-added" and e["queue"] == queue]
    assert added["manager"] == "slurm" and added["name"] == "adopted", added
    [ended] = [e for e in events if e["type"] == "allocation-ended"]
    assert ended["allocation"] == alloc and ended["state"] == "finished", ended
