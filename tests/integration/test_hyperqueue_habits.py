"""What a HyperQueue user types works as they expect: global flags in front of any command,
HyperQueue's value spellings and command names."""

import json
import re


def test_global_flags_before_server_start_and_a_job_through_it(hq_env):
    # HyperQueue's global flags in front: accepted, and --debug logs at debug level.
    hq_env.server = hq_env._spawn("server", ["--colors", "never", "--debug", "--server-dir",
                                             str(hq_env.server_dir), "server", "start",
                                             "--host", "127.0.0.1"])
    from conftest import wait_until
    wait_until(lambda: hq_env.run(["server", "info"]).returncode == 0,
               message="the server to answer")
    hq_env.start_worker(1)
    job = hq_env.submit(["--", "true"])
    assert hq_env.wait_job(job) == 0
    out = hq_env.command(["--colors", "always", "--server-dir", str(hq_env.server_dir),
                          "job", "info", str(job)])
    assert str(job) in out
    log = hq_env.log_of(hq_env.server)
    assert "debug]" in log, log[:2000]
    # --colors never: no escape codes in the log, even with colour sinks.
    assert "\x1b[" not in log
    bad = hq_env.command(["--colors", "sometimes", "server", "info"], expect_fail=True)
    assert "--colors" in bad


def test_version(hq_env):
    out = hq_env.command(["--version"])
    assert re.fullmatch(r"hq \d+\.\d+\.\d+\n", out), out


def test_numbers_with_underscores_and_durations_in_hyperqueue_spelling(hq_env):
    hq_env.start_server()
    job = hq_env.submit(["--array", "1-10_000", "--time-limit", "1h 30m", "--", "true"])
    assert hq_env.job(job)["task_stats"]["waiting"] == 10_000
    job2 = hq_env.submit(["--time-limit", "00:10:00", "--", "true"])
    assert hq_env.job(job2)["task_stats"]["waiting"] == 1
    err = hq_env.command(["submit", "--time-limit", "00:61:00", "--", "true"], expect_fail=True)
    assert "invalid --time-limit" in err


def test_output_log_is_hyperqueues_name_of_output(hq_env):
    hq_env.start_server()
    hq_env.start_worker(1)
    stream = hq_env.root / "stream"
    job = hq_env.submit(["--array", "1-3", "--stream", str(stream), "--", "bash", "-c",
                         'echo "out $HQ_TASK_ID"; echo "err $HQ_TASK_ID" >&2'])
    assert hq_env.wait_job(job) == 0
    # HyperQueue: hq output-log DIR cat JOB stdout|stderr [--task ...]
    out = hq_env.command(["output-log", str(stream), "cat", str(job), "stdout", "--task", "3,1"])
    assert out == "out 3\nout 1\n"
    err = hq_env.command(["output-log", str(stream), "cat", str(job), "stderr"])
    assert err == "err 1\nerr 2\nerr 3\n"
    # The same as hq's own spelling.
    assert hq_env.command(["output-log", str(stream), "summary"]) == \
        hq_env.command(["output", "summary", str(stream)])
    jobs = hq_env.json(["output-log", str(stream), "jobs"])
    assert jobs == hq_env.json(["output", "jobs", str(stream)])


def test_server_wait_and_worker_wait(hq_env):
    import subprocess
    # `hq server wait` started before the server returns once it answers.
    waiter = subprocess.Popen([__import__("conftest").HQ_BIN, "server", "wait"], env=hq_env.env,
                              cwd=hq_env.work, stdout=subprocess.PIPE, text=True)
    hq_env.start_server()
    assert waiter.wait(timeout=60) == 0
    # `hq worker wait 2` returns once two workers are connected, not before.
    worker_waiter = subprocess.Popen([__import__("conftest").HQ_BIN, "worker", "wait", "2"],
                                     env=hq_env.env, cwd=hq_env.work, stdout=subprocess.PIPE,
                                     text=True)
    hq_env.start_worker(1)
    assert worker_waiter.poll() is None or len(hq_env.connected_workers()) >= 2
    hq_env.start_worker(1)
    assert worker_waiter.wait(timeout=60) == 0
    assert len(hq_env.connected_workers()) == 2


def test_server_wait_times_out_with_a_clear_error(hq_env):
    err = hq_env.command(["server", "wait", "--timeout", "300ms"], expect_fail=True)
    assert "no server answered" in err


