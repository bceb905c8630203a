"""Job management: single-task cancel (with dependants aborted, across a kill -9 restart), job
forget (gone after a restart, pruned from the journal), job cat from files and streams,
task-ids, summary and progress."""

import json

from conftest import wait_until


def gated_array(hq_env, ids, gate, extra=()):
    """An array job whose tasks write their id and then wait for `gate`."""
    return hq_env.submit(["--array", ids, *extra, "--", "bash", "-c",
                          f'echo task $HQ_TASK_ID; while [ ! -e {gate} ]; do sleep 0.05; done'])


def states(hq_env, job):
    return {t["id"]: t["state"] for t in hq_env.tasks(job)}


def write_graph(hq_env, gate):
    """1 -> 2 -> 3 and 1 -> 4; task 5 alone. Tasks wait for `gate`."""
    path = hq_env.work / "graph.toml"
    cmd = f'["bash", "-c", "while [ ! -e {gate} ]; do sleep 0.05; done"]'
    path.write_text(
        f'[[task]]\nid = 1\ncommand = {cmd}\n\n'
        f'[[task]]\nid = 2\ncommand = {cmd}\ndeps = [1]\n\n'
        f'[[task]]\nid = 3\ncommand = {cmd}\ndeps = [2]\n\n'
        f'[[task]]\nid = 4\ncommand = {cmd}\ndeps = [1]\n\n'
        f'[[task]]\nid = 5\ncommand = {cmd}\n')
    out = hq_env.command(["--output-mode", "quiet", "job", "submit-file", str(path)])
    return int(out.strip())


