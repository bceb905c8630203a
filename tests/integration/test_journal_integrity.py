"""Trust what exists: a journal that lost acknowledged records (deleted CURRENT, damaged or cut
MANIFEST) never comes back as a smaller campaign; the journal's files are private; `hq journal
report` folds the journal as the server restores it."""

import json
import os
import random
import shutil
import stat
import struct
import subprocess

from conftest import HQ_BIN, wait_until

BLOCK = 32 * 1024
HEADER = 7  # crc32c (4), length (2, LE), type (1)


def submit_idle(hq_env, n):
    """Submits n one-task jobs that no worker runs; returns their ids (all acknowledged)."""
    return [hq_env.submit(["--cpus", "64", "--stdout", "none", "--stderr", "none", "--",
                           "true"]) for _ in range(n)]


def start_server_outcome(hq_env, *args):
    """Starts a server; returns (True, process) once it answers, or (False, log) when it exits."""
    p = hq_env.start_server(*args, wait=False)

    def settled():
        if p.poll() is not None:
            return "exited"
        return "up" if hq_env.run(["server", "info"]).returncode == 0 else None
    state = wait_until(settled, timeout=60, message="the server to answer or exit")
    if state == "exited":
        assert p.returncode != 0
        return False, hq_env.log_of(p)
    return True, p


def stop_server(hq_env, p):
    hq_env.command(["server", "stop"])
    p.wait(timeout=30)


def current_manifest(journal):
    return journal / (journal / "CURRENT").read_text().strip()


def manifest_records(data):
    """(start, end) of each physical record of a RocksDB log file (the MANIFEST's format)."""
    records, offset = [], 0
    while offset + HEADER <= len(data):
        left = BLOCK - offset % BLOCK
        if left < HEADER:  # the block's trailer, zero-filled
            offset += left
            continue
        length, kind = struct.unpack_from("<HB", data, offset + 4)
        if kind == 0 and length == 0:  # preallocated zeros: the end
            break
        records.append((offset, offset + HEADER + length))
        offset += HEADER + length
    return records


def test_deleted_current_is_refused_and_nothing_is_created(hq_env):
    hq_env.start_server()
    jobs = submit_idle(hq_env, 30)
    hq_env.kill(hq_env.server)  # the jobs are in the WAL only
    journal = hq_env.server_dir / "journal"
    (journal / "CURRENT").unlink()
    before = sorted(p.name for p in journal.iterdir())
    for attempt in range(2):  # the first failure must not leave a fresh journal behind
        up, log = start_server_outcome(hq_env)
        assert not up, f"attempt {attempt}: the server started on a journal without CURRENT"
        assert "has no CURRENT file but holds journal files" in log, log
        assert "MANIFEST-" in log and "move it aside" in log, log
        assert sorted(p.name for p in journal.iterdir()) == before
    # The fix the message names: CURRENT names the manifest again, and every job is back.
    manifests = sorted(p.name for p in journal.glob("MANIFEST-*"))
    (journal / "CURRENT").write_text(manifests[-1] + "\n")
    up, p = start_server_outcome(hq_env)
    assert up
    assert "restored 30 job(s)" in hq_env.log_of(p).splitlines()[0]
    assert [j["id"] for j in hq_env.json(["job", "list", "--all"])] == jobs


