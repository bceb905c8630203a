"""The batch-system layer against the local SLURM: allocations submitted, tracked, canceled
(tools/alloc-probe drives alloc::BatchSystem), `hq alloc dry-run`, and workers started inside a
real sbatch job (`hq worker start --manager`)."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import HQ_BIN, wait_until

# The one local SLURM cluster is shared: its tests run in one xdist worker, one at a time.
pytestmark = pytest.mark.xdist_group("slurm")

PROBE = str(Path(HQ_BIN).parent / "tools" / "alloc-probe")


def submit(slurm, log_dir, hq, *sbatch_args, server_dir=None, time_limit="10m"):
    """Submits an allocation of one worker through alloc::BatchSystem; returns its id."""
    server_dir = server_dir or log_dir / "server"
    return probe(slurm, "submit", str(log_dir), hq, str(server_dir), time_limit,
                 *sbatch_args).strip()


def probe(slurm, *args):
    p = slurm.run([PROBE, "slurm", *args])
    assert p.returncode == 0, f"alloc-probe {args} failed:\n{p.stderr}"
    return p.stdout


def states(slurm, *ids):
    """{id: (state, detail)} from ONE status query for all of them."""
    out = {}
    for line in probe(slurm, "status", *ids).splitlines():
        job, state, detail = line.split(" ", 2)
        out[job] = (state, detail)
    return out


def fake_hq(tmp_path):
    """Stands in for `hq` in the batch script: records its arguments, then waits for
    go.<job id> and exits with the number written in it."""
    script = tmp_path / "fake-hq"
    script.write_text(
        "#!/bin/bash\n"
        f'echo "$@" > {tmp_path}/args.$SLURM_JOB_ID\n'
        f"while [ ! -s {tmp_path}/go.$SLURM_JOB_ID ]; do sleep 0.05; done\n"
        f"exit $(cat {tmp_path}/go.$SLURM_JOB_ID)\n")
    script.chmod(0o755)
    return str(script)


def test_allocation_goes_queued_running_finished_and_failed(slurm, tmp_path):
    hq = fake_hq(tmp_path)
    good = submit(slurm, tmp_path / "a", hq)
    bad = submit(slurm, tmp_path / "b", hq)
    # Two 1-CPU allocations fit this machine; each is queued, then running.
    first = states(slurm, good, bad)
    assert set(first) == {good, bad}
    assert all(s in ("queued", "running") for s, _ in first.values()), first

    wait_until(lambda: (tmp_path / f"args.{good}").exists(), timeout=60,
               message="the allocation's worker command to start")
    assert states(slurm, good)[good][0] == "running"
    args = (tmp_path / f"args.{good}").read_text().split()
    assert args[:4] == ["worker", "start", "--manager", "slurm"], args
    assert args[4:6] == ["--server-dir", str(tmp_path / "a" / "server")], args
    assert (tmp_path / "a" / "hq-alloc.sh").exists()

    (tmp_path / f"go.{good}").write_text("0")
    wait_until(lambda: (tmp_path / f"args.{bad}").exists(), timeout=60,
               message="the second allocation to start")
    (tmp_path / f"go.{bad}").write_text("3")

    def ended():
        s = states(slurm, good, bad)
        return s if all(v[0] in ("finished", "failed") for v in s.values()) else None
    s = wait_until(ended, timeout=60, message="both allocations to end")
    assert s[good] == ("finished", "COMPLETED"), s
    assert s[bad] == ("failed", "FAILED (NonZeroExitCode)"), s
    assert good not in slurm.active_jobs() and bad not in slurm.active_jobs()


def test_cancel_ends_queued_and_running_allocations(slurm, tmp_path):
    hq = fake_hq(tmp_path)
    running = submit(slurm, tmp_path / "r", hq)
    wait_until(lambda: (tmp_path / f"args.{running}").exists(), timeout=60,
               message="the allocation to start")
    # This one asks for all the node's CPUs, one of which is taken, so it stays queued.
    cpus = slurm.run(["sinfo", "-h", "-n", "localhost", "-o", "%c"]).stdout.strip()
    queued = submit(slurm, tmp_path / "q", hq, f"--cpus-per-task={cpus}")
    assert states(slurm, queued)[queued][0] == "queued"
    probe(slurm, "cancel", running, queued)

    def canceled():
        s = states(slurm, running, queued)
        return s if all(v[0] == "finished" for v in s.values()) else None
    s = wait_until(canceled, timeout=60, message="both allocations to be canceled")
    assert s[running][1] == "CANCELLED" and s[queued][1] == "CANCELLED", s
    assert not (tmp_path / f"args.{queued}").exists()
    assert slurm.active_jobs() == []
    # Canceling allocations that ended is no error; asking about forgotten ids neither.
    probe(slurm, "cancel", running)
    assert states(slurm, "999999") == {}


def test_submit_shows_sbatchs_error(slurm, tmp_path):
    p = slurm.run([PROBE, "slurm", "submit", str(tmp_path / "x"), "/bin/true",
                   str(tmp_path / "server"), "10m", "--partition=nope"])
    assert p.returncode == 1
    assert "sbatch failed (exit 1)" in p.stderr, p.stderr
    assert "Invalid partition name specified" in p.stderr, p.stderr


def test_generated_allocation_starts_a_real_worker_that_knows_its_allocation(slurm, hq_env):
    hq_env.start_server()
    job = submit(slurm, hq_env.root / "alloc", HQ_BIN, server_dir=hq_env.server_dir,
                 time_limit="20m")
    [w] = wait_until(lambda: hq_env.json(["worker", "list"]), timeout=90,
                     message=f"the worker of allocation {job} to connect")
    assert w["configuration"]["group"] == job
    assert 18 * 60 < w["configuration"]["time_limit"] <= 20 * 60, w["configuration"]
    assert states(slurm, job)[job] == ("running", "RUNNING")
    # A task runs there; then canceling the allocation takes the worker with it.
    task = hq_env.submit(["--", "bash", "-c", "echo $SLURM_JOB_ID"])
    assert hq_env.wait_job(task) == 0
    probe(slurm, "cancel", job)
    wait_until(lambda: states(slurm, job)[job][0] == "finished", timeout=60,
               message=f"allocation {job} to end")
    wait_until(lambda: not hq_env.json(["worker", "list"]), timeout=60,
               message="the worker to go away with its allocation")
    out = (hq_env.work / f"job-{task}" / "0.stdout").read_text().strip()
    assert out == job, out


def run_hq(slurm, args, cwd):
    return subprocess.run([HQ_BIN, *args], cwd=cwd, env=dict(os.environ, **slurm.env),
                          capture_output=True, text=True, timeout=120)


def test_dry_run_with_wrong_sbatch_arguments_fails_with_sbatchs_error(slurm, tmp_path):
    p = run_hq(slurm, ["alloc", "dry-run", "slurm", "--time-limit", "10m", "--",
                       "--partition=nope"], tmp_path)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "dry run of a slurm allocation failed: sbatch failed (exit 1)" in p.stderr, p.stderr
    assert "Invalid partition name specified" in p.stderr, p.stderr
    p = run_hq(slurm, ["alloc", "dry-run", "slurm", "--time-limit", "10m", "--", "--bogus"],
               tmp_path)
    assert p.returncode == 1
    assert "unrecognized option '--bogus'" in p.stderr, p.stderr
    assert slurm.active_jobs() == []


def test_dry_run_with_right_arguments_leaves_no_slurm_job(slurm, tmp_path):
    p = run_hq(slurm, ["alloc", "dry-run", "slurm", "--time-limit", "10m", "--cpus", "1",
                       "--max-workers-per-alloc", "1", "--", "--partition=debug"], tmp_path)
    assert p.returncode == 0, p.stderr
    assert "Dry run succeeded" in p.stdout
    assert slurm.active_jobs() == []
    # It was a real submission: SLURM remembers it, canceled before it ran.
    listed = slurm.run(["squeue", "-h", "-t", "all", "-n", "hq-alloc", "-o", "%T"])
    assert "CANCELLED" in listed.stdout.split(), listed.stdout


def test_dry_run_checks_its_options_before_submitting(slurm, tmp_path):
    p = run_hq(slurm, ["alloc", "dry-run", "slurm", "--time-limit", "10m",
                       "--worker-time-limit", "1h"], tmp_path)
    assert p.returncode == 1
    assert "--worker-time-limit (1h 0m 0s) is longer than --time-limit (10m 0s)" in p.stderr
    p = run_hq(slurm, ["alloc", "dry-run", "slurm", "--time-limit", "soon"], tmp_path)
    assert p.returncode == 1 and "invalid --time-limit" in p.stderr, p.stderr
    p = run_hq(slurm, ["alloc", "dry-run", "slurm", "--time-limit", "1m", "--cpus", "x"],
               tmp_path)
    assert p.returncode == 1 and "invalid --cpus" in p.stderr, p.stderr
    assert slurm.active_jobs() == []


def test_worker_inside_a_slurm_job_takes_its_id_as_group_and_its_time_as_limit(
        slurm, hq_env):
    hq_env.start_server()
    hq_env.env.update(slurm.env)
    script = hq_env.root / "worker.sh"
    # No --manager: the worker detects SLURM from SLURM_JOB_ID.
    script.write_text(f"#!/bin/bash\nexec {HQ_BIN} worker start --cpus 1 "
                      f"--server-dir {hq_env.server_dir}\n")
    job = slurm.sbatch("--time=10", "--output", str(hq_env.root / "slurm-%j.out"), str(script),
                       cwd=hq_env.work)
    [w] = wait_until(lambda: hq_env.json(["worker", "list"]), timeout=90,
                     message=f"the worker of SLURM job {job} to connect")
    assert w["configuration"]["group"] == job
    limit = w["configuration"]["time_limit"]
    # What squeue said was left of the job's 10 minutes when the worker started.
    assert 8 * 60 < limit <= 10 * 60, limit
    info = hq_env.json(["worker", "info", str(w["id"])])
    info = info[0] if isinstance(info, list) else info
    assert info["configuration"]["group"] == job
    # The allocation ends with its worker.
    hq_env.command(["worker", "stop", str(w["id"])])
    wait_until(lambda: slurm.state(job) == "COMPLETED", timeout=60,
               message=f"SLURM job {job} to complete (state {slurm.state(job)})")


def test_worker_group_option_wins_and_manager_none_ignores_slurm(slurm, hq_env):
    hq_env.start_server()
    hq_env.env.update(slurm.env)
    script = hq_env.root / "workers.sh"
    script.write_text(
        "#!/bin/bash\n"
        f"{HQ_BIN} worker start --cpus 1 --group mine --time-limit 2h "
        f"--server-dir {hq_env.server_dir} &\n"
        f"{HQ_BIN} worker start --cpus 1 --manager none --server-dir {hq_env.server_dir} &\n"
        "wait\n")
    job = slurm.sbatch("--time=30", "--output", str(hq_env.root / "slurm-%j.out"), str(script),
                       cwd=hq_env.work)
    workers = wait_until(lambda: (lambda ws: ws if len(ws) == 2 else None)(
        hq_env.json(["worker", "list"])), timeout=90, message=f"two workers of job {job}")
    by_group = {w["configuration"]["group"]: w["configuration"]["time_limit"] for w in workers}
    assert set(by_group) == {"mine", "default"}, by_group
    # --time-limit 2h is capped by the job's 30 minutes; --manager none has no limit.
    assert 28 * 60 < by_group["mine"] <= 30 * 60, by_group
    assert by_group["default"] is None, by_group
    hq_env.command(["worker", "stop", "all"])
    wait_until(lambda: slurm.state(job) == "COMPLETED", timeout=60,
               message=f"SLURM job {job} to complete (state {slurm.state(job)})")


def test_manager_slurm_outside_a_job_is_a_clear_error(hq_env):
    env = {k: v for k, v in hq_env.env.items() if not k.startswith("SLURM_")}
    p = subprocess.run([HQ_BIN, "worker", "start", "--manager", "slurm"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 1
    assert ("--manager slurm: SLURM_JOB_ID is not set (is this worker inside a slurm job?)"
            in p.stderr), p.stderr
