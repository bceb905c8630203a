"""Submitting jobs and reading their outputs."""

import json
import os


def test_submit_runs_task_and_writes_outputs(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    out = hq_env.command(["submit", "--", "bash", "-c", "echo hello; echo oops >&2"])
    assert "job ID: 1" in out
    assert hq_env.wait_job(1) == 0
    assert (hq_env.work / "job-1" / "0.stdout").read_text() == "hello\n"
    assert (hq_env.work / "job-1" / "0.stderr").read_text() == "oops\n"
    job = hq_env.job(1)
    assert job["state"] == "finished"
    assert job["task_stats"]["finished"] == 1


def test_array_with_sparse_ids(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    job = hq_env.submit(["--array", "1-3,10,20-26:3", "--", "bash", "-c",
                         "echo $HQ_JOB_ID:$HQ_TASK_ID:$HQ_INSTANCE_ID"])
    assert hq_env.wait_job(job) == 0
    expected = [1, 2, 3, 10, 20, 23, 26]
    tasks = hq_env.tasks(job)
    assert [t["id"] for t in tasks] == expected
    assert all(t["state"] == "finished" for t in tasks)
    for i in expected:
        assert (hq_env.work / f"job-{job}" / f"{i}.stdout").read_text() == f"{job}:{i}:0\n"
    # A selection far larger than the job is answered from the job's own tasks.
    picked = hq_env.json(["task", "list", str(job), "--tasks", "2-4294967295"])[str(job)]
    assert [t["id"] for t in picked] == [2, 3, 10, 20, 23, 26]
    assert sorted(os.listdir(hq_env.work / f"job-{job}")) == sorted(
        [f"{i}.stdout" for i in expected] + [f"{i}.stderr" for i in expected])


def test_env_cwd_and_placeholders(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = hq_env.submit([
        "--env", "FOO=bar", "--env", "EMPTY=",
        "--cwd", str(hq_env.root / "cwd-%{JOB_ID}"),
        "--stdout", "out/%{JOB_ID}-%{TASK_ID}-%{INSTANCE_ID}.txt",
        "--stderr", "none",
        "--array", "4",
        "--", "bash", "-c",
        'echo "$FOO|${EMPTY-unset}|$PWD|$HQ_SUBMIT_DIR|$HQ_CPUS"; echo err >&2'])
    assert hq_env.wait_job(job) == 0
    cwd = hq_env.root / f"cwd-{job}"
    out = (cwd / "out" / f"{job}-4-0.txt").read_text()
    assert out == f"bar||{cwd}|{hq_env.work}|0\n"
    assert not (cwd / "job-1").exists()


def test_unknown_placeholder_is_a_warning(hq_env):
    hq_env.start_server()
    p = hq_env.run(["submit", "--stdout", "%{NOPE}.out", "--", "true"])
    assert p.returncode == 0
    assert "unknown placeholder %{NOPE}" in p.stderr


def test_failing_program_fails_the_task(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = hq_env.submit(["--array", "1-2", "--", "bash", "-c",
                         "[ $HQ_TASK_ID = 1 ] || exit 3"])
    assert hq_env.wait_job(job) == 1
    tasks = {t["id"]: t for t in hq_env.tasks(job)}
    assert tasks[1]["state"] == "finished"
    assert tasks[2]["state"] == "failed"
    assert "exit code 3" in tasks[2]["error"]
    assert hq_env.job(job)["state"] == "failed"


def test_missing_program_fails_with_a_clear_error(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = hq_env.submit(["--", "/nonexistent/program-xyz", "arg"])
    assert hq_env.wait_job(job) == 1
    [task] = hq_env.tasks(job)
    assert task["state"] == "failed"
    assert "/nonexistent/program-xyz" in task["error"]
    assert "No such file" in task["error"]


def test_json_and_quiet_output(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    out = hq_env.command(["--output-mode", "quiet", "submit", "--", "true"])
    assert out.strip() == "1"
    hq_env.wait_job(1)
    # The global option is accepted after the subcommand too, and from the environment.
    jobs = json.loads(hq_env.command(["job", "list", "--all", "--output-mode", "json"]))
    assert [(j["id"], j["state"]) for j in jobs] == [(1, "finished")]
    assert jobs[0]["task_stats"] == {"waiting": 0, "running": 0, "finished": 1, "failed": 0,
                                      "canceled": 0, "aborted": 0}
    [info] = json.loads(hq_env.command(["job", "info", "1"], env={"HQ_OUTPUT_MODE": "json"}))
    assert info["info"]["id"] == 1 and info["info"]["name"] == "true"
    assert info["submits"][0]["array"]["program"]["args"] == ["true"]
    assert info["started_at"].endswith("Z") and info["finished_at"].endswith("Z")
    [task] = hq_env.json(["task", "list", "1"])["1"]
    assert set(task) >= {"id", "state", "worker", "started_at", "finished_at"}
    assert task["worker"] == 1 and "error" not in task
    workers = hq_env.json(["worker", "list"])
    assert workers[0]["id"] == 1 and workers[0]["cpus"] == 1


def test_priority_runs_higher_first(hq_env):
    hq_env.start_server()
    log = hq_env.root / "order.log"
    low = hq_env.submit(["--priority", "-1", "--", "bash", "-c", f"echo low >> {log}"])
    high = hq_env.submit(["--priority", "5", "--", "bash", "-c", f"echo high >> {log}"])
    hq_env.start_worker(cpus=1)
    assert hq_env.wait_job(f"{low}-{high}") == 0
    assert log.read_text() == "high\nlow\n"


def test_submit_wait_returns_job_result(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    assert hq_env.run(["submit", "--wait", "--", "true"]).returncode == 0
    assert hq_env.run(["submit", "--wait", "--", "false"]).returncode == 1
    assert hq_env.run(["job", "submit", "--wait", "--", "true"]).returncode == 0


def test_bad_cli_input_is_reported(hq_env):
    hq_env.start_server()
    err = hq_env.command(["submit", "--array", "5-2", "--", "true"], expect_fail=True)
    assert "reversed range" in err
    # An empty --array is refused, blank or not, with one message (not a one-task job).
    empty = hq_env.command(["submit", "--array", "", "--", "true"], expect_fail=True)
    blank = hq_env.command(["submit", "--array", " ", "--", "true"], expect_fail=True)
    assert "invalid --array" in empty and "empty id set" in empty
    assert empty == blank
    err = hq_env.command(["submit", "--env", "NOEQUALS", "--", "true"], expect_fail=True)
    assert "KEY=VALUE" in err
    err = hq_env.command(["job", "info", "abc"], expect_fail=True)
    assert "invalid job selector" in err
    err = hq_env.command(["job", "info", "42"], expect_fail=True)
    assert "job 42 not found" in err
    err = hq_env.command(["job", "info", "40-45"], expect_fail=True)
    assert "no job matches '40-45'" in err
    err = hq_env.command(["task", "list", "7"], expect_fail=True)
    assert "job 7 not found" in err
    err = hq_env.command(["submit", "--array", "1-200000000", "--", "true"], expect_fail=True)
    assert "a job holds at most 100000000" in err
    # No job was created by the failed submissions.
    assert hq_env.json(["job", "list", "--all"]) == []