def test_a_cut_manifest_never_serves_fewer_jobs(hq_env):
    """The MANIFEST cut at every record boundary and inside every record (sampled), CURRENT
    deleted, a table file deleted: the server refuses with a clear error, or starts with every
    acknowledged job."""
    hq_env.start_server()
    jobs = submit_idle(hq_env, 4)
    ran = hq_env.submit(["--array", "1-3", "--stdout", "none", "--stderr", "none", "--", "true"])
    jobs.append(ran)
    hq_env.command(["journal", "flush"])  # table files and the MANIFEST hold them
    # The tasks' ends go to a later table file than their job's submission.
    worker = hq_env.start_worker(cpus=2)
    assert hq_env.wait_job(ran) == 0
    hq_env.kill(worker)
    hq_env.command(["journal", "flush"])
    jobs += submit_idle(hq_env, 2)        # and these are in the WAL only
    hq_env.kill(hq_env.server)
    journal = hq_env.server_dir / "journal"
    manifest = current_manifest(journal)
    data = manifest.read_bytes()
    records = manifest_records(data)
    assert len(records) >= 4, records
    assert records[-1][1] == len(data) or data[records[-1][1]:].strip(b"\0") == b""

    rng = random.Random(11)
    cuts = {0}
    for start, end in records:
        cuts.add(start)
        cuts.add(start + rng.randint(1, HEADER - 1))  # inside the header
        if end - start > HEADER + 1:
            cuts.add(rng.randint(start + HEADER, end - 1))  # inside the payload
    cuts.add(records[-1][1])  # whole
    tables = sorted(p.name for p in journal.glob("*.sst"))
    assert tables
    cases = ([("cut", c) for c in sorted(cuts)] + [("no-current", None)] +
             [("no-table", name) for name in tables])

    outcomes = {"refused": 0, "whole": 0}
    for i, (kind, cut) in enumerate(cases):
        copy = hq_env.root / f"journal-{i}"
        shutil.copytree(journal, copy)
        if kind == "cut":
            os.truncate(copy / manifest.name, cut)
        elif kind == "no-current":
            (copy / "CURRENT").unlink()
        else:
            (copy / cut).unlink()
        files = {f.name: f.stat().st_size for f in copy.iterdir()}
        up, p = start_server_outcome(hq_env, "--journal", str(copy))
        if not up:
            # Refused before anything was deleted or rewritten: the evidence is intact.
            assert {f.name: f.stat().st_size for f in copy.iterdir()} == files, (kind, cut)
            assert ("has lost acknowledged records" in p or "the journal is damaged" in p or
                    "has no CURRENT file" in p), f"{kind} {cut}: unclear refusal:\n{p}"
            outcomes["refused"] += 1
            reason = next((line for line in p.splitlines() if "journal" in line and
                           ("lost" in line or "damaged" in line or "CURRENT" in line)), p)
            print(f"{kind} {cut}: refused: {reason[-300:]}")
            continue
        listed = {j["id"]: j for j in hq_env.json(["job", "list", "--all"])}
        stop_server(hq_env, p)
        assert sorted(listed) == jobs, f"{kind} at {cut} of {len(data)}: started with {listed}"
        # Finished tasks stay finished (a task seen finished never runs again).
        assert listed[ran]["task_stats"]["finished"] == 3, (kind, cut, listed[ran])
        outcomes["whole"] += 1
    # Both outcomes occur: the cuts that lose table files are refused, the whole file starts.
    assert outcomes["refused"] > 0 and outcomes["whole"] > 0, outcomes

    # `hq journal report` names the damage of a cut that loses the flushed jobs.
    for i, (kind, cut) in enumerate(cases):
        copy = hq_env.root / f"journal-{i}"
        if kind != "cut" or cut >= records[-1][1] or not (hq_env.root / f"journal-{i}").exists():
            continue
        report = hq_env.run(["--output-mode", "json", "journal", "report", "--journal",
                             str(copy)])
        if report.returncode == 0 and any("lost records" in d
                                          for d in json.loads(report.stdout)["damage"]):
            break
    else:
        raise AssertionError("no report of a cut MANIFEST named the lost records")


def test_journal_files_are_private_under_umask_0(hq_env):
    journal = hq_env.root / "open-journal"
    journal.mkdir(mode=0o755)
    os.chmod(journal, 0o755)
    old = os.umask(0)
    try:
        hq_env.start_server("--journal", str(journal))
        hq_env.submit(["--env", "API_TOKEN=secret-42", "--cpus", "64", "--", "true"])
        hq_env.command(["journal", "flush"])
        hq_env.submit(["--env", "API_TOKEN=secret-43", "--cpus", "64", "--", "true"])
    finally:
        os.umask(old)
    assert stat.S_IMODE(journal.stat().st_mode) == 0o700
    files = [p for p in journal.iterdir() if p.is_file()]
    assert any(p.suffix == ".sst" for p in files), files
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, f"{p.name}: {oct(p.stat().st_mode)}"
    # A fresh default journal too (the directory created under umask 0).
    hq_env.command(["server", "stop"])
    hq_env.server.wait(timeout=30)
    old = os.umask(0)
    try:
        hq_env.start_server()
    finally:
        os.umask(old)
    default = hq_env.server_dir / "journal"
    assert stat.S_IMODE(default.stat().st_mode) == 0o700
    for p in default.iterdir():
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name


