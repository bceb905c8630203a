"""A one-node SLURM cluster for the tests (tools/local-slurm), one per test session.

Tests take the `slurm` fixture (defined in conftest.py): it starts the cluster in a temporary
directory at the first use and stops it, with every process it started, at the end of the session.
"""

import os
import shutil
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LOCAL_SLURM = ROOT / "tools" / "local-slurm"
NEEDED = ["munged", "mungekey", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel"]


def missing_tools():
    return [t for t in NEEDED if shutil.which(t) is None]


def as_root():
    """The prefix that runs tools/local-slurm as root: none for root, else passwordless sudo
    (None when neither works)."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") and subprocess.run(["sudo", "-n", "true"],
                                               capture_output=True).returncode == 0:
        return ["sudo", "-n"]
    return None


def unavailable_reason():
    """Why the local SLURM cannot run here (None when it can). Missing packages are installed
    first, through tools/install-deps, as `make test` does."""
    if as_root() is None:
        return ("the local SLURM cluster needs root or passwordless sudo (slurmd runs jobs as "
                "their users)")
    if missing_tools():
        p = subprocess.run([str(ROOT / "tools" / "install-deps")], capture_output=True, text=True)
        if missing_tools():
            return (f"SLURM cannot be installed here ({', '.join(missing_tools())} missing; "
                    f"tools/install-deps: {p.stderr.strip() or p.returncode})")
    return None


class LocalSlurm:
    def __init__(self, directory: Path):
        self.dir = directory
        self.env = {"SLURM_CONF": str(directory / "slurm.conf")}
        self.start_seconds = None

    def tool(self, command):
        prefix = as_root() or []
        return subprocess.run([*prefix, "env", f"HQ_LOCAL_SLURM_DIR={self.dir}",
                               str(LOCAL_SLURM), command],
                              capture_output=True, text=True, timeout=180)

    def start(self):
        began = time.monotonic()
        p = self.tool("start")
        if p.returncode != 0:
            raise RuntimeError(f"tools/local-slurm start failed:\n{p.stdout}\n{p.stderr}")
        self.start_seconds = time.monotonic() - began

    def stop(self):
        p = self.tool("stop")
        status = self.tool("status")
        assert p.returncode == 0, f"tools/local-slurm stop failed:\n{p.stdout}\n{p.stderr}"
        assert status.returncode == 3, f"local SLURM still running after stop:\n{status.stdout}"

    # --- SLURM's own commands, against this cluster ---------------------------------------
    def run(self, args, cwd=None, timeout=60):
        return subprocess.run(args, cwd=cwd, env=dict(os.environ, **self.env),
                              capture_output=True, text=True, timeout=timeout)

    def sbatch(self, *args, cwd=None):
        """Submits with `sbatch --parsable ARGS`; returns the job id."""
        p = self.run(["sbatch", "--parsable", *args], cwd=cwd)
        assert p.returncode == 0, f"sbatch {args} failed:\n{p.stderr}"
        return p.stdout.strip().split(";")[0]

    def state(self, job_id):
        """The job's state as squeue prints it (PENDING, RUNNING, COMPLETED, ...), or None when
        SLURM no longer knows it."""
        p = self.run(["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"])
        return p.stdout.strip() or None

    def active_jobs(self):
        """Ids of the jobs that are pending, running or completing (squeue's default states)."""
        p = self.run(["squeue", "-h", "-o", "%i"])
        assert p.returncode == 0, p.stderr
        return p.stdout.split()

    def cancel_all(self, timeout=60):
        """Cancels every job left, and waits until squeue lists none (the next test starts
        from an empty cluster)."""
        jobs = self.active_jobs()
        if not jobs:
            return
        self.run(["scancel", *jobs])
        from conftest import wait_until  # here: conftest imports this module
        wait_until(lambda: not self.active_jobs(), timeout=timeout,
                   message="SLURM to drop the canceled jobs", interval=0.1)
