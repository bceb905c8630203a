"""The local SLURM cluster that the allocation tests run against (tools/local-slurm)."""

import pytest
from conftest import wait_until

# The one local SLURM cluster is shared: its tests run in one xdist worker, one at a time.
pytestmark = pytest.mark.xdist_group("slurm")


def test_sbatch_runs_a_job_on_the_local_cluster(slurm, tmp_path):
    out = tmp_path / "out"
    job = slurm.sbatch("--output", str(tmp_path / "slurm-%j.out"), "--wrap",
                       f"echo $SLURM_JOB_ID $SLURM_JOB_NODELIST > {out}")
    wait_until(lambda: slurm.state(job) == "COMPLETED", timeout=60,
               message=f"SLURM job {job} to complete (state {slurm.state(job)})")
    assert out.read_text().split() == [job, "localhost"]
    assert job not in slurm.active_jobs()


def test_scancel_ends_a_running_job(slurm, tmp_path):
    started = tmp_path / "started"
    job = slurm.sbatch("--output", "/dev/null", "--wrap", f"touch {started}; sleep 300")
    wait_until(started.exists, timeout=60, message=f"SLURM job {job} to start")
    assert slurm.state(job) == "RUNNING"
    p = slurm.run(["scancel", job])
    assert p.returncode == 0, p.stderr
    wait_until(lambda: slurm.state(job) == "CANCELLED", timeout=60,
               message=f"SLURM job {job} to be cancelled (state {slurm.state(job)})")


def test_start_again_is_a_no_op_and_status_says_it_runs(slurm):
    again = slurm.tool("start")
    assert again.returncode == 0, again.stderr
    assert "already running" in again.stdout
    status = slurm.tool("status")
    assert status.returncode == 0, status.stdout
    assert "node localhost: idle" in status.stdout or "node localhost: mix" in status.stdout
    assert f"export SLURM_CONF={slurm.dir}/slurm.conf" in status.stdout
