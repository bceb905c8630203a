"""Shared by the end-to-end benchmark scripts in tools/: a throwaway hq server (and workers) in a
temporary directory, started and torn down around a measurement."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def wait_for(predicate, timeout, what):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            sys.exit(f"benchmark: timed out waiting for {what}")
        time.sleep(0.02)


class Cluster:
    """`with Cluster(hq, server_args) as c:` runs a server in a fresh directory; c.worker(cpus)
    adds a worker; c.hq(args) runs a client command. Everything is killed on exit."""

    def __init__(self, hq, server_args=()):
        self.hq_bin = hq
        self.server_args = list(server_args)
        self.root = tempfile.mkdtemp(prefix="hq-bench-")
        self.server_dir = os.path.join(self.root, "server")
        self.env = dict(os.environ, HQ_SERVER_DIR=self.server_dir, HQ_LOG="warn")
        self.procs = []
        self.server_log = os.path.join(self.root, "server.log")

    def __enter__(self):
        self.start_server()
        return self

    def start_server(self):
        with open(self.server_log, "a") as log:
            self.server = subprocess.Popen(
                [self.hq_bin, "server", "start", "--host", "127.0.0.1", *self.server_args],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(self.server)
        wait_for(lambda: self.hq(["server", "info"], check=False).returncode == 0, 120,
                 "the server")

    def worker(self, cpus, *args, wait=True):
        """Starts a worker; returns its process."""
        before = len(self.workers()) if wait else 0
        proc = subprocess.Popen(
            [self.hq_bin, "worker", "start", "--cpus", str(cpus), *args], env=self.env,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        if wait:
            wait_for(lambda: len(self.workers()) > before, 30, "the worker")
        return proc

    def workers(self):
        out = self.hq(["--output-mode", "json", "worker", "list"], check=False).stdout
        return json.loads(out or "[]")

    def hq(self, args, check=True):
        return subprocess.run([self.hq_bin, *args], env=self.env, capture_output=True,
                              text=True, check=check)

    def __exit__(self, *exc):
        self.hq(["server", "stop"], check=False)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.root, ignore_errors=True)


def cpu_seconds(proc):
    """User + system CPU time a running process has used itself (not its children)."""
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_array(cluster, n, program, extra=()):
    """Submits an array of n tasks and waits for it; returns the elapsed seconds."""
    start = time.monotonic()
    cluster.hq(["--output-mode", "quiet", "submit", "--array", f"1-{n}", "--stdout", "none",
                "--stderr", "none", *extra, "--", program])
    if cluster.hq(["--output-mode", "quiet", "job", "wait", "last"], check=False).returncode:
        sys.exit("benchmark: some hq tasks failed")
    return time.monotonic() - start
