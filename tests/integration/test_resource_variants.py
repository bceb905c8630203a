"""Resource variants: several [[task.request]] of one job-file task are alternatives; the task
runs with the first that fits its worker and learns which from HQ_RESOURCE_VARIANT."""
import textwrap

VARIANTS = """\
    [[task]]
    id = 1
    command = ["bash", "-c", "echo $HQ_RESOURCE_VARIANT $HQ_CPUS $HQ_RESOURCE_REQUEST_cpus > out.$HQ_TASK_ID"]
    [[task.request]]
    resources = { cpus = "4" }
    [[task.request]]
    resources = { cpus = "1" }

    [[task]]
    id = 2
    command = ["bash", "-c", "echo ${HQ_RESOURCE_VARIANT-unset} > out.$HQ_TASK_ID"]
    """


def submit_variants(hq_env):
    path = hq_env.work / "variants.toml"
    path.write_text(textwrap.dedent(VARIANTS))
    out = hq_env.command(["--output-mode", "quiet", "job", "submit-file", str(path)])
    return int(out.strip())


def ran_with(hq_env, task):
    variant, cpus, request = (hq_env.work / f"out.{task}").read_text().split(None, 2)
    return int(variant), cpus.split(","), request.strip()


def test_small_worker_runs_the_second_variant(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    job = submit_variants(hq_env)
    assert hq_env.wait_job(job) == 0
    variant, cpus, request = ran_with(hq_env, 1)
    assert variant == 1
    assert len(cpus) == 1
    assert request == "1 compact"
    # A task without alternatives is not told any.
    assert (hq_env.work / "out.2").read_text().strip() == "unset"


def test_big_worker_runs_the_first_variant(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=4)
    job = submit_variants(hq_env)
    assert hq_env.wait_job(job) == 0
    variant, cpus, request = ran_with(hq_env, 1)
    assert variant == 0
    assert sorted(cpus) == ["0", "1", "2", "3"]
    assert request == "4 compact"


def test_variants_survive_a_server_killed_before_any_worker(hq_env):
    hq_env.start_server()
    job = submit_variants(hq_env)
    hq_env.kill(hq_env.server)
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    assert hq_env.wait_job(job) == 0
    variant, cpus, _ = ran_with(hq_env, 1)
    assert variant == 1
    assert len(cpus) == 1
