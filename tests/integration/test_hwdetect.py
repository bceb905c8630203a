"""`hq worker hwdetect`: the resources a worker would detect on this machine."""

import json
import os
import re
import subprocess

from conftest import HQ_BIN


def hwdetect(hq_env, *args, env=None, prefix=()):
    """Runs `hq worker hwdetect ARGS` (after `prefix`, such as taskset); returns the process."""
    full_env = dict(hq_env.env)
    full_env.pop("CUDA_VISIBLE_DEVICES", None)
    full_env.pop("ROCR_VISIBLE_DEVICES", None)
    if env:
        full_env.update(env)
    return subprocess.run([*prefix, HQ_BIN, "worker", "hwdetect", *args], env=full_env,
                          cwd=hq_env.work, capture_output=True, text=True, timeout=60)


def resources(stdout):
    """{name: text after 'name: '} of the lines after the summary line."""
    lines = stdout.strip().splitlines()
    return dict(line.split(": ", 1) for line in lines[1:])


def labels(text):
    return re.findall(r"[^\[\],]+", text)


def test_cpus_match_affinity(hq_env):
    p = hwdetect(hq_env)
    assert p.returncode == 0, p.stderr
    found = resources(p.stdout)
    allowed = sorted(os.sched_getaffinity(0))
    assert sorted(int(x) for x in labels(found["cpus"])) == allowed
    assert int(found["mem"]) > 0
    assert "gpus/amd" not in found


def test_taskset_restricts_cpus(hq_env):
    cpu = min(os.sched_getaffinity(0))
    p = hwdetect(hq_env, prefix=("taskset", "-c", str(cpu)))
    assert p.returncode == 0, p.stderr
    assert resources(p.stdout)["cpus"] == f"[[{cpu}]]"
    assert p.stdout.startswith("cpus 1")


def test_cuda_visible_devices(hq_env):
    p = hwdetect(hq_env, env={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert p.returncode == 0, p.stderr
    assert "gpus/nvidia 2" in p.stdout.splitlines()[0]
    assert resources(p.stdout)["gpus/nvidia"] == "[[0,1]]"


def test_detect_only_some(hq_env):
    p = hwdetect(hq_env, "--detect-resources", "cpus,gpus/amd",
                 env={"CUDA_VISIBLE_DEVICES": "0", "ROCR_VISIBLE_DEVICES": "3"})
    assert p.returncode == 0, p.stderr
    assert set(resources(p.stdout)) == {"cpus", "gpus/amd"}
    assert resources(p.stdout)["gpus/amd"] == "[[3]]"


def test_json(hq_env):
    p = hwdetect(hq_env, "--no-hyper-threading", env={"HQ_OUTPUT_MODE": "json"})
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    by_name = {r["name"]: r for r in out["resources"]}
    cpus = by_name["cpus"]
    assert cpus["kind"] in ("list", "groups")
    labels = cpus["values"] if cpus["kind"] == "list" else [u for g in cpus["groups"] for u in g]
    assert labels and all(isinstance(label, str) for label in labels)
    assert by_name["mem"]["kind"] == "sum" and by_name["mem"]["size"] > 0


def test_bad_detect_list_names_the_item(hq_env):
    p = hwdetect(hq_env, "--detect-resources", "gpu")
    assert p.returncode != 0
    assert "'gpu'" in p.stderr


def test_worker_start_rejects_bad_detect_list(hq_env):
    p = hq_env.run(["worker", "start", "--detect-resources", "cpus,disk"])
    assert p.returncode != 0
    assert "'disk'" in p.stderr