def report_jobs(hq_env):
    report = hq_env.json(["journal", "report"])
    assert report["damage"] == [], report["damage"]
    return {j["id"]: (j["state"], j["tasks"]) for j in report["job_list"]}


def server_jobs(hq_env):
    out = {}
    for j in hq_env.json(["job", "list", "--all"]):
        out[j["id"]] = (j["state"], {k: v for k, v in j["task_stats"].items() if v})
    return out


def test_report_agrees_with_the_restarted_server(hq_env):
    """Random campaigns (submits, cancels, failing tasks, max-fails aborts, worker kills, server
    kill -9 restarts): the journal report's per-job states and task counts are those of the
    server restarted on the same journal."""
    seen_jobs, seen_tasks = set(), set()
    for seed in (1, 2, 3):
        rng = random.Random(seed)
        hq_env.server_dir = hq_env.root / f"server-{seed}"
        hq_env.env["HQ_SERVER_DIR"] = str(hq_env.server_dir)
        hq_env.start_server()
        workers = [hq_env.start_worker(2, "--on-server-lost", "stop")]
        jobs = []
        for step in range(8):
            action = rng.choice(["submit", "submit", "submit", "cancel", "kill-worker",
                                 "kill-server"])
            if action == "submit" or not jobs:
                n = rng.randint(1, 12)
                fail_mod = rng.choice([0, 2, 3])
                script = (f"[ $(( $HQ_TASK_ID % {fail_mod} )) -ne 0 ] && exit 1; sleep 0.0{rng.randint(1, 9)}"
                          if fail_mod else f"sleep 0.0{rng.randint(1, 9)}")
                extra = ["--max-fails", "1"] if rng.random() < 0.3 else []
                jobs.append(hq_env.submit(["--array", f"1-{n}", "--stdout", "none", "--stderr",
                                           "none", *extra, "--", "bash", "-c", script]))
            elif action == "cancel":
                hq_env.command(["job", "cancel", str(rng.choice(jobs))])
            elif action == "kill-worker" and workers:
                hq_env.kill(workers.pop(rng.randrange(len(workers))))
                workers.append(hq_env.start_worker(2, "--on-server-lost", "stop"))
            elif action == "kill-server":
                hq_env.kill(hq_env.server)
                for w in workers:
                    w.wait(timeout=30)
                hq_env.start_server()
                workers = [hq_env.start_worker(2, "--on-server-lost", "stop")]
        # A job aborted by its max-fails, and one running when everything is killed.
        aborted = hq_env.submit(["--array", "1-6", "--max-fails", "0", "--stdout", "none",
                                 "--stderr", "none", "--", "bash", "-c", "exit 2"])
        hq_env.wait_job(aborted)
        running = hq_env.submit(["--array", "1-3", "--stdout", "none", "--stderr", "none", "--",
                                 "sleep", "300"])
        jobs += [aborted, running]
        if not any(w.poll() is None for w in workers):
            workers.append(hq_env.start_worker(2, "--on-server-lost", "stop"))
        hq_env.wait_for_task_state(running, 1, "running", timeout=60)
        # Stop everything with kill -9, compare the offline report with a fresh server.
        hq_env.kill(hq_env.server)
        for w in workers:
            if w.poll() is None:
                hq_env.kill(w)
        folded = report_jobs(hq_env)
        hq_env.start_server()
        served = server_jobs(hq_env)
        assert folded == served, f"seed {seed}: report {folded} != server {served}"
        assert set(served) == set(jobs)
        for state, tasks in served.values():
            seen_jobs.add(state)
            seen_tasks.update(tasks)
        hq_env.kill(hq_env.server)
    print("job states", seen_jobs, "task states", seen_tasks)
    # The campaigns reached the states where the two folds used to differ.
    assert {"finished", "failed", "waiting", "aborted"} <= seen_tasks, seen_tasks
