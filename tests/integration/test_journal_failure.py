"""A journal whose disk fills up: the server holds back what it cannot store, assigns no task the
journal does not know of, and serves again by itself once space is freed."""

import contextlib
import errno
import subprocess
import threading

import pytest

from conftest import HQ_BIN, wait_until
from test_journal import marker_job, marks_of


@contextlib.contextmanager
def small_disk(hq_env, size="16m"):
    """A tmpfs of `size` at ROOT/disk (below RocksDB's 17 MiB WAL preallocation, so that the WAL
    grows page by page and fails as soon as the disk is full). Unmounted at the end, after the
    test's processes are stopped."""
    path = hq_env.root / "disk"
    path.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {p.stderr.strip()}")
    try:
        yield path
    finally:
        try:
            hq_env.close()
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path):
    """Writes `path` until the disk is full."""
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1 << 9):
            block = b"\0" * size
            while True:
                try:
                    f.write(block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break


@contextlib.contextmanager
def full_disk(path):
    """Fills the disk of `path`, and keeps taking what is freed on it (the journal's retries
    give back the pages of the records they failed to write) until the end, when `path` is
    removed."""
    fill(path)
    stop = threading.Event()

    def keep_full():
        while not stop.wait(0.002):
            fill(path)
    filler = threading.Thread(target=keep_full, daemon=True)
    filler.start()
    try:
        yield
    finally:
        stop.set()
        filler.join()
        path.unlink()


def journal_error(hq_env):
    return hq_env.json(["server", "info"])["journal_error"]


def assert_no_instance_ran_twice(hq_env):
    for path in (hq_env.root / "marks").iterdir():
        runs = path.read_text().split()
        assert len(runs) == len(set(runs)), f"{path.name} ran an instance twice: {runs}"


def test_a_full_disk_holds_the_server_back_until_space_is_freed(hq_env):
    with small_disk(hq_env) as disk:
        journal = disk / "journal"
        hq_env.start_server("--journal", str(journal))
        workers = [hq_env.start_worker(2, "--on-server-lost", "stop"), hq_env.start_worker(2, "--on-server-lost", "stop")]
        campaign = marker_job(hq_env, "1-3000")
        wait_until(lambda: len(list((hq_env.root / "marks").iterdir())) >= 50,
                   timeout=120, message="the campaign to run")

        with full_disk(disk / "filler"):
            error = wait_until(lambda: journal_error(hq_env), timeout=60,
                               message="the journal to report the full disk")
            assert "No space left" in error, error
            assert "retries" in error, error
            # While it cannot store, changes are refused with the reason.
            err = hq_env.command(["submit", "--", "true"], expect_fail=True)
            assert "cannot store changes" in err and "No space left" in err, err
            assert "critical" in hq_env.log_of(hq_env.server)
        # The cause went away: the server recovers without a restart.
        wait_until(lambda: not journal_error(hq_env), timeout=60,
                   message="the journal to store changes again")
        log = hq_env.log_of(hq_env.server)
        assert "retrying in 100 ms (attempt 1)" in log, log
        assert "writes again after" in log and "stores changes again" in log, log
        assert hq_env.wait_job(campaign, timeout=300) == 0
        later = marker_job(hq_env, "1-10")
        assert hq_env.wait_job(later) == 0

        # Everything acknowledged survives a crash; nothing ran twice as one instance.
        hq_env.kill(hq_env.server)
        for w in workers:
            w.wait(timeout=30)
        hq_env.start_server("--journal", str(journal))
        listed = {j["id"]: j for j in hq_env.json(["job", "list", "--all"])}
        assert listed[campaign]["state"] == "finished"
        assert listed[campaign]["task_stats"]["finished"] == 3000
        assert listed[later]["state"] == "finished"
        assert_no_instance_ran_twice(hq_env)


def test_no_task_goes_to_a_worker_while_its_requeue_cannot_be_stored(hq_env):
    """The tasks of a worker lost while the disk is full must not run again before the journal
    knows their new instance: after a crash they would run a third time as that instance."""
    with small_disk(hq_env) as disk:
        journal = disk / "journal"
        hq_env.start_server("--journal", str(journal))
        gate = hq_env.root / "gate"
        doomed = hq_env.start_worker(2, "--on-server-lost", "stop")
        job = marker_job(hq_env, "1-2", gate=gate)
        hq_env.wait_for_task_state(job, 1, "running")
        hq_env.wait_for_task_state(job, 2, "running")
        spare = hq_env.start_worker(2, "--on-server-lost", "stop")  # idle: ready to take the requeued tasks

        with full_disk(disk / "filler"):
            # A submission larger than what is left of the WAL's last page fails the write;
            # its client waits for an answer (the crash below ends it).
            big = subprocess.Popen(
                [HQ_BIN, "submit", "--env", "BIG=" + "x" * 16384, "--", "true"],
                cwd=hq_env.work, env=hq_env.env, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            wait_until(lambda: journal_error(hq_env), timeout=60,
                       message="the journal to report the full disk")
            hq_env.kill(doomed)  # its tasks go back to waiting as instance 1: a record to store
            wait_until(lambda: "back to waiting" in hq_env.log_of(hq_env.server),
                       message="the server to requeue the lost worker's tasks")
            hq_env.kill(hq_env.server)  # before the disk has room again
            spare.wait(timeout=30)
            big.wait(timeout=30)
        hq_env.start_server("--journal", str(journal))
        gate.touch()
        hq_env.start_worker(cpus=2)
        assert hq_env.wait_job(job) == 0
        # Instance 1 ran after the crash (or during the failure, had a retry stored its requeue
        # before the crash), but never twice.
        for task in (1, 2):
            assert marks_of(hq_env, job, task)[:2] == ["0", "1"], marks_of(hq_env, job, task)
        assert_no_instance_ran_twice(hq_env)
