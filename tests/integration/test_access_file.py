"""Access files in HyperQueue's layout: `hq server generate-access`, `hq server start
--access-file`, and client-only / worker-only halves used through --server-dir."""

import json
import os
import shutil
import socket
import stat


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def generate(hq_env, *extra):
    """Generates ROOT/access.json (and its halves) on two free ports; returns the ports."""
    client_port, worker_port = free_port(), free_port()
    while worker_port == client_port:
        worker_port = free_port()
    hq_env.command(["server", "generate-access", str(hq_env.root / "access.json"),
                    "--host", "127.0.0.1", "--client-port", str(client_port),
                    "--worker-port", str(worker_port),
                    "--client-file", str(hq_env.root / "client.json"),
                    "--worker-file", str(hq_env.root / "worker.json"), *extra])
    return client_port, worker_port


def as_server_dir(hq_env, half, name):
    """A directory holding `half` as its access.json, as HyperQueue's docs suggest."""
    directory = hq_env.root / name
    directory.mkdir()
    shutil.copy(half, directory / "access.json")
    os.chmod(directory / "access.json", 0o600)
    return directory


def test_generated_files_have_hyperqueues_layout(hq_env):
    client_port, worker_port = generate(hq_env, "--worker-host", "node7")
    full = json.loads((hq_env.root / "access.json").read_text())
    assert isinstance(full["version"], str) and full["server_uid"]
    assert full["client"] == {"host": "127.0.0.1", "port": client_port,
                              "secret_key": full["client"]["secret_key"]}
    assert full["worker"]["host"] == "node7" and full["worker"]["port"] == worker_port
    assert len(full["client"]["secret_key"]) == 64 and len(full["worker"]["secret_key"]) == 64
    assert full["client"]["secret_key"] != full["worker"]["secret_key"]
    client = json.loads((hq_env.root / "client.json").read_text())
    worker = json.loads((hq_env.root / "worker.json").read_text())
    assert "worker" not in client and client["client"] == full["client"]
    assert "client" not in worker and worker["worker"] == full["worker"]
    assert client["server_uid"] == worker["server_uid"] == full["server_uid"]
    for name in ("access.json", "client.json", "worker.json"):
        assert stat.S_IMODE(os.stat(hq_env.root / name).st_mode) == 0o600
    # Another run: other keys, another server.
    hq_env.command(["server", "generate-access", str(hq_env.root / "again.json"),
                    "--client-port", "1", "--worker-port", "2"])
    again = json.loads((hq_env.root / "again.json").read_text())
    assert again["server_uid"] != full["server_uid"]
    assert again["client"]["secret_key"] != full["client"]["secret_key"]
    err = hq_env.command(["server", "generate-access", str(hq_env.root / "x.json")],
                         expect_fail=True)
    assert "--client-port" in err


def test_server_from_access_file_serves_a_client_half_and_a_worker_half(hq_env):
    client_port, worker_port = generate(hq_env)
    full = json.loads((hq_env.root / "access.json").read_text())
    hq_env.start_server("--access-file", str(hq_env.root / "access.json"), host=None)
    info = hq_env.json(["server", "info"])
    assert (info["client_port"], info["worker_port"]) == (client_port, worker_port)
    assert info["server_uid"] == full["server_uid"]
    # Its own access.json in the server directory, as always: the same keys.
    own = json.loads((hq_env.server_dir / "access.json").read_text())
    assert own["client"] == full["client"] and own["worker"] == full["worker"]
    assert own["pid"] == info["pid"]

    client_dir = as_server_dir(hq_env, hq_env.root / "client.json", "client-only")
    worker_dir = as_server_dir(hq_env, hq_env.root / "worker.json", "worker-only")
    worker = hq_env.start_worker(1, env={"HQ_SERVER_DIR": str(worker_dir)})
    job = hq_env.submit(["--", "true"], server_dir=client_dir)
    assert hq_env.run(["job", "wait", str(job)], server_dir=client_dir).returncode == 0
    [t] = hq_env.tasks(job)
    assert t["state"] == "finished" and t["worker"] == worker.worker_id

    # The client half cannot start a worker; the worker half cannot run client commands.
    p = hq_env.run(["worker", "start", "--cpus", "1"], server_dir=client_dir)
    assert p.returncode != 0
    assert 'no "worker" section' in p.stderr and str(client_dir / "access.json") in p.stderr
    p = hq_env.run(["job", "list"], server_dir=worker_dir)
    assert p.returncode != 0
    assert 'no "client" section' in p.stderr
    assert hq_env.connected_workers() == [worker.worker_id]


def test_server_start_with_a_half_or_a_taken_port_fails_clearly(hq_env):
    client_port, _ = generate(hq_env)
    p = hq_env.run(["server", "start", "--access-file", str(hq_env.root / "worker.json")])
    assert p.returncode != 0
    assert 'no "client" section, which a server needs' in p.stderr, p.stderr
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("0.0.0.0", client_port))
        taken.listen()
        p = hq_env.run(["server", "start", "--access-file", str(hq_env.root / "access.json")])
    assert p.returncode != 0
    assert f"cannot listen for clients on port {client_port}" in p.stderr, p.stderr
    assert "access.json" in p.stderr
    p = hq_env.run(["server", "start", "--access-file", str(hq_env.root / "access.json"),
                    "--client-port", "5"])
    assert p.returncode != 0 and "excludes" in p.stderr


def test_old_flat_access_file_is_refused_with_the_fix(hq_env):
    hq_env.server_dir.mkdir()
    path = hq_env.server_dir / "access.json"
    path.write_text(json.dumps({"version": 1, "server_uid": "abc", "host": "127.0.0.1",
                                "client_port": 1, "worker_port": 2, "client_key": "00" * 32,
                                "worker_key": "11" * 32}))
    os.chmod(path, 0o600)
    p = hq_env.run(["job", "list"])
    assert p.returncode != 0
    assert "old flat layout" in p.stderr and "generate-access" in p.stderr


def test_restart_with_the_same_access_file_keeps_the_server(hq_env):
    generate(hq_env)
    server = hq_env.start_server("--access-file", str(hq_env.root / "access.json"), host=None)
    uid = hq_env.json(["server", "info"])["server_uid"]
    job = hq_env.submit(["--", "true"])
    hq_env.command(["server", "stop"])
    assert server.wait(timeout=30) == 0
    hq_env.start_server("--access-file", str(hq_env.root / "access.json"), host=None)
    assert hq_env.json(["server", "info"])["server_uid"] == uid
    client_dir = as_server_dir(hq_env, hq_env.root / "client.json", "client-only")
    p = hq_env.run(["--output-mode", "json", "job", "info", str(job)], server_dir=client_dir)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)[0]["info"]["id"] == job
