"""Open jobs (`hq job open`, `hq submit --job`, `hq job close`), dependencies across their
submits, heterogeneous job files, and all of it across a kill -9 of the server."""
import textwrap

def open_job(hq_env, *args):
    out = hq_env.command(["--output-mode", "quiet", "job", "open", *args])
    return int(out.strip())


def by_id(hq_env, job_id):
    return {t["id"]: t for t in hq_env.tasks(job_id)}


def stamp(name):
    """A task command writing its start time (ns) to `name` in the work directory."""
    return ["bash", "-c", f"date +%s%N > {name}.start; sleep 0.2; date +%s%N > {name}.end"]


def test_open_job_takes_submits_until_closed(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=4)
    out = hq_env.command(["job", "open", "--name", "campaign"])
    assert "is open" in out
    job = int(out.split()[1])
    assert hq_env.job(job)["state"] == "opened"
    assert hq_env.job(job)["is_open"] is True
    # Listed by default while open.
    assert job in [j["id"] for j in hq_env.json(["job", "list"])]
    # Default ids continue past the job's highest id; another request per submit.
    assert hq_env.submit(["--job", str(job), "--", "true"]) == job
    assert hq_env.submit(["--job", str(job), "--cpus", "2", "--", "true"]) == job
    assert hq_env.submit(["--job", str(job), "--array", "10-12", "--", "true"]) == job
    # Colliding ids: a clear error naming them, nothing added.
    r = hq_env.run(["submit", "--job", str(job), "--array", "0-1,12", "--", "true"])
    assert r.returncode != 0
    assert "already has task(s) 0-1,12" in r.stderr, r.stderr
    assert hq_env.run(["job", "wait", str(job), "--without-close"]).returncode == 0
    tasks = by_id(hq_env, job)
    assert sorted(tasks) == [0, 1, 10, 11, 12]
    assert all(t["state"] == "finished" for t in tasks.values())
    # Done with its current tasks, but open: opened, not finished.
    assert hq_env.job(job)["state"] == "opened"
    hq_env.command(["job", "close", str(job)])
    assert hq_env.wait_job(job) == 0
    assert hq_env.job(job)["state"] == "finished"
    assert hq_env.job(job)["is_open"] is False
    r = hq_env.run(["submit", "--job", str(job), "--", "true"])
    assert r.returncode != 0 and f"job {job} is not open" in r.stderr, r.stderr
    r = hq_env.run(["submit", "--job", "999", "--", "true"])
    assert r.returncode != 0 and "job 999 not found" in r.stderr, r.stderr
    r = hq_env.run(["job", "close", str(job)])
    assert r.returncode != 0 and "is not open" in r.stderr, r.stderr


