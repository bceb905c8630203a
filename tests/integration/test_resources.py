"""Worker resources: `--cpus` and `--resource` of workers, what tasks get under each policy, the
variables that tell them, GPU sharing, sum resources, and `--pin`."""

import json
import os

# A task that prints its environment as JSON on stdout.
PRINT_ENV = ["python3", "-c", "import json, os; print(json.dumps(dict(os.environ)))"]


def task_env(hq_env, job, task=0):
    """The environment printed by task `task` of `job` (PRINT_ENV or barrier())."""
    return json.loads((hq_env.work / f"job-{job}" / f"{task}.stdout").read_text())


def run_env(hq_env, *submit_args):
    """Submits one PRINT_ENV task, waits for it, returns its environment."""
    job = hq_env.submit([*submit_args, "--", *PRINT_ENV])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    return task_env(hq_env, job)


def barrier(hq_env, count):
    """A task that waits (30 s at most, else fails) until `count` tasks of its job have started,
    then prints its environment: tasks that finish all ran at the same time."""
    script = (
        "import json, os, sys, time\n"
        f"d = os.path.join({str(hq_env.root)!r}, 'barrier-' + os.environ['HQ_JOB_ID'])\n"
        "os.makedirs(d, exist_ok=True)\n"
        "open(os.path.join(d, os.environ['HQ_TASK_ID']), 'w').close()\n"
        "deadline = time.monotonic() + 30\n"
        f"while len(os.listdir(d)) < {count}:\n"
        "    if time.monotonic() > deadline: sys.exit('the other tasks never started')\n"
        "    time.sleep(0.02)\n"
        "print(json.dumps(dict(os.environ)))\n")
    return ["python3", "-c", script]