def test_worker_selectors_filter_and_address(hq_env):
    hq_env.start_server()
    w1 = hq_env.start_worker(1, "--hostname", "node-a")
    hq_env.start_worker(1, "--hostname", "node-b")
    w3 = hq_env.start_worker(1, "--hostname", "node-c")
    assert hq_env.command(["worker", "address", "last"]) == "node-c\n"
    assert hq_env.command(["worker", "address", str(w1.worker_id)]) == "node-a\n"
    infos = hq_env.json(["worker", "info", "1-2"])
    assert [w["id"] for w in infos] == [1, 2]
    one = hq_env.json(["worker", "info", "last"])
    assert one["id"] == w3.worker_id
    assert one["pid"] == w3.pid  # the worker's own process id
    assert f"{w3.pid}" in hq_env.command(["worker", "info", str(w3.worker_id)])
    assert [w["id"] for w in hq_env.json(["worker", "info", "all"])] == [1, 2, 3]
    hq_env.command(["worker", "stop", "last"])
    from conftest import wait_until
    wait_until(lambda: [w["id"] for w in hq_env.json(["worker", "list", "--filter", "offline"])]
               == [3], message="worker 3 offline")
    assert [w["id"] for w in hq_env.json(["worker", "list", "--filter", "running"])] == [1, 2]
    err = hq_env.command(["worker", "info", "9-12"], expect_fail=True)
    assert "no worker matches '9-12'" in err


def completion_of(hq_env, shell, line):
    """Loads `hq generate-completion SHELL` in that shell and returns what it offers for the
    last word of `line`."""
    import subprocess
    script = hq_env.root / f"hq.{shell}"
    script.write_text(hq_env.command(["generate-completion", shell]))
    words = line.split(" ")
    if shell == "bash":
        code = (f"source {script}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _hq; "
                'printf "%s\\n" "${COMPREPLY[@]}"')
        args = ["bash", "-c", code]
    elif shell == "zsh":
        # The real compadd filters by the typed prefix; this one prints what it is offered.
        code = (f"source {script}; compadd() {{ shift; print -l -- \"$@\"; }}; "
                f"words=({line}); CURRENT={len(words)}; _hq")
        args = ["zsh", "-c", code]
    else:
        args = ["fish", "-c", f"source {script}; complete -C '{line}'"]
    p = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    offered = [w.split("\t")[0] for w in p.stdout.split("\n") if w]
    prefix = words[-1]
    return [w for w in offered if w.startswith(prefix)]


def test_generated_completion_loads_in_each_shell_and_completes(hq_env):
    for shell in ["bash", "zsh", "fish"]:
        assert completion_of(hq_env, shell, "hq jo") == ["job", "journal"], shell
        assert completion_of(hq_env, shell, "hq --server-dir d job li") == ["list"], shell
        assert completion_of(hq_env, shell, "hq worker list --fi") == ["--filter"], shell
        # Made from the command tree: the newest commands are in it too.
        assert completion_of(hq_env, shell, "hq generate-") == ["generate-completion"], shell
    err = hq_env.command(["generate-completion", "tcsh"], expect_fail=True)
    assert "tcsh" in err


def test_commands_about_nothing_say_so_and_json_mode_prints_the_error(hq_env):
    hq_env.start_server()
    p = hq_env.run(["job", "info", "last"])
    assert p.returncode == 1 and "there is no job yet" in p.stderr
    p = hq_env.run(["--output-mode", "json", "job", "info", "99"])
    assert p.returncode == 1
    assert json.loads(p.stdout) == {"error": "job 99 not found"}


def test_server_start_prints_its_info_table(hq_env):
    server = hq_env.start_server()
    info = hq_env.json(["server", "info"])
    from conftest import wait_until
    log = wait_until(lambda: (lambda t: t if "Client port" in t else None)(hq_env.log_of(server)),
                     message="the info table in the server's output")
    assert re.search(rf"Client port:\s+{info['client_port']}\b", log), log
    assert re.search(rf"Server UID:\s+{info['server_uid']}\b", log), log


