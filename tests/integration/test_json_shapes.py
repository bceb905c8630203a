"""Every command's `--output-mode json` output has the shape docs/json.md documents.

The test reads the examples of docs/json.md (a "### `hq ...`" heading, then a ```json block),
runs each command through the real binary in a campaign where every state occurs (finished,
failed, waiting, running, canceled tasks; a stopped worker; a stream; a journal), and checks the
output against its example: the same kinds of values, no key the example lacks. Keys written as
`<...>` in an example stand for any key (a job id, an environment variable). Across the whole run,
every key of every example must appear at least once, so an example cannot keep a key that the
output lost."""

import json
import os
import re
from pathlib import Path

import pytest

from conftest import wait_until

DOC = Path(__file__).resolve().parents[2] / "docs" / "json.md"


def documented_shapes():
    text = DOC.read_text()
    shapes = {}
    for m in re.finditer(r"^### `(hq [^`]+)`\n(.*?)^```json\n(.*?)^```", text, re.S | re.M):
        title, example = m.group(1), m.group(3)
        assert title not in shapes, f"docs/json.md documents `{title}` twice"
        try:
            shapes[title] = json.loads(example)
        except json.JSONDecodeError as e:
            pytest.fail(f"docs/json.md: the example of `{title}` is not JSON: {e}")
    return shapes


def merged(examples):
    """One template from the elements of an example list: objects merged key by key (nested
    objects too), so that each element may show keys the others lack."""
    if all(isinstance(e, dict) for e in examples):
        out = {}
        for e in examples:
            for k, v in e.items():
                if isinstance(out.get(k), dict) and isinstance(v, dict):
                    out[k] = merged([out[k], v])
                elif k not in out or out[k] is None:
                    out[k] = v
        return out
    return examples[0]


