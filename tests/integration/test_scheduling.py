"""Placing tasks by their resource requests: what the server accepts, what it waits for, and how it
explains itself (`hq task explain`)."""

import re

from conftest import wait_until


def test_task_waits_for_a_worker_that_fits_and_explain_says_why(hq_env):
    hq_env.start_server()
    small = hq_env.start_worker("2")
    job = hq_env.submit(["--cpus", "4", "--stdout", "none", "--", "true"])
    explained = hq_env.json(["task", "explain", str(job), "0"])
    assert explained["state"] == "waiting"
    assert explained["request"] == "cpus=4"
    [fit] = explained["workers"]
    assert fit["worker"] == small.worker_id
    assert fit["fits"] == "never"
    assert fit["reason"] == "needs 4 of cpus, has 2"
    text = hq_env.command(["task", "explain", str(job), "0"])
    assert "needs 4 of cpus, has 2" in text
    # Nothing ran it meanwhile: the task is still waiting, not failed.
    assert hq_env.tasks(job)[0]["state"] == "waiting"
    hq_env.start_worker("4")
    assert hq_env.wait_job(job) == 0


def test_explain_names_a_missing_resource_and_a_busy_worker(hq_env):
    hq_env.start_server()
    hq_env.start_worker("1")
    gpu_job = hq_env.submit(["--resource", "gpus=1", "--stdout", "none", "--", "true"])
    [fit] = hq_env.json(["task", "explain", str(gpu_job), "0"])["workers"]
    assert fit["reason"] == "no resource 'gpus' on this worker"
    blocker = hq_env.submit(["--stdout", "none", "--", "sleep", "60"])
    hq_env.wait_for_task_state(blocker, 0, "running")
    waiting = hq_env.submit(["--stdout", "none", "--", "true"])
    [fit] = hq_env.json(["task", "explain", str(waiting), "0"])["workers"]
    assert fit["fits"] == "later"
    assert fit["reason"] == "needs 1 of cpus, 0 free now"
    err = hq_env.command(["task", "explain", str(waiting), "7"], expect_fail=True)
    assert "has no task 7" in err


def test_worker_list_shows_resources(hq_env):
    hq_env.start_server()
    hq_env.start_worker("2x2", "--resource", "mem=sum(100)", "--resource", "gpus/nvidia=[0,1]",
                        "--detect-resources", "none")
    out = hq_env.command(["worker", "list"])
    assert "cpus 2x2; gpus/nvidia 2; mem 100 MiB" in out, out
    [w] = hq_env.json(["worker", "list"])
    by_name = {r["name"]: r for r in w["configuration"]["resources"]["resources"]}
    assert by_name["cpus"]["groups"] == [["0", "1"], ["2", "3"]]
    assert by_name["mem"] == {"name": "mem", "kind": "sum", "size": 100}
    assert by_name["gpus/nvidia"] == {"name": "gpus/nvidia", "kind": "list", "values": ["0", "1"]}


def test_submit_rejects_bad_requests(hq_env):
    hq_env.start_server()
    cases = [
        (["--cpus", "0"], "the amount must be positive"),
        (["--cpus", "2 packed"], "unknown policy 'packed'"),
        (["--cpus", "1.5 compact!"], "compact! takes whole amounts"),
        (["--resource", "gpus=0.5 tight!"], "tight! takes whole amounts"),
        (["--cpus", "1.00001"], "at most four decimal places"),
        (["--resource", "gpus"], "expected NAME=AMOUNT"),
        (["--resource", "gpus=1", "--resource", "gpus=2"], "'gpus' requested more than once"),
        (["--resource", "cpus=2"], "request CPUs with --cpus"),
        (["--pin", "always"], "invalid --pin 'always'"),
    ]
    for args, message in cases:
        err = hq_env.command(["submit", *args, "--", "true"], expect_fail=True)
        assert message in err, (args, err)
    assert hq_env.json(["job", "list", "--all"]) == []


def test_request_is_shown_and_survives_a_restart(hq_env):
    hq_env.start_server()
    job = hq_env.submit(["--cpus", "2 compact!", "--resource", "gpus=0.5", "--pin", "omp",
                         "--stdout", "none", "--", "true"])
    expected = [{"resource": "cpus", "request": {"ForceCompact": 20000}},
                {"resource": "gpus", "request": {"Compact": 5000}}]
    desc = hq_env.task_desc(job)
    assert desc["resources"][0]["resources"] == expected
    assert desc["pin_mode"] == "openmp"
    hq_env.kill(hq_env.server)
    hq_env.start_server()
    desc = hq_env.task_desc(job)
    assert desc["resources"][0]["resources"] == expected
    assert desc["pin_mode"] == "openmp"
    assert re.search(r"Resources per task:\s+cpus=2 compact!; gpus=0.5\n",
                     hq_env.command(["job", "info", str(job)]))
    hq_env.start_worker("2", "--resource", "gpus=[0]")
    assert hq_env.wait_job(job) == 0


