"""Task limits and failures: --time-limit, --max-fails, --crash-limit, signal errors."""

import signal

from conftest import wait_until


def test_time_limit_kills_the_task(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = hq_env.submit(["--time-limit", "1s", "--stdout", "none", "--", "sleep", "60"])
    assert hq_env.wait_job(job) != 0
    [t] = hq_env.tasks(job)
    assert t["state"] == "failed"
    assert t["error"] == "Time limit reached"
    assert hq_env.task_desc(job)["time_limit"] == 1.0
    err = hq_env.command(["submit", "--time-limit", "soon", "--", "true"], expect_fail=True)
    assert "--time-limit" in err


def test_signal_error_names_the_signal(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = hq_env.submit(["--stdout", "none", "--", "bash", "-c", "kill -9 $$"])
    assert hq_env.wait_job(job) != 0
    [t] = hq_env.tasks(job)
    assert "Received signal 9 (SIGKILL)" in t["error"], t["error"]


def test_max_fails_aborts_the_rest_and_survives_restart(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = hq_env.submit(["--array", "1-20", "--max-fails", "2", "--stdout", "none",
                         "--stderr", "none", "--", "bash", "-c", "exit 1"])
    assert hq_env.wait_job(job) != 0
    counts = hq_env.job(job)["task_stats"]
    assert counts["failed"] == 3, counts  # one worker CPU: tasks end one at a time
    assert counts["aborted"] == 17, counts
    assert hq_env.job(job)["state"] == "failed"
    hq_env.kill(hq_env.server)
    hq_env.start_server()
    assert hq_env.job(job)["task_stats"] == counts
    err = hq_env.command(["submit", "--max-fails", "-1", "--", "true"], expect_fail=True)
    assert "--max-fails" in err


def test_crash_limit_fails_a_task_whose_workers_keep_dying(hq_env):
    hq_env.start_server()
    job = hq_env.submit(["--crash-limit", "2", "--stdout", "none", "--", "sleep", "60"])
    hq_env.run_on_a_dying_worker(job, 0, instance=0)
    hq_env.run_on_a_dying_worker(job, 0, instance=1)
    t = hq_env.wait_for_task_state(job, 0, "failed")
    assert "crash limit (2)" in t["error"], t["error"]
    assert t["crash_count"] == 2
    # Restart keeps the failure.
    hq_env.kill(hq_env.server)
    hq_env.start_server()
    assert hq_env.tasks(job)[0]["state"] == "failed"
    err = hq_env.command(["submit", "--crash-limit", "often", "--", "true"], expect_fail=True)
    assert "--crash-limit" in err


def test_worker_stopped_on_purpose_does_not_count(hq_env):
    hq_env.start_server()
    job = hq_env.submit(["--crash-limit", "never-restart", "--stdout", "none", "--",
                         "sleep", "60"])
    w1 = hq_env.start_worker(cpus=1)
    hq_env.wait_for_task_state(job, 0, "running")
    hq_env.command(["worker", "stop", str(w1.worker_id)])
    w1.wait(timeout=30)
    t = wait_until(lambda: hq_env.tasks(job)[0]["state"] == "waiting" and hq_env.tasks(job)[0],
                   message="the task back to waiting")
    assert t["instance"] == 1 and t["crash_count"] == 0
    # A worker that ends on SIGTERM stops on purpose too.
    w2 = hq_env.start_worker(cpus=1)
    hq_env.wait_for_task_state(job, 0, "running")
    hq_env.kill(w2, signal.SIGTERM)
    t = wait_until(lambda: hq_env.tasks(job)[0]["state"] == "waiting" and hq_env.tasks(job)[0],
                   message="the task back to waiting")
    assert t["instance"] == 2 and t["crash_count"] == 0
    hq_env.command(["job", "cancel", str(job)])
