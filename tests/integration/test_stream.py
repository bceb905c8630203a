"""Output streams: `hq submit --stream DIR` on real workers, read back with `hq output`."""

import os
import re
import signal

from conftest import wait_until

ECHO_BOTH = 'echo "out $HQ_TASK_ID"; echo "err $HQ_TASK_ID" >&2'


def output(hq_env, *args):
    return hq_env.command(["output", *[str(a) for a in args]])


def summary(hq_env, stream):
    return hq_env.json(["output", "summary", str(stream)])["summary"]


def wait_for_streamed(hq_env, stream, job, text):
    """Waits until the unfinished output of `job` in `stream` shows `text` (the worker flushes
    running tasks' output within a second)."""
    def shown():
        p = hq_env.run(["output", "cat", str(stream), str(job), "--allow-unfinished"])
        return p.returncode == 0 and text in p.stdout
    wait_until(shown, message=f"'{text}' in the stream of job {job}")


def test_array_on_two_workers_into_one_directory(hq_env):
    hq_env.start_server()
    w1 = hq_env.start_worker(cpus=1)
    w2 = hq_env.start_worker(cpus=1)
    stream = hq_env.root / "stream"
    # Tasks sleep a little so that both workers get some.
    job = hq_env.submit(["--array", "1-20", "--stream", "../stream", "--", "bash", "-c",
                         f"{ECHO_BOTH}; sleep 0.1"])
    assert hq_env.wait_job(job) == 0
    assert stream.is_dir()
    assert not list(hq_env.work.glob("job-*")), "no per-task files with --stream"

    workers = {t["worker"] for t in hq_env.tasks(job)}
    assert workers == {w1.worker_id, w2.worker_id}
    s = summary(hq_env, stream)
    assert s["n_files"] == 2  # one file per worker process
    assert (s["n_jobs"], s["n_tasks"], s["n_finished"], s["n_opened"]) == (1, 20, 20, 0)
    assert s["stdout_size"] == sum(len(f"out {i}\n") for i in range(1, 21))
    assert s["n_superseded"] == 0 and s["damage"] == []
    assert len(list(stream.glob("*.hqs"))) == 2

    assert hq_env.job_detail(job)["stream"] == str(stream)
    program = hq_env.task_desc(job)["program"]
    assert program["stdout"] == "<stream>" and program["stderr"] == "<stream>"
    text = hq_env.command(["job", "info", str(job)])
    assert re.search(r"Stdout:\s+stream\n", text) and re.search(r"Stderr:\s+stream\n", text)
    assert re.search(r"Stream:\s+" + re.escape(str(stream)) + r"\n", text)

    assert hq_env.command(["--output-mode", "quiet", "output", "jobs", str(stream)]) == \
        f"{job}\n"

    lines = output(hq_env, "show", stream).splitlines()
    assert sorted(lines) == sorted(
        [f"{job}.{i}:0> out {i}" for i in range(1, 21)] +
        [f"{job}.{i}:1> err {i}" for i in range(1, 21)])
    only_err = output(hq_env, "show", stream, "--channel", "stderr").splitlines()
    assert sorted(only_err) == sorted(f"{job}.{i}:1> err {i}" for i in range(1, 21))

    assert output(hq_env, "cat", stream, job, "--task", "3-4,2") == "out 3\nout 4\nout 2\n"
    assert output(hq_env, "cat", stream, job, "--task", "7", "--channel", "stderr") == "err 7\n"
    assert output(hq_env, "cat", stream, job) == "".join(f"out {i}\n" for i in range(1, 21))

    exported = hq_env.json(["output", "export", str(stream), str(job), "--task", "5,1"])
    assert exported == [
        {"id": 5, "instance": 0, "finished": True, "exit_code": 0, "stdout": "out 5\n",
         "stderr": "err 5\n"},
        {"id": 1, "instance": 0, "finished": True, "exit_code": 0, "stdout": "out 1\n",
         "stderr": "err 1\n"},
    ]


