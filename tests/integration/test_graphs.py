"""Task graphs: `hq job submit-file` with HyperQueue's job files, dependencies end to end."""
import json
import textwrap


def write_job_file(hq_env, name, text):
    path = hq_env.work / name
    path.write_text(textwrap.dedent(text))
    return path


def submit_file(hq_env, path):
    out = hq_env.command(["--output-mode", "quiet", "job", "submit-file", str(path)])
    return int(out.strip())


def by_id(hq_env, job_id):
    return {t["id"]: t for t in hq_env.tasks(job_id)}


def test_pipeline_reduce_sees_every_simulation(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=4)
    sims = range(2, 22)
    lines = ["[[task]]", "id = 1",
             'command = ["bash", "-c", "echo ready > prepared"]', ""]
    for i in sims:
        lines += ["[[task]]", f"id = {i}",
                  f'command = ["bash", "-c", "test -f prepared && echo {i} > sim.{i}"]',
                  "deps = [1]", ""]
    deps = ", ".join(str(i) for i in sims)
    lines += ["[[task]]", "id = 100",
              'command = ["bash", "-c", "cat sim.* | wc -l > reduced"]',
              f"deps = [{deps}]", '[task.env]', 'STEP = "reduce"']
    path = write_job_file(hq_env, "pipeline.toml", "\n".join(lines) + "\n")
    job = submit_file(hq_env, path)
    assert hq_env.wait_job(job) == 0
    assert (hq_env.work / "reduced").read_text().strip() == "20"
    tasks = by_id(hq_env, job)
    assert len(tasks) == 22
    assert all(t["state"] == "finished" for t in tasks.values())
    # The reduce started after every simulation ended.
    sim_ends = max(tasks[i]["finished_at"] for i in sims)
    assert tasks[100]["started_at"] >= sim_ends
    assert min(tasks[i]["started_at"] for i in sims) >= tasks[1]["finished_at"]


def test_failing_dependency_aborts_transitive_dependants_naming_it(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    path = write_job_file(hq_env, "fail.toml", """\
        [[task]]
        id = 1
        command = ["bash", "-c", "exit 3"]

        [[task]]
        id = 2
        command = ["touch", "ran.2"]
        deps = [1]

        [[task]]
        id = 3
        command = ["touch", "ran.3"]
        deps = [2]

        [[task]]
        id = 4
        command = ["touch", "ran.4"]
        """)
    job = submit_file(hq_env, path)
    assert hq_env.wait_job(job) == 1
    tasks = by_id(hq_env, job)
    assert tasks[1]["state"] == "failed"
    assert tasks[2]["state"] == "aborted"
    assert tasks[3]["state"] == "aborted"
    assert tasks[4]["state"] == "finished"
    assert not (hq_env.work / "ran.2").exists()
    assert not (hq_env.work / "ran.3").exists()
    [info] = hq_env.json(["task", "info", str(job), "3"])
    assert f"task 1 of job {job}" in info["error"], info
    assert info["deps"] == [2]
    text = hq_env.command(["task", "info", str(job), "3"])
    assert f"task 1 of job {job}" in text, text


def test_task_held_by_dependencies_is_explained(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    path = write_job_file(hq_env, "wait.toml", """\
        [[task]]
        id = 3
        command = ["bash", "-c", "while [ ! -f gate ]; do sleep 0.05; done"]

        [[task]]
        id = 7
        command = ["true"]

        [[task]]
        id = 9
        command = ["true"]
        deps = [3, 7]
        """)
    job = submit_file(hq_env, path)
    hq_env.wait_for_task_state(job, 3, "running")
    hq_env.wait_for_task_state(job, 7, "finished")
    text = hq_env.command(["task", "explain", str(job), "9"])
    assert f"waiting for task 3 of job {job}" in text, text
    (hq_env.work / "gate").touch()
    assert hq_env.wait_job(job) == 0


def test_bad_files_are_refused_naming_file_line_and_key(hq_env):
    hq_env.start_server()
    cases = {
        "cycle.toml": ("""\
            [[task]]
            id = 1
            command = ["true"]
            deps = [2]

            [[task]]
            id = 2
            command = ["true"]
            deps = [1]
            """, "cycle"),
        "unknown.toml": ("""\
            [[task]]
            id = 1
            command = ["true"]
            deps = [5]
            """, "5"),
        "duplicate.toml": ("""\
            [[task]]
            id = 1
            command = ["true"]

            [[task]]
            id = 1
            command = ["true"]
            """, "1"),
    }
    for name, (text, word) in cases.items():
        path = write_job_file(hq_env, name, text)
        err = hq_env.command(["job", "submit-file", str(path)], expect_fail=True)
        assert f"{name}:" in err, err
        assert word in err, err
    assert hq_env.json(["job", "list", "--all"]) == []


def test_server_killed_mid_graph_finishes_it_without_rerunning_finished_tasks(hq_env):
    hq_env.start_server()
    worker = hq_env.start_worker(2, "--on-server-lost", "stop")
    lines = []
    # 1 -> 2..4 -> 5 (waits for a gate) -> 6
    for i, deps, cmd in [(1, [], ""), (2, [1], ""), (3, [1], ""), (4, [1], ""),
                         (5, [2, 3, 4], "while [ ! -f gate ]; do sleep 0.05; done; "),
                         (6, [5], "")]:
        lines += ["[[task]]", f"id = {i}",
                  f'command = ["bash", "-c", "echo run >> runs.{i}; {cmd}true"]',
                  f"deps = {json.dumps(deps)}", ""]
    path = write_job_file(hq_env, "restart.toml", "\n".join(lines))
    job = submit_file(hq_env, path)
    hq_env.wait_for_task_state(job, 5, "running")
    hq_env.kill(hq_env.server)
    worker.wait(timeout=30)  # --on-server-lost stop: the worker dies with its server
    hq_env.start_server()
    assert by_id(hq_env, job)[4]["state"] == "finished"
    assert by_id(hq_env, job)[6]["state"] == "waiting"
    hq_env.start_worker(cpus=2)
    (hq_env.work / "gate").touch()
    assert hq_env.wait_job(job, timeout=120) == 0
    for i in [1, 2, 3, 4, 6]:
        assert (hq_env.work / f"runs.{i}").read_text() == "run\n", i
    tasks = by_id(hq_env, job)
    assert all(t["state"] == "finished" for t in tasks.values())
    detail = hq_env.job_detail(job)
    assert detail["info"]["task_count"] == 6
    assert detail["dependencies"] == 7
    assert [t["id"] for t in detail["submits"][0]["graph"]] == [1, 2, 3, 4, 5, 6]


def test_task_list_shows_each_tasks_own_output_paths(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    path = write_job_file(hq_env, "paths.toml", """\
        [[task]]
        id = 1
        command = ["echo", "one"]
        stdout = "first.out"

        [[task]]
        id = 2
        command = ["echo", "two"]
        stdout = "second-%{TASK_ID}.out"
        deps = [1]
        """)
    job = submit_file(hq_env, path)
    assert hq_env.wait_job(job) == 0
    tasks = by_id(hq_env, job)
    assert tasks[1]["stdout"] == str(hq_env.work / "first.out")
    assert tasks[2]["stdout"] == str(hq_env.work / "second-2.out")
    assert (hq_env.work / "second-2.out").read_text() == "two\n"