def test_wait_waits_for_the_close(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = open_job(hq_env)
    hq_env.submit(["--job", str(job), "--", "true"])
    waiter = hq_env._spawn("waiter", ["job", "wait", str(job)])
    assert hq_env.run(["job", "wait", str(job), "--without-close"]).returncode == 0
    assert waiter.poll() is None  # still waiting: the job is open
    hq_env.command(["job", "close", str(job)])
    assert waiter.wait(timeout=30) == 0


def test_cross_submit_dependencies_order_and_aborts(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=4)
    job = open_job(hq_env)
    j = str(job)
    hq_env.submit(["--job", j, "--array", "1-2", "--", *stamp("first.$HQ_TASK_ID")])
    hq_env.submit(["--job", j, "--array", "3", "--", "bash", "-c", "exit 4"])
    # Every task of this submit waits for 1 and 2 of the first.
    hq_env.submit(["--job", j, "--array", "5-6", "--deps", "1-2", "--",
                   *stamp("second.$HQ_TASK_ID")])
    assert hq_env.run(["job", "wait", j, "--without-close"]).returncode != 0  # 3 failed
    work = hq_env.work
    first_end = max(int((work / f"first.{t}.end").read_text()) for t in (1, 2))
    for t in (5, 6):
        assert int((work / f"second.{t}.start").read_text()) >= first_end
    # On a failed task: aborted at once, naming it.
    hq_env.submit(["--job", j, "--array", "7", "--deps", "3", "--", "touch", "ran.7"])
    t7 = by_id(hq_env, job)[7]
    assert t7["state"] == "aborted"
    [info] = hq_env.json(["task", "info", j, "7"])
    assert info["aborted_by"] == {"job": job, "task": 3}, info
    # On an id the job does not have: an error, nothing submitted.
    r = hq_env.run(["submit", "--job", j, "--array", "8", "--deps", "40", "--", "true"])
    assert r.returncode != 0 and "40" in r.stderr, r.stderr
    assert 8 not in by_id(hq_env, job)
    # --deps without --job is refused.
    r = hq_env.run(["submit", "--deps", "1", "--", "true"])
    assert r.returncode != 0 and "--job" in r.stderr
    assert not (work / "ran.7").exists()


def test_job_file_into_an_open_job_depends_on_an_earlier_submit(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    job = open_job(hq_env)
    hq_env.submit(["--job", str(job), "--array", "1", "--", *stamp("one")])
    path = hq_env.work / "more.toml"
    path.write_text(textwrap.dedent("""\
        [[task]]
        id = 2
        command = ["bash", "-c", "date +%s%N > two.start"]
        deps = [1]
        """))
    hq_env.command(["job", "submit-file", "--job", str(job), str(path)])
    assert hq_env.run(["job", "wait", str(job), "--without-close"]).returncode == 0
    assert int((hq_env.work / "two.start").read_text()) >= int(
        (hq_env.work / "one.end").read_text())


def test_heterogeneous_job_file_runs_by_each_tasks_request_and_priority(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    path = hq_env.work / "mixed.toml"
    path.write_text(textwrap.dedent("""\
        [[task]]
        id = 1
        command = ["bash", "-c", "echo $HQ_CPUS > small.cpus; date +%s%N > small.start"]
        [[task.request]]
        resources = { cpus = "1" }

        [[task]]
        id = 2
        priority = 10
        command = ["bash", "-c", "echo $HQ_CPUS > big.cpus; date +%s%N > big.start; sleep 0.3; date +%s%N > big.end"]
        [[task.request]]
        resources = { cpus = "2" }
        """))
    out = hq_env.command(["--output-mode", "quiet", "job", "submit-file", str(path)])
    job = int(out.strip())
    assert hq_env.wait_job(job) == 0
    work = hq_env.work
    assert len((work / "big.cpus").read_text().split(",")) == 2
    assert len((work / "small.cpus").read_text().split(",")) == 1
    # The big one (priority 10) took both CPUs first; the small one ran after it.
    assert int((work / "small.start").read_text()) >= int((work / "big.end").read_text())


def test_open_job_survives_kill_9(hq_env):
    hq_env.start_server()
    w = hq_env.start_worker(2, "--on-server-lost", "stop")  # it dies with its server
    job = open_job(hq_env, "--name", "kept")
    j = str(job)
    hq_env.submit(["--job", j, "--array", "1", "--", "bash", "-c", "echo x >> ran.1"])
    hq_env.submit(["--job", j, "--array", "2", "--", "bash", "-c", "exit 1"])
    gate = hq_env.work / "gate"
    hq_env.submit(["--job", j, "--array", "3", "--", "bash", "-c",
                   f"while [ ! -f {gate} ]; do sleep 0.05; done; echo x >> ran.3"])
    assert hq_env.wait_for_task_state(job, 1, "finished")
    hq_env.wait_for_task_state(job, 2, "failed")
    # 4 waits for 1 (finished) and 3 (not yet); 5 for 2 (failed): aborted at once.
    hq_env.submit(["--job", j, "--array", "4", "--deps", "1,3", "--", "bash", "-c",
                   "echo x >> ran.4"])
    hq_env.submit(["--job", j, "--array", "5", "--deps", "2", "--", "true"])
    assert by_id(hq_env, job)[5]["state"] == "aborted"

    hq_env.kill(hq_env.server)
    w.wait(timeout=30)
    hq_env.start_server()
    assert hq_env.job(job)["state"] != "finished"
    assert hq_env.job(job)["is_open"] is True
    tasks = by_id(hq_env, job)
    assert tasks[1]["state"] == "finished"
    assert tasks[2]["state"] == "failed"
    assert tasks[4]["state"] == "waiting"
    assert tasks[5]["state"] == "aborted"
    explain = hq_env.command(["task", "explain", j, "4"])
    assert "3" in explain, explain
    # Ids of earlier submits still collide after the restart.
    r = hq_env.run(["submit", "--job", j, "--array", "4", "--", "true"])
    assert r.returncode != 0 and "already has task(s) 4" in r.stderr, r.stderr
    hq_env.start_worker(cpus=2)
    gate.write_text("")
    assert hq_env.run(["job", "wait", j, "--without-close"]).returncode != 0  # 2 failed
    assert by_id(hq_env, job)[4]["state"] == "finished"
    assert (hq_env.work / "ran.1").read_text() == "x\n"  # never ran again
    assert (hq_env.work / "ran.4").read_text() == "x\n"
    assert hq_env.job(job)["state"] == "opened"
    hq_env.command(["job", "close", j])
    hq_env.kill(hq_env.server)
    hq_env.start_server()
    assert hq_env.job(job)["is_open"] is False
    assert hq_env.job(job)["state"] == "failed"
    replay = hq_env.command(["journal", "replay"])
    for kind in ("job-opened", "tasks-submitted", "job-closed"):
        assert kind in replay, kind
