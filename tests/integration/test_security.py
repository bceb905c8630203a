"""The access file, keys and the server directory lock."""

import json
import os
import stat

from conftest import wait_until


def test_access_file_is_private_and_has_two_keys(hq_env):
    hq_env.start_server()
    path = hq_env.server_dir / "access.json"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    access = json.loads(path.read_text())
    client, worker = access["client"]["secret_key"], access["worker"]["secret_key"]
    assert len(client) == 64 and len(worker) == 64
    assert client != worker
    info = hq_env.json(["server", "info"])
    assert info["server_uid"] == access["server_uid"]
    assert info["client_port"] == access["client"]["port"]
    assert info["worker_port"] == access["worker"]["port"]
    assert info["version"] == access["version"]


def test_wrong_key_is_refused(hq_env):
    hq_env.start_server()
    access = json.loads((hq_env.server_dir / "access.json").read_text())
    bad_dir = hq_env.root / "bad"
    bad_dir.mkdir()
    forged = json.loads(json.dumps(access))
    forged["client"]["secret_key"] = "00" * 32
    # The client key does not open the worker port.
    forged["worker"]["secret_key"] = access["client"]["secret_key"]
    (bad_dir / "access.json").write_text(json.dumps(forged))
    os.chmod(bad_dir / "access.json", 0o600)  # a readable one is refused before any handshake
    p = hq_env.run(["job", "list"], server_dir=bad_dir)
    assert p.returncode != 0
    assert "wrong key" in p.stderr or "handshake" in p.stderr
    p = hq_env.run(["worker", "start"], server_dir=bad_dir, timeout=60)
    assert p.returncode != 0
    assert "handshake" in p.stderr or "wrong key" in p.stderr
    # The server is unharmed and registered no worker.
    assert hq_env.json(["worker", "list", "--all"]) == []


def test_second_server_on_same_directory_fails(hq_env):
    hq_env.start_server()
    p = hq_env.run(["server", "start"], timeout=30)
    assert p.returncode != 0
    assert "already running" in p.stderr


def test_no_server_gives_clear_error(hq_env):
    p = hq_env.run(["job", "list"])
    assert p.returncode != 0
    assert "no access file" in p.stderr and "hq server start" in p.stderr


def test_server_dir_flag_before_or_after_subcommand(hq_env):
    other = hq_env.root / "other-server"
    hq_env.start_server("--server-dir", str(other), wait=False)
    wait_until(lambda: hq_env.run(["--server-dir", str(other), "server", "info"]).returncode == 0,
               message="the server to answer")
    a = hq_env.command(["--server-dir", str(other), "server", "info"])
    b = hq_env.command(["server", "info", "--server-dir", str(other)])
    assert a == b and str(other) in a


def test_flood_of_silent_connections_is_capped_while_clients_work(hq_env):
    import resource
    import socket
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    info = hq_env.json(["server", "info"])
    port = info["client_port"]
    server_pid = info["pid"]
    flood = []
    try:
        # 2,000 connections that never speak.
        for _ in range(2000):
            s = socket.create_connection(("127.0.0.1", port))
            flood.append(s)
        # A real client submits through it, the journal syncs, the job runs.
        job = hq_env.submit(["--", "true"])
        assert hq_env.wait_job(job) == 0
        assert hq_env.job(job)["state"] == "finished"
        # The server holds a bounded number of them: the oldest were dropped.
        open_fds = len(os.listdir(f"/proc/{server_pid}/fd"))
        assert open_fds < 400, f"the server holds {open_fds} descriptors"
        # The dropped ones see the end of their connection.
        closed = 0
        for s in flood[:100]:
            s.settimeout(10)
            try:
                if s.recv(1) == b"":
                    closed += 1
            except ConnectionResetError:
                closed += 1
        assert closed == 100
    finally:
        for s in flood:
            s.close()
    log = hq_env.log_of(hq_env.server)
    assert "unauthenticated client connection(s)" in log