def test_big_task_is_not_starved_by_a_stream_of_small_ones(hq_env):
    """Each small task ends only when the test releases it, one at a time: the big task must run
    after a few releases, however fast or slow the machine, not once the stream drained."""
    hq_env.start_server()
    hq_env.start_worker("2")
    root = hq_env.root
    # A long stream of 1-CPU tasks keeps both CPUs busy...
    small = hq_env.submit(["--array", "1-400", "--stdout", "none", "--", "bash", "-c",
                           f'until [ -e {root}/go.$HQ_TASK_ID ] || [ -e {root}/go.all ]; do '
                           f'sleep 0.02; done'])
    hq_env.wait_for_task_state(small, 1, "running")
    hq_env.wait_for_task_state(small, 2, "running")
    # ...and a 2-CPU task of a higher priority must still run before the stream ends.
    big = hq_env.submit(["--cpus", "2", "--priority", "1", "--stdout", "none", "--", "true"])
    released = set()

    def big_done():
        return hq_env.job(big)["state"] == "finished"

    def running_unreleased():
        return [t["id"] for t in hq_env.tasks(small)
                if t["state"] == "running" and t["id"] not in released]

    try:
        while not big_done():
            assert len(released) < 20, \
                f"the big task did not run while {len(released)} small ones were released"
            # Release one running small task, then wait for its CPU to be given away.
            running = wait_until(lambda: big_done() or running_unreleased(),
                                 message="a running small task or the big one done")
            if running is True:
                break
            task = running[0]
            (root / f"go.{task}").touch()
            released.add(task)
            wait_until(lambda: big_done() or any(
                t["id"] == task and t["state"] == "finished" for t in hq_env.tasks(small)),
                message=f"small task {task} to finish")
        left = hq_env.job(small)["task_stats"]["waiting"]
        assert left >= 400 - 2 - len(released), left
    finally:
        (root / "go.all").touch()


def test_multi_node_task_gets_whole_workers_and_a_node_file(hq_env):
    hq_env.start_server()
    hq_env.start_worker("2", "--hostname", "node-a")
    hq_env.start_worker("2", "--hostname", "node-b")
    hq_env.start_worker("1", "--hostname", "node-c", "--group", "other")
    job = hq_env.submit(["--nodes", "2", "--stdout", "out.txt", "--", "bash", "-c",
                         'echo "$HQ_NUM_NODES $HQ_CPUS"; cat "$HQ_NODE_FILE"'])
    assert hq_env.wait_job(job) == 0
    lines = (hq_env.work / "out.txt").read_text().split()
    assert lines[0] == "2"
    assert lines[1] == "0,1"  # every CPU of the worker it runs on
    assert sorted(lines[2:]) == ["node-a", "node-b"], lines  # one group: never node-c
    assert hq_env.task_desc(job)["resources"][0]["n_nodes"] == 2
    err = hq_env.command(["submit", "--nodes", "2", "--cpus", "2", "--", "true"],
                         expect_fail=True)
    assert "--nodes takes whole workers" in err


def test_multi_node_node_file_has_short_names_and_host_file_full_ones(hq_env):
    """As in HyperQueue: HQ_NODE_FILE lists the nodes' short names (up to the first '.'),
    HQ_HOST_FILE their full names; the node the task runs on comes first in both."""
    hq_env.start_server()
    hq_env.start_worker("1", "--hostname", "cn1.cluster.example.org")
    hq_env.start_worker("1", "--hostname", "cn2.cluster.example.org")
    job = hq_env.submit(["--nodes", "2", "--stdout", "files.txt", "--", "bash", "-c",
                         'echo "$HQ_NUM_NODES"; cat "$HQ_NODE_FILE"; echo --; '
                         'cat "$HQ_HOST_FILE"; [ "$HQ_NODE_FILE" != "$HQ_HOST_FILE" ] && echo two'])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    out = (hq_env.work / "files.txt").read_text().split()
    cut = out.index("--")
    short, full = out[1:cut], out[cut + 1:-1]
    assert out[0] == "2" and out[-1] == "two", out
    assert sorted(short) == ["cn1", "cn2"], out
    assert sorted(full) == ["cn1.cluster.example.org", "cn2.cluster.example.org"], out
    assert [f.split(".")[0] for f in full] == short, out  # the same nodes in the same order


def test_multi_node_task_waits_for_enough_idle_workers(hq_env):
    hq_env.start_server()
    hq_env.start_worker("1")
    job = hq_env.submit(["--nodes", "2", "--stdout", "none", "--", "true"])
    [fit] = hq_env.json(["task", "explain", str(job), "0"])["workers"]
    assert "only 1 of the 2 workers" in fit["reason"], fit
    hq_env.start_worker("1")
    assert hq_env.wait_job(job) == 0


def test_cpu_only_jobs_backfill_while_higher_priority_jobs_wait_for_a_gpu(hq_env):
    hq_env.start_server()
    hq_env.start_worker("10", "--resource", "gpus=[0]")
    release = hq_env.root / "release"
    # The GPU is taken until the test releases it.
    holder = hq_env.submit(["--resource", "gpus=1", "--stdout", "none", "--", "bash", "-c",
                            f"while [ ! -e {release} ]; do sleep 0.05; done"])
    hq_env.wait_for_task_state(holder, 0, "running")
    gpu_jobs = [hq_env.submit(["--resource", "gpus=1", "--priority", str(p), "--stdout", "none",
                               "--", "true"]) for p in (9, 5, 4)]
    cpu_jobs = [hq_env.submit(["--priority", str(i % 3), "--stdout", "none", "--", "true"])
                for i in range(12)]
    # Nine CPUs are free: every CPU-only job runs while the GPU jobs ahead of them wait.
    for job in cpu_jobs:
        assert hq_env.wait_job(job) == 0, f"CPU-only job {job} did not run"
    for job in gpu_jobs:
        assert hq_env.job(job)["state"] == "waiting"
    release.touch()
    for job in [holder, *gpu_jobs]:
        assert hq_env.wait_job(job) == 0
    # The GPU jobs ran in priority order.
    starts = [hq_env.tasks(job)[0]["started_at"] for job in gpu_jobs]
    assert starts == sorted(starts), starts