def test_stderr_only_and_mixed_outputs(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    stream = hq_env.root / "stream"

    # --stdout given: stdout stays in its files, only stderr is streamed.
    only_err = hq_env.submit(["--array", "1-3", "--stream", str(stream), "--stdout",
                              "out-%{TASK_ID}.txt", "--", "bash", "-c", ECHO_BOTH])
    # --stderr none: stdout is streamed, stderr discarded.
    only_out = hq_env.submit(["--array", "1-2", "--stream", str(stream), "--stderr", "none",
                              "--", "bash", "-c", ECHO_BOTH])
    # Both given: the stream is not used (and the client says so).
    p = hq_env.run(["submit", "--stream", str(stream), "--stdout", "none", "--stderr", "none",
                    "--", "true"])
    assert p.returncode == 0 and "--stream has no effect" in p.stderr
    for job in (only_err, only_out):
        assert hq_env.wait_job(job) == 0

    for i in range(1, 4):
        assert (hq_env.work / f"out-{i}.txt").read_text() == f"out {i}\n"
    assert not (hq_env.work / f"job-{only_err}").exists()
    assert output(hq_env, "cat", stream, only_err, "--channel", "stderr") == \
        "err 1\nerr 2\nerr 3\n"
    assert output(hq_env, "cat", stream, only_err) == ""

    exported = hq_env.json(["output", "export", str(stream), str(only_out)])
    assert [(t["id"], t["stdout"], t["stderr"]) for t in exported] == \
        [(1, "out 1\n", ""), (2, "out 2\n", "")]
    assert hq_env.task_desc(only_out)["program"]["stderr"] == "/dev/null"

    jobs = hq_env.json(["output", "jobs", str(stream)])
    assert [j["id"] for j in jobs] == [only_err, only_out]


def test_failed_task_and_exit_code_in_the_stream(hq_env):
    hq_env.start_server()
    hq_env.start_worker()
    stream = hq_env.root / "stream"
    job = hq_env.submit(["--stream", str(stream), "--", "bash", "-c", "echo bye; exit 3"])
    assert hq_env.wait_job(job) == 1
    [task] = hq_env.json(["output", "export", str(stream), str(job)])
    assert task["finished"] is True and task["exit_code"] == 3 and task["stdout"] == "bye\n"


def test_restarted_task_serves_the_last_instance(hq_env):
    hq_env.start_server()
    w1 = hq_env.start_worker()
    stream = hq_env.root / "stream"
    pid_file = hq_env.root / "instance0.pid"
    job = hq_env.submit([
        "--stream", str(stream), "--", "bash", "-c",
        f'if [ "$HQ_INSTANCE_ID" = 0 ]; then echo $$ > {pid_file}; echo first; exec sleep 1000; '
        f'else echo second; fi'])
    try:
        wait_for_streamed(hq_env, stream, job, "first")
        hq_env.kill(w1, signal.SIGKILL)
        wait_until(lambda: hq_env.tasks(job)[0]["state"] == "waiting",
                   message="the task back to waiting")
    finally:
        # The task outlives its SIGKILLed worker: end it.
        wait_until(pid_file.exists, message="the pid file")
        try:
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass
    hq_env.start_worker()
    assert hq_env.wait_job(job) == 0

    assert output(hq_env, "cat", stream, job) == "second\n"
    assert "first" not in output(hq_env, "show", stream)
    s = summary(hq_env, stream)
    assert s["n_files"] == 2 and s["n_tasks"] == 1 and s["n_opened"] == 0
    assert s["n_superseded"] == 1 and s["superseded_stdout_size"] == len("first\n")
    [task] = hq_env.json(["output", "export", str(stream), str(job)])
    assert task["instance"] == 1 and task["stdout"] == "second\n"


def test_unfinished_stream(hq_env):
    hq_env.start_server()
    hq_env.start_worker()
    stream = hq_env.root / "stream"
    gate = hq_env.root / "gate"
    job = hq_env.submit(["--stream", str(stream), "--", "bash", "-c",
                         f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo done"])
    wait_for_streamed(hq_env, stream, job, "started")

    err = hq_env.command(["output", "cat", str(stream), str(job)], expect_fail=True)
    assert "not finished" in err and "--allow-unfinished" in err
    s = summary(hq_env, stream)
    assert (s["n_tasks"], s["n_finished"], s["n_opened"]) == (1, 0, 1)
    [task] = hq_env.json(["output", "export", str(stream), str(job)])
    assert task["finished"] is False and task["exit_code"] is None

    gate.touch()
    assert hq_env.wait_job(job) == 0
    assert output(hq_env, "cat", stream, job) == "started\ndone\n"
    assert summary(hq_env, stream)["n_opened"] == 0


def test_bad_stream_directory_is_a_clear_error(hq_env):
    hq_env.start_server()
    blocker = hq_env.root / "file"
    blocker.write_text("x")
    err = hq_env.command(["submit", "--stream", str(blocker / "sub"), "--", "true"],
                         expect_fail=True)
    assert f"cannot create stream directory '{blocker / 'sub'}'" in err
    err = hq_env.command(["submit", "--stream", "", "--", "true"], expect_fail=True)
    assert "--stream needs a directory" in err
    assert hq_env.json(["job", "list", "--all"]) == []


def test_unwritable_stream_on_the_worker_fails_the_task(hq_env):
    hq_env.start_server()
    stream = hq_env.root / "stream"
    job = hq_env.submit(["--stream", str(stream), "--", "echo", "lost"])
    # The directory the client created becomes a file before any worker runs the task.
    stream.rmdir()
    stream.write_text("not a directory")
    hq_env.start_worker()
    assert hq_env.wait_job(job) == 1
    [task] = hq_env.tasks(job)
    assert task["state"] == "failed"
    assert "cannot create the output stream" in task["error"]
    assert str(stream) in task["error"]


def test_stream_path_placeholders_are_resolved_once_for_client_and_worker(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    uid = hq_env.json(["server", "info"])["server_uid"]
    job = hq_env.submit(["--stream", "log-%{SERVER_UID}-%{JOB_ID}", "--", "echo", "hi"])
    other = hq_env.submit(["--stream", "%{SUBMIT_DIR}/../s-%{JOB_ID}", "--", "echo", "ho"])
    assert hq_env.wait_job(job) == 0 and hq_env.wait_job(other) == 0
    stream = hq_env.work / f"log-{uid}-{job}"
    assert output(hq_env, "cat", stream, job) == "hi\n"
    assert output(hq_env, "cat", hq_env.root / f"s-{other}", other) == "ho\n"
    leftovers = [p for p in [*hq_env.work.iterdir(), *hq_env.root.iterdir()] if "%" in p.name]
    assert leftovers == [], "a directory named by unresolved placeholders"
    # A per-task placeholder cannot name the job's one directory.
    err = hq_env.command(["submit", "--stream", "o-%{TASK_ID}", "--", "true"], expect_fail=True)
    assert "%{TASK_ID}" in err and "--stream" in err
