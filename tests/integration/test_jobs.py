"""Cancel and wait."""

from conftest import wait_until


def test_cancel_waiting_job(hq_env):
    hq_env.start_server()
    job = hq_env.submit(["--array", "1-5", "--", "true"])
    out = hq_env.command(["job", "cancel", str(job)])
    assert "canceled (5 task(s))" in out
    assert hq_env.job(job)["state"] == "canceled"
    # A worker that connects afterwards runs nothing.
    marker = hq_env.root / "ran"
    hq_env.submit(["--", "touch", str(marker)])
    hq_env.start_worker(cpus=1)
    assert hq_env.wait_job("last") == 0
    assert all(t["state"] == "canceled" for t in hq_env.tasks(job))
    assert hq_env.wait_job(job) == 1


def test_cancel_running_job_kills_its_processes(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    pidfile = hq_env.root / "pid"
    job = hq_env.submit(["--array", "1-3", "--", "bash", "-c",
                         f"[ $HQ_TASK_ID = 1 ] && echo $$ > {pidfile}; sleep 300"])
    hq_env.wait_for_task_state(job, 1, "running")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), message="pid file")
    pid = int(pidfile.read_text())
    hq_env.command(["job", "cancel", str(job)])
    tasks = hq_env.tasks(job)
    assert [t["state"] for t in tasks] == ["canceled"] * 3

    def gone():
        try:
            import os
            os.kill(pid, 0)
            return False
        except ProcessLookupError:
            return True
    wait_until(gone, message="the canceled task's process to die")
    # The worker's CPUs are free again: a new task runs.
    assert hq_env.run(["submit", "--wait", "--", "true"]).returncode == 0


def test_cancel_of_finished_job_says_nothing_to_cancel(hq_env):
    hq_env.start_server()
    hq_env.start_worker()
    job = hq_env.submit(["--", "true"])
    assert hq_env.wait_job(job) == 0
    out = hq_env.command(["job", "cancel", "last"])
    assert "nothing to cancel" in out
    assert hq_env.job(job)["state"] == "finished"


def test_job_wait_exit_codes(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    ok = hq_env.submit(["--", "true"])
    bad = hq_env.submit(["--", "false"])
    assert hq_env.wait_job(ok) == 0
    assert hq_env.wait_job(bad) == 1
    assert hq_env.wait_job("all") == 1
    assert hq_env.wait_job(f"{ok}") == 0
    p = hq_env.run(["job", "wait", "99"])
    assert p.returncode != 0 and "job 99 not found" in p.stderr
    help_text = hq_env.command(["job", "wait", "--help"])
    assert "Exit code 0" in help_text and "1 when any failed" in help_text


def test_job_wait_blocks_until_jobs_end(hq_env):
    hq_env.start_server()
    gate = hq_env.root / "gate"
    job = hq_env.submit(["--", "bash", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"])
    import subprocess
    waiter = subprocess.Popen([__import__("conftest").HQ_BIN, "job", "wait", str(job)],
                              env=hq_env.env, stdout=subprocess.PIPE, text=True)
    hq_env.start_worker()
    hq_env.wait_for_task_state(job, 0, "running")
    assert waiter.poll() is None
    gate.touch()
    assert waiter.wait(timeout=60) == 0
    assert hq_env.job(job)["state"] == "finished"


def test_job_list_filters(hq_env):
    hq_env.start_server()
    done = hq_env.submit(["--", "true"])
    hq_env.start_worker()
    assert hq_env.wait_job(done) == 0
    hq_env.command(["worker", "stop", "all"])
    waiting = hq_env.submit(["--", "true"])
    assert [j["id"] for j in hq_env.json(["job", "list"])] == [waiting]
    assert [j["id"] for j in hq_env.json(["job", "list", "--all"])] == [done, waiting]
    assert [j["id"] for j in hq_env.json(["job", "list", "--filter", "finished"])] == [done]
    err = hq_env.command(["job", "list", "--filter", "bogus"], expect_fail=True)
    assert "unknown job state 'bogus'" in err


def test_task_list_of_a_large_job_comes_in_pages(hq_env):
    hq_env.start_server()
    # 120,005 waiting tasks (no worker): more than two pages of the server's answer.
    job = hq_env.submit(["--array", "1-120000,200000-200004", "--", "true"])
    tasks = hq_env.tasks(job)
    ids = [t["id"] for t in tasks]
    assert len(ids) == 120005
    assert ids == list(range(1, 120001)) + list(range(200000, 200005))
    assert all(t["state"] == "waiting" for t in tasks)
    # A selection across a page boundary, and a filter, page the same way.
    picked = hq_env.json(["task", "list", str(job), "--tasks",
                          "49990-50010,119999-200001"])[str(job)]
    assert [t["id"] for t in picked] == (list(range(49990, 50011)) +
                                         [119999, 120000, 200000, 200001])
    waiting = hq_env.json(["task", "list", str(job), "--filter", "waiting"])[str(job)]
    assert len(waiting) == 120005