def test_task_cancel_of_waiting_and_running_array_tasks(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    gate = hq_env.root / "gate"
    job = gated_array(hq_env, "0-5", gate)
    hq_env.wait_for_task_state(job, 0, "running")
    out = hq_env.json(["task", "cancel", str(job), "0,2-3,99"])
    assert out == {"id": job, "canceled_tasks": 3, "aborted_tasks": 0, "already_ended": 0,
                   "not_found": 1}
    # The running one is killed; the others go on.
    assert states(hq_env, job)[0] == "canceled"
    gate.touch()
    assert hq_env.wait_job(job) == 1  # canceled tasks: not all finished
    assert states(hq_env, job) == {0: "canceled", 1: "finished", 2: "canceled",
                                   3: "canceled", 4: "finished", 5: "finished"}
    text = hq_env.command(["task", "cancel", str(job), "1"])
    assert "nothing to cancel" in text
    err = hq_env.command(["task", "cancel", str(job), "77"], expect_fail=True)
    assert f"job {job} has no task 77" in err
    err = hq_env.command(["task", "cancel", "999", "1"], expect_fail=True)
    assert "job 999 not found" in err
    err = hq_env.command(["task", "cancel", str(job), "x-1"], expect_fail=True)
    assert "invalid task selection" in err


def test_task_cancel_in_a_graph_aborts_dependants_and_survives_kill_9(hq_env):
    hq_env.start_server()
    w = hq_env.start_worker(2, "--on-server-lost", "stop")
    gate = hq_env.root / "gate"
    job = write_graph(hq_env, gate)
    hq_env.wait_for_task_state(job, 1, "running")
    out = hq_env.json(["task", "cancel", str(job), "1"])
    assert out["canceled_tasks"] == 1 and out["aborted_tasks"] == 3, out
    before = hq_env.json(["task", "info", str(job), "1-5"])
    by_id = {t["id"]: t for t in before}
    assert by_id[1]["state"] == "canceled"
    for t in (2, 3, 4):
        assert by_id[t]["state"] == "aborted"
        assert by_id[t]["aborted_by"] == {"job": job, "task": 1}
    text = hq_env.command(["task", "info", str(job), "3"])
    assert f"its dependency task 1 of job {job} was canceled" in text

    hq_env.kill(hq_env.server)
    w.wait(timeout=30)
    hq_env.start_server()
    after = {t["id"]: t for t in hq_env.json(["task", "info", str(job), "1-5"])}
    assert after[1]["state"] == "canceled"
    for t in (2, 3, 4):
        assert after[t]["state"] == "aborted"
        assert after[t]["aborted_by"] == {"job": job, "task": 1}
    assert after[5]["state"] == "waiting"
    gate.touch()
    hq_env.start_worker(cpus=2)
    assert hq_env.wait_job(job) == 1
    assert states(hq_env, job)[5] == "finished"
    hq_env.command(["server", "stop"])
    hq_env.server.wait(timeout=30)
    replay = hq_env.command(["journal", "replay", "--journal",
                             str(hq_env.server_dir / "journal")])
    assert "tasks-canceled" in replay and "task_ids=1" in replay, replay


def test_forget_removes_complete_jobs_for_good(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    done = hq_env.submit(["--array", "1-3", "--", "true"])
    failed = hq_env.submit(["--", "false"])
    assert hq_env.wait_job(done) == 0
    assert hq_env.wait_job(failed) == 1
    gate = hq_env.root / "gate"
    running = gated_array(hq_env, "0", gate)
    hq_env.wait_for_task_state(running, 0, "running")

    # Incomplete jobs are refused; the filter chooses among complete ones.
    out = hq_env.json(["job", "forget", "all", "--filter", "failed"])
    assert out == {"forgotten": [failed], "ignored": 2}
    err = hq_env.command(["job", "forget", "all", "--filter", "running"], expect_fail=True)
    assert "only complete jobs can be forgotten" in err
    text = hq_env.command(["job", "forget", str(running)])
    assert "0 job(s) forgotten, 1 ignored" in text
    assert hq_env.json(["job", "forget", str(done)])["forgotten"] == [done]

    listed = {j["id"] for j in hq_env.json(["job", "list", "--all"])}
    assert listed == {running}
    for job in (done, failed):
        err = hq_env.command(["job", "info", str(job)], expect_fail=True)
        assert f"job {job} not found" in err

    hq_env.kill(hq_env.server)
    hq_env.start_server()
    assert {j["id"] for j in hq_env.json(["job", "list", "--all"])} == {running}
    err = hq_env.command(["job", "info", str(done)], expect_fail=True)
    assert f"job {done} not found" in err
    # Ids are never reused.
    assert hq_env.submit(["--", "true"]) == running + 1
    # The prune drops the forgotten jobs' records (and the new complete ones'...).
    pruned = hq_env.json(["journal", "prune"])
    assert pruned["pruned_jobs"] >= 2, pruned
    hq_env.command(["server", "stop"])
    hq_env.server.wait(timeout=30)
    report = hq_env.json(["journal", "report"])
    jobs = {j["id"] for j in report["job_list"]}
    assert done not in jobs and failed not in jobs and running in jobs, report
    assert "job-forgotten" not in report["events_by_type"], report  # pruned with the jobs


def test_job_cat_from_files_and_from_a_stream(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    job = hq_env.submit(["--array", "1-4", "--", "bash", "-c",
                         'echo out $HQ_TASK_ID; echo err $HQ_TASK_ID >&2; '
                         '[ $HQ_TASK_ID != 3 ]'])
    assert hq_env.wait_job(job) == 1
    assert hq_env.command(["job", "cat", str(job), "stdout"]) == \
        "out 1\nout 2\nout 3\nout 4\n"
    assert hq_env.command(["job", "cat", str(job), "stderr", "--tasks", "2-3"]) == \
        "err 2\nerr 3\n"
    assert hq_env.command(["job", "cat", str(job), "stdout", "--task-status", "failed",
                           "--print-task-header"]) == f"# Job {job}, task 3\nout 3\n"
    err = hq_env.command(["job", "cat", str(job), "stdout", "--task-status", "done"],
                         expect_fail=True)
    assert "unknown task state 'done' in --task-status" in err

    stream = hq_env.root / "stream"
    streamed = hq_env.submit(["--array", "5-6", "--stream", str(stream), "--", "bash", "-c",
                              'echo s$HQ_TASK_ID; echo e$HQ_TASK_ID >&2'])
    assert hq_env.wait_job(streamed) == 0
    assert hq_env.command(["job", "cat", str(streamed), "stdout", "--print-task-header"]) == \
        f"# Job {streamed}, task 5\ns5\n# Job {streamed}, task 6\ns6\n"
    assert hq_env.command(["job", "cat", str(streamed), "stderr", "--tasks", "6"]) == "e6\n"
    err = hq_env.command(["job", "cat", "99", "stdout"], expect_fail=True)
    assert "job 99 not found" in err


def test_task_ids_and_summary(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    job = hq_env.submit(["--array", "2,7,9,20-24", "--", "bash", "-c",
                         '[ $HQ_TASK_ID != 9 ] && [ $HQ_TASK_ID != 22 ]'])
    assert hq_env.wait_job(job) == 1
    assert hq_env.command(["job", "task-ids", str(job)]) == "2,7,9,20-24\n"
    assert hq_env.command(["job", "task-ids", str(job), "--filter", "failed"]) == "9,22\n"
    assert hq_env.command(["job", "task-ids", str(job), "--filter", "finished"]) == \
        "2,7,20-21,23-24\n"
    other = hq_env.submit(["--array", "1-3", "--", "true"])
    assert hq_env.wait_job(other) == 0
    assert hq_env.command(["job", "task-ids", f"{job},{other}", "--filter", "finished"]) == \
        f"{job}: 2,7,20-21,23-24\n{other}: 1-3\n"
    assert hq_env.json(["job", "task-ids", str(other)]) == {str(other): [1, 2, 3]}
    waiting = hq_env.submit(["--cpus", "16", "--", "true"])
    summary = hq_env.json(["job", "summary"])
    assert summary["failed"] == 1 and summary["finished"] == 1 and summary["waiting"] == 1
    assert summary["running"] == 0
    text = hq_env.command(["job", "summary"])
    assert "FAILED" in text and "WAITING" in text
    quiet = hq_env.command(["--output-mode", "quiet", "job", "summary"]).splitlines()
    assert "FINISHED 1" in quiet and "WAITING 1" in quiet
    hq_env.command(["job", "cancel", str(waiting)])


def test_progress_lines_follow_the_job_to_its_final_counts(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    gate = hq_env.root / "gate"
    job = gated_array(hq_env, "1-6", gate, extra=["--stdout", "none", "--stderr", "none"])
    watcher = hq_env._spawn("progress", ["job", "progress", str(job)])
    hq_env.wait_for_task_state(job, 1, "running")
    gate.touch()
    watcher.wait(timeout=60)
    assert watcher.returncode == 0
    lines = hq_env.log_of(watcher).splitlines()
    assert lines and all(line.startswith("Progress: ") for line in lines), lines
    assert "6/6 tasks ended (6 finished, 0 running, 0 waiting); done in" in lines[-1], lines[-1]

    # `hq job wait --progress` exits with the wait's exit code.
    failing = hq_env.submit(["--array", "1-3", "--", "bash", "-c", "[ $HQ_TASK_ID != 2 ]"])
    p = hq_env.run(["job", "wait", "--progress", str(failing)])
    assert p.returncode == 1, p.stderr
    assert "3/3 tasks ended (2 finished, 1 failed, 0 running, 0 waiting)" in p.stdout, p.stdout
    assert "Wait finished" in p.stdout
    ok = hq_env.run(["submit", "--progress", "--", "true"])
    assert ok.returncode == 0 and "1/1 tasks ended (1 finished" in ok.stdout, ok.stdout
    final = hq_env.json(["job", "progress", str(failing)])
    assert final["task_stats"]["failed"] == 1 and final["complete_jobs"] == 1
    err = hq_env.command(["job", "progress", "99"], expect_fail=True)
    assert "job 99 not found" in err