def env_of(hq_env, job, task=0):
    """The variables task `task` of `job` printed with `env` (NAME=VALUE lines)."""
    text = (hq_env.work / f"job-{job}" / f"{task}.stdout").read_text()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_task_environment_is_named_and_formed_as_in_hyperqueue(hq_env):
    hq_env.start_server()
    hq_env.start_worker("2x2", "--resource", "gpus=[0,1,2]",
                        "--resource", "gpus/nvidia=[4,5]", "--resource", "mem=sum(1_000)")
    # 1.5 GPUs: one whole GPU and half of another, listed last.
    job = hq_env.submit(["--resource", "gpus=1.5 compact", "--resource", "gpus/nvidia=1",
                         "--resource", "mem=250", "--", "env"])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    env = env_of(hq_env, job)
    assert env["HQ_RESOURCE_REQUEST_gpus"] == "1.5 compact"
    values = env["HQ_RESOURCE_VALUES_gpus"].split(",")
    assert len(values) == 2 and set(values) <= {"0", "1", "2"} and values[0] != values[1], values
    # The resource name keeps its case; '/' becomes '_'.
    assert env["HQ_RESOURCE_REQUEST_gpus_nvidia"] == "1 compact"
    assert env["HQ_RESOURCE_VALUES_gpus_nvidia"] in ("4", "5")
    assert env["CUDA_VISIBLE_DEVICES"] == env["HQ_RESOURCE_VALUES_gpus_nvidia"]
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"
    assert env["HQ_RESOURCE_REQUEST_mem"] == "250 compact"
    assert env["HQ_RESOURCE_REQUEST_cpus"] == "1 compact"
    assert env["HQ_CPUS"] == env["HQ_RESOURCE_VALUES_cpus"]
    assert env["OMP_NUM_THREADS"] == "1"
    assert "HQ_RESOURCE_REQUEST_GPUS" not in env and "HQ_RESOURCE_VALUES_CPUS" not in env
    assert "HQ_PIN" not in env and "OMP_PLACES" not in env

    # Two CPUs scattered over the two groups, pinned through OpenMP's variables.
    job = hq_env.submit(["--cpus", "2 scatter", "--pin", "omp", "--", "env"])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    env = env_of(hq_env, job)
    assert env["HQ_RESOURCE_REQUEST_cpus"] == "2 scatter"
    cpus = [int(c) for c in env["HQ_CPUS"].split(",")]
    assert sorted(c // 2 for c in cpus) == [0, 1], cpus  # one from each group
    assert env["OMP_NUM_THREADS"] == "2"
    assert env["OMP_PLACES"] == "{" + env["HQ_CPUS"] + "}"
    assert env["OMP_PROC_BIND"] == "close"
    assert env["HQ_PIN"] == "omp"

    # A job's own OpenMP settings win.
    job = hq_env.submit(["--cpus", "2", "--pin", "omp", "--env", "OMP_PLACES=cores",
                         "--env", "OMP_PROC_BIND=spread", "--", "env"])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    env = env_of(hq_env, job)
    assert env["OMP_PLACES"] == "cores" and env["OMP_PROC_BIND"] == "spread"

    # A share of a CPU: its CPUs are listed (the shared one last), but no thread count.
    job = hq_env.submit(["--cpus", "1.5", "--", "env"])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    env = env_of(hq_env, job)
    assert env["HQ_RESOURCE_REQUEST_cpus"] == "1.5 compact"
    assert len(env["HQ_CPUS"].split(",")) == 2
    assert "OMP_NUM_THREADS" not in env


def test_two_tasks_of_one_and_a_half_gpus_share_a_gpu(hq_env):
    hq_env.start_server()
    hq_env.start_worker("2", "--resource", "gpus=[0,1,2]")
    root = hq_env.root
    # Each task waits (30 s at most) until both have started: they ran at the same time.
    script = (f'touch {root}/started.$HQ_TASK_ID; env; '
              f'for i in $(seq 1500); do [ -e {root}/started.1 ] && [ -e {root}/started.2 ] '
              f'&& exit 0; sleep 0.02; done; exit 1')
    job = hq_env.submit(["--array", "1-2", "--resource", "gpus=1.5", "--", "bash", "-c", script])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    a, b = (env_of(hq_env, job, t)["HQ_RESOURCE_VALUES_gpus"].split(",") for t in (1, 2))
    # Each has a whole GPU of its own, and the last listed (the half) is the same GPU.
    assert a[1] == b[1] and len({a[0], b[0], a[1]}) == 3, (a, b)


def test_a_script_without_the_executable_bit_runs_through_its_shebang(hq_env):
    hq_env.start_server()
    hq_env.start_worker(1)
    script = hq_env.work / "job.sh"
    script.write_text('#!/bin/bash -e\necho "ran by $0 with $# args: $1 $2"\n')
    script.chmod(0o644)
    job = hq_env.submit(["--", "./job.sh", "a b", "c"])
    assert hq_env.wait_job(job) == 0, hq_env.tasks(job)
    out = (hq_env.work / f"job-{job}" / "0.stdout").read_text()
    assert out == "ran by ./job.sh with 2 args: a b c\n", out

    # A plain file, neither executable nor a script: a clear error naming it.
    data = hq_env.work / "data.txt"
    data.write_text("not a program\n")
    data.chmod(0o644)
    job = hq_env.submit(["--", "./data.txt"])
    assert hq_env.wait_job(job) != 0
    [task] = hq_env.tasks(job)
    assert task["state"] == "failed", task
    assert "cannot start './data.txt'" in task["error"], task
    assert "not executable" in task["error"] and "#!" in task["error"], task
    out = hq_env.command(["task", "info", str(job), "0"])
    assert "./data.txt" in out and "not executable" in out, out
