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
