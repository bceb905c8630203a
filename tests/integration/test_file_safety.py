"""Files hq creates are private whatever the umask, and never written through planted links."""

import os
import stat
from contextlib import contextmanager


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextmanager
def umask(value):
    """The umask of this process, and so of every hq process it starts meanwhile."""
    old = os.umask(value)
    try:
        yield
    finally:
        os.umask(old)


def test_stream_directories_and_files_are_private_under_umask_0(hq_env):
    with umask(0):
        hq_env.start_server()
        worker = hq_env.start_worker(cpus=1)
        stream = hq_env.root / "a" / "b" / "stream"
        job = hq_env.submit(["--array", "1-3", "--stream", str(stream), "--", "echo", "x"])
        assert hq_env.wait_job(job) == 0
        # Readers save index sidecars into the directory: private too.
        hq_env.command(["output", "cat", str(stream), str(job)])
        hq_env.kill(worker, sig=15)
    for d in (hq_env.root / "a", hq_env.root / "a" / "b", stream):
        assert mode(d) == 0o700, d
    files = list(stream.iterdir())
    assert any(f.suffix == ".hqs" for f in files)
    for f in files:
        assert mode(f) == 0o600, f
    assert mode(hq_env.server_dir / "access.json") == 0o600


def test_an_access_file_others_can_read_is_refused_with_the_fix(hq_env):
    hq_env.start_server()
    access = hq_env.server_dir / "access.json"
    os.chmod(access, 0o644)
    err = hq_env.command(["job", "list"], expect_fail=True)
    assert "readable by group or others" in err and f"chmod 600 {access}" in err
    p = hq_env.run(["worker", "start"])
    assert p.returncode != 0 and f"chmod 600 {access}" in p.stderr
    os.chmod(access, 0o600)
    assert hq_env.json(["job", "list"]) == []


def test_default_work_directory_is_private_unpredictable_and_removed(hq_env):
    hq_env.start_server()
    with umask(0):
        worker = hq_env.start_worker(cpus=1)
    [info] = [w for w in hq_env.json(["worker", "list"]) if w["id"] == worker.worker_id]
    work_dir = info["configuration"]["work_dir"]
    assert os.path.basename(work_dir) != f"hq-worker-{worker.pid}"
    assert mode(work_dir) == 0o700
    hq_env.kill(worker, sig=15)
    assert not os.path.exists(work_dir)


def test_node_file_is_never_written_through_a_planted_link(hq_env):
    hq_env.start_server()
    shared = hq_env.root / "shared"
    shared.mkdir()
    victim = hq_env.root / "victim"
    victim.write_text("untouched\n")
    # Another user plants links at the names the node files of the next jobs would get.
    for job in range(1, 3):
        os.symlink(victim, shared / f"nodes-{job}-0-0")
    hq_env.start_worker("1", "--hostname", "node-a", "--work-dir", str(shared))
    hq_env.start_worker("1", "--hostname", "node-b", "--work-dir", str(shared))
    job = hq_env.submit(["--nodes", "2", "--stdout", "out.txt", "--", "bash", "-c",
                         'cat "$HQ_NODE_FILE"; stat -c %a "$HQ_NODE_FILE"'])
    assert hq_env.wait_job(job) == 0
    lines = (hq_env.work / "out.txt").read_text().split()
    assert sorted(lines[:2]) == ["node-a", "node-b"] and lines[2] == "600"
    assert victim.read_text() == "untouched\n"