def key_paths(doc, path, out):
    """Every key path of an example: "tasks[].started_at", "task_stats.waiting", ..."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.add(f"{path}.{k}")
            key_paths(v, f"{path}.{k}", out)
    elif isinstance(doc, list) and doc:
        key_paths(merged(doc), f"{path}[]", out)
    return out


def same_kind(doc, value):
    if isinstance(doc, bool) or isinstance(value, bool):
        return isinstance(doc, bool) and isinstance(value, bool)
    if isinstance(doc, float):
        return isinstance(value, (int, float))
    if isinstance(doc, int):
        return isinstance(value, int)
    return isinstance(value, type(doc))


def check(doc, value, path, seen):
    if doc is None or value is None:
        return  # a documented null stands for any value; any value may be absent (null)
    if isinstance(doc, dict):
        assert isinstance(value, dict), f"{path}: an object in docs/json.md, here {value!r}"
        wild = [k for k in doc if k.startswith("<")]
        for k, v in value.items():
            key = k if k in doc else (wild[0] if wild else None)
            assert key is not None, f"{path}: key '{k}' is not in docs/json.md ({sorted(doc)})"
            seen.add(f"{path}.{key}")
            check(doc[key], v, f"{path}.{key}", seen)
    elif isinstance(doc, list):
        assert isinstance(value, list), f"{path}: a list in docs/json.md, here {value!r}"
        if doc:
            template = merged(doc)
            for v in value:
                check(template, v, f"{path}[]", seen)
    else:
        assert same_kind(doc, value), \
            f"{path}: {type(doc).__name__} in docs/json.md, here {value!r}"


class Shapes:
    def __init__(self, hq_env):
        self.hq_env = hq_env
        self.docs = documented_shapes()
        self.seen = {title: set() for title in self.docs}
        self.checked = set()
        # HQ_JSON_DUMP=FILE: write every output to FILE instead of checking (to write the doc).
        self.dump = os.environ.get("HQ_JSON_DUMP")
        self.outputs = {}

    def output(self, title, value):
        if self.dump:
            self.outputs.setdefault(title, []).append(value)
            return
        assert title in self.docs, f"`{title}` prints JSON but docs/json.md does not document it"
        check(self.docs[title], value, "", self.seen[title])
        self.checked.add(title)

    def run(self, title, args, expect_fail=False):
        p = self.hq_env.run(["--output-mode", "json", *args])
        assert (p.returncode != 0) == expect_fail, (args, p.returncode, p.stdout, p.stderr)
        value = json.loads(p.stdout)
        self.output(title, value)
        return value

    def run_lines(self, title, args):
        out = self.hq_env.command(["--output-mode", "json", *args])
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert lines, f"`{title}` printed no records"
        self.output(title, lines)  # documented as a list of example lines
        return lines

    def finish(self):
        if self.dump:
            Path(self.dump).write_text(json.dumps(self.outputs, indent=2))
            return
        missing = sorted(set(self.docs) - self.checked)
        assert not missing, f"docs/json.md documents commands this test does not run: {missing}"
        for title, doc in self.docs.items():
            never = sorted(key_paths(doc, "", set()) - self.seen[title])
            assert not never, f"`{title}`: documented keys that no output had: {never}"


def test_every_json_output_has_the_documented_shape(hq_env, tmp_path):
    shapes = Shapes(hq_env)
    journal = tmp_path / "journal"
    stream = tmp_path / "stream"
    # The server's batch commands are stand-ins: an allocation queue's shapes without a SLURM.
    fake = tmp_path / "fake-slurm"
    fake.mkdir()
    for name, body in (("sbatch", "echo 4242"), ("squeue", "echo '4242|PENDING|Priority'"),
                       ("scancel", "true")):
        (fake / name).write_text(f"#!/bin/sh\n{body}\n")
        (fake / name).chmod(0o755)
    hq_env.env["PATH"] = f"{fake}:{hq_env.env['PATH']}"
    hq_env.start_server("--journal", str(journal))
    worker = hq_env.start_worker(2, "--resource", "numa=[[0,1],[2,3]]")
    release = tmp_path / "release"

    submitted = shapes.run("hq submit", ["submit", "--env", "GREETING=hi", "--", "true"])
    done = submitted["id"]
    waited = shapes.run("hq job wait", ["job", "wait", str(done)])
    assert waited["finished"] == 1
    shapes.run("hq job wait", ["submit", "--wait", "--", "true"])
    failed = hq_env.submit(["--array", "1-2", "--", "bash", "-c", "exit $HQ_TASK_ID"])
    assert hq_env.wait_job(failed) != 0
    streamed = hq_env.submit(["--stream", str(stream), "--cpus", "1", "--time-limit", "1m",
                              "--", "bash", "-c", "echo out; echo err >&2"])
    assert hq_env.wait_job(streamed) == 0
    waiting = hq_env.submit(["--cpus", "16", "--", "true"])
    running = hq_env.submit(["--", "bash", "-c", f"while [ ! -e {release} ]; do sleep 0.05; done"])
    hq_env.wait_for_task_state(running, 0, "running")
    canceled = hq_env.submit(["--cpus", "16", "--", "true"])
    shapes.run("hq job cancel", ["job", "cancel", str(canceled)])
    partly = hq_env.submit(["--array", "1-4", "--cpus", "16", "--", "true"])
    shapes.run("hq task cancel", ["task", "cancel", str(partly), "2-3"])

    graph_file = tmp_path / "graph.toml"
    graph_file.write_text('[[task]]\nid = 1\ncommand = ["false"]\n\n'
                          '[[task]]\nid = 2\ncommand = ["true"]\ndeps = [1]\n'
                          '[task.env]\nSTEP = "2"\n')
    graph = shapes.run("hq job submit-file", ["job", "submit-file", str(graph_file)])["id"]
    assert hq_env.wait_job(graph) != 0
    held_file = tmp_path / "held.toml"
    held_file.write_text('[[task]]\nid = 3\ncommand = ["true"]\n[[task.request]]\n'
                         'resources = { cpus = "16" }\n\n'
                         '[[task]]\nid = 7\ncommand = ["true"]\ndeps = [3]\n'
                         '[[task.request]]\nresources = { cpus = "16" }\n')
    held = hq_env.command(["--output-mode", "quiet", "job", "submit-file", str(held_file)])
    held = int(held.strip())

    opened = shapes.run("hq job open", ["job", "open"])["id"]
    shapes.run("hq submit", ["submit", "--job", str(opened), "--", "true"])
    shapes.run("hq job close", ["job", "close", str(opened)])
    jobs = shapes.run("hq job list", ["job", "list", "--all"])
    assert {j["id"] for j in jobs} == {done, done + 1, failed, streamed, waiting, running,
                                      canceled, partly, graph, held, opened}
    for job in (done, failed, streamed, waiting, running, canceled, graph):
        shapes.run("hq job info", ["job", "info", str(job)])
    shapes.run("hq task list", ["task", "list", str(graph)])
    [aborted] = shapes.run("hq task info", ["task", "info", str(graph), "2"])
    assert aborted["aborted_by"] == {"job": graph, "task": 1}
    explained = shapes.run("hq task explain", ["task", "explain", str(held), "7"])
    assert explained["waiting_for"] == [3]
    tasks = shapes.run("hq task list", ["task", "list", str(failed)])
    assert [t["state"] for t in tasks[str(failed)]] == ["failed", "failed"]
    for job in (done, waiting, running, canceled):
        shapes.run("hq task list", ["task", "list", str(job)])
    shapes.run("hq task info", ["task", "info", str(failed), "1"])
    shapes.run("hq task info", ["task", "info", str(running), "0"])
    shapes.run("hq task explain", ["task", "explain", str(waiting), "0"])

    shapes.run("hq job task-ids", ["job", "task-ids", str(failed)])
    shapes.run("hq job summary", ["job", "summary"])
    shapes.run("hq job progress", ["job", "progress", str(failed)])
    shapes.run("hq server info", ["server", "info"])
    shapes.run("hq worker list", ["worker", "list"])
    shapes.run("hq worker info", ["worker", "info", str(worker.worker_id)])
    shapes.run("hq worker address", ["worker", "address", str(worker.worker_id)])
    release.write_text("")
    assert hq_env.wait_job(running) == 0

    shapes.run("hq output-log summary", ["output-log", str(stream), "summary"])
    shapes.run("hq output-log jobs", ["output-log", str(stream), "jobs"])
    shapes.run("hq output-log show", ["output-log", str(stream), "show"])
    shapes.run("hq output-log export", ["output-log", str(stream), "export", str(streamed)])

    forgettable = hq_env.submit(["--", "true"])
    assert hq_env.wait_job(forgettable) == 0
    shapes.run("hq job forget", ["job", "forget", str(forgettable)])
    hq_env.command(["--output-mode", "json", "journal", "flush"])
    shapes.run("hq worker stop", ["worker", "stop", str(worker.worker_id)])
    worker.wait(timeout=30)
    wait_until(lambda: not hq_env.connected_workers(), message="the worker to leave")
    shapes.run("hq worker list", ["worker", "list", "--all"])
    shapes.run("hq worker info", ["worker", "info", str(worker.worker_id)])
    shapes.run("hq (error)", ["job", "info", "99"], expect_fail=True)

    queue = shapes.run("hq alloc add", ["alloc", "add", "slurm", "--no-dry-run", "--time-limit",
                                        "10m", "--cpus", "1", "--max-worker-count", "2"])["id"]
    hq_env.submit(["--", "true"])
    wait_until(lambda: hq_env.json(["alloc", "info", str(queue)])["allocations"],
               message="the queue to submit an allocation")
    shapes.run("hq alloc list", ["alloc", "list"])
    shapes.run("hq alloc info", ["alloc", "info", str(queue)])
    shapes.run("hq alloc pause", ["alloc", "pause", str(queue)])
    shapes.run("hq alloc pause", ["alloc", "resume", str(queue)])
    shapes.run("hq alloc pause", ["alloc", "remove", str(queue)])
    hq_env.command(["server", "stop"])
    hq_env.server.wait(timeout=30)
    shapes.run("hq journal report", ["journal", "report", "--journal", str(journal)])
    shapes.run_lines("hq journal replay", ["journal", "replay", "--journal", str(journal)])
    shapes.run_lines("hq journal replay", ["journal", "export", "--journal", str(journal)])
    hq_env.start_server("--journal", str(journal))
    shapes.run("hq journal prune", ["journal", "prune"])
    shapes.finish()