def cpu_list(text):
    """"0-2,5" -> [0, 1, 2, 5] (the format of /proc/self/status)."""
    out = []
    for part in text.strip().split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def test_cpu_policies_and_variables(hq_env):
    hq_env.start_server()
    hq_env.start_worker("2x2")
    env = run_env(hq_env, "--cpus", "2")
    assert env["HQ_CPUS"] in ("0,1", "2,3")
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["HQ_RESOURCE_REQUEST_cpus"] == "2 compact"
    assert env["HQ_RESOURCE_VALUES_cpus"] == env["HQ_CPUS"]

    env = run_env(hq_env, "--cpus", "2 compact!")
    assert env["HQ_CPUS"] in ("0,1", "2,3")
    assert env["HQ_RESOURCE_REQUEST_cpus"] == "2 compact!"

    env = run_env(hq_env, "--cpus", "2 scatter")
    cpus = [int(c) for c in env["HQ_CPUS"].split(",")]
    assert len(cpus) == 2 and sorted(c // 2 for c in cpus) == [0, 1], cpus
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["HQ_RESOURCE_REQUEST_cpus"] == "2 scatter"

    env = run_env(hq_env, "--cpus", "all")
    assert env["HQ_CPUS"] == "0,1,2,3"
    assert env["OMP_NUM_THREADS"] == "4"
    assert env["HQ_RESOURCE_REQUEST_cpus"] == "all"

    # The job's own OMP_NUM_THREADS wins.
    env = run_env(hq_env, "--cpus", "2", "--env", "OMP_NUM_THREADS=7")
    assert env["OMP_NUM_THREADS"] == "7"


def test_tasks_share_a_worker_on_disjoint_cpus(hq_env):
    hq_env.start_server()
    hq_env.start_worker("2x2")
    job = hq_env.submit(["--array", "1-2", "--cpus", "2", "--", *barrier(hq_env, 2)])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    got = [set(int(c) for c in task_env(hq_env, job, t)["HQ_CPUS"].split(",")) for t in (1, 2)]
    assert sorted(map(sorted, got)) == [[0, 1], [2, 3]], got


def test_nvidia_gpus(hq_env):
    hq_env.start_server()
    # The worker's own CUDA_VISIBLE_DEVICES must not leak into tasks.
    hq_env.start_worker(2, "--resource", "gpus/nvidia=[0,1]",
                        env={"CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "FASTEST_FIRST"})
    env = run_env(hq_env, "--resource", "gpus/nvidia=1")
    assert env["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["HQ_RESOURCE_VALUES_gpus_nvidia"] == env["CUDA_VISIBLE_DEVICES"]
    assert env["HQ_RESOURCE_REQUEST_gpus_nvidia"] == "1 compact"
    env = run_env(hq_env, "--resource", "gpus/nvidia=2")
    assert env["CUDA_VISIBLE_DEVICES"] == "0,1"


def test_tasks_share_a_gpu(hq_env):
    hq_env.start_server()
    # Detected from the worker's environment.
    hq_env.start_worker(2, "--detect-resources", "gpus/nvidia",
                        env={"CUDA_VISIBLE_DEVICES": "0,1"})
    job = hq_env.submit(["--array", "1-2", "--resource", "gpus/nvidia=0.5", "--",
                         *barrier(hq_env, 2)])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    envs = [task_env(hq_env, job, t) for t in (1, 2)]
    assert envs[0]["CUDA_VISIBLE_DEVICES"] in ("0", "1")
    assert envs[0]["CUDA_VISIBLE_DEVICES"] == envs[1]["CUDA_VISIBLE_DEVICES"]
    for env in envs:
        assert env["HQ_RESOURCE_REQUEST_gpus_nvidia"] == "0.5 compact"
        assert env["HQ_RESOURCE_VALUES_gpus_nvidia"] == env["CUDA_VISIBLE_DEVICES"]


def test_amd_gpus(hq_env):
    hq_env.start_server()
    hq_env.start_worker(1, "--resource", "gpus/amd=[[3],[5]]")
    env = run_env(hq_env, "--resource", "gpus/amd=2 scatter")
    assert env["ROCR_VISIBLE_DEVICES"] == "3,5"
    assert env["HQ_RESOURCE_REQUEST_gpus_amd"] == "2 scatter"


def test_sum_resource_limits_concurrency(hq_env):
    hq_env.start_server()
    hq_env.start_worker(2, "--resource", "mem=sum(1000)")
    lock = hq_env.root / "lock"
    # Two tasks holding 600 at once would find the other's lock file and fail.
    script = (
        "import json, os, time\n"
        f"fd = os.open({str(lock)!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY)\n"
        "time.sleep(0.3)\n"
        f"os.close(fd); os.unlink({str(lock)!r})\n"
        "print(json.dumps(dict(os.environ)))\n")
    job = hq_env.submit(["--array", "1-3", "--resource", "mem=600", "--",
                         "python3", "-c", script])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    for t in (1, 2, 3):
        env = task_env(hq_env, job, t)
        assert env["HQ_RESOURCE_VALUES_mem"] == "600"
        assert env["HQ_RESOURCE_REQUEST_mem"] == "600 compact"
        assert env["HQ_RESOURCE_REQUEST_cpus"] == "1 compact"
    # The same worker runs two tasks of 400 at once.
    job = hq_env.submit(["--array", "1-2", "--resource", "mem=400", "--", *barrier(hq_env, 2)])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)


def test_pin(hq_env):
    allowed = sorted(os.sched_getaffinity(0))[:2]
    hq_env.start_server()
    hq_env.start_worker("[" + ",".join(map(str, allowed)) + "]")
    status = "grep Cpus_allowed_list /proc/self/status | cut -f2; echo $HQ_CPUS"

    def pinned(*args):
        job = hq_env.submit([*args, "--", "bash", "-c", status])
        assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
        affinity, hq_cpus = (hq_env.work / f"job-{job}" / "0.stdout").read_text().split()
        return cpu_list(affinity), [int(c) for c in hq_cpus.split(",")]

    affinity, cpus = pinned("--cpus", "1", "--pin", "taskset")
    assert affinity == cpus and len(cpus) == 1 and cpus[0] in allowed
    affinity, cpus = pinned("--cpus", "all", "--pin", "taskset")
    assert affinity == cpus == allowed
    # Without --pin a task runs where the worker may (the worker is not left pinned).
    affinity, cpus = pinned("--cpus", "1")
    assert set(allowed) <= set(affinity)

    env = run_env(hq_env, "--cpus", "all", "--pin", "omp")
    assert env["OMP_PROC_BIND"] == "close"
    # One place holding the task's CPUs, as HyperQueue writes it.
    assert env["OMP_PLACES"] == "{" + ",".join(map(str, allowed)) + "}"
    assert env["HQ_PIN"] == "omp"
    assert env["OMP_NUM_THREADS"] == str(len(allowed))


def test_bad_worker_definitions(hq_env):
    hq_env.start_server()
    cases = [
        (["--cpus", "1", "--resource", "gpus=[0]", "--resource", "gpus=[1]"],
         "resource 'gpus' defined more than once"),
        (["--cpus", "0"], "at least one CPU"),
        (["--cpus", "1", "--resource", "mem=sum(0)"], "resource 'mem' has a zero amount"),
        (["--cpus", "2", "--resource", "cpus=[0,1]"], "--cpus and by --resource cpus"),
        (["--detect-resources", "none"], "the worker has no CPUs"),
        (["--cpus", "1", "--resource", "gpus=banana"], "invalid value 'banana'"),
    ]
    for args, message in cases:
        p = hq_env.run(["worker", "start", *args], timeout=30)
        assert p.returncode == 1, (args, p.stdout, p.stderr)
        assert message in p.stdout + p.stderr, (args, p.stdout, p.stderr)
    assert hq_env.connected_workers() == []
