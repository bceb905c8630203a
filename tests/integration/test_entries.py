"""Task entries (--each-line, --from-json, [array] entries), standard input (--stdin), task
directories (--task-dir, HQ_ERROR_FILENAME), :rm-if-finished outputs and #HQ directives."""

import json
import os
import subprocess

from conftest import HQ_BIN


def run_with_input(hq_env, args, data):
    """`hq ARGS` with `data` on its standard input."""
    return subprocess.run([HQ_BIN, *args], cwd=hq_env.work, env=hq_env.env, input=data,
                          capture_output=True, text=True, timeout=60)


def submit_with_input(hq_env, args, data):
    p = run_with_input(hq_env, ["--output-mode", "quiet", "submit", *args], data)
    assert p.returncode == 0, p.stderr
    return int(p.stdout.strip())


def stdout_of(hq_env, job, task):
    return (hq_env.work / f"job-{job}" / f"{task}.stdout").read_text()


ECHO_ENTRY = ["--", "bash", "-c", 'printf "%s|%s" "$HQ_TASK_ID" "$HQ_ENTRY"']


def test_each_line_gives_one_task_per_line(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    lines = hq_env.work / "lines.txt"
    lines.write_text("alpha\nbeta gamma\n\nlast")  # an empty line is an entry too
    job = hq_env.submit(["--each-line", str(lines), *ECHO_ENTRY])
    assert hq_env.wait_job(job) == 0
    assert [t["id"] for t in hq_env.tasks(job)] == [0, 1, 2, 3]
    assert [stdout_of(hq_env, job, i) for i in range(4)] == [
        "0|alpha", "1|beta gamma", "2|", "3|last"]
    assert hq_env.task_desc(job)["entries"] == ["alpha", "beta gamma", "", "last"]


def test_each_line_with_array_runs_only_those_indices(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    lines = hq_env.work / "lines.txt"
    lines.write_text("".join(f"line{i}\n" for i in range(10)))
    job = hq_env.submit(["--each-line", str(lines), "--array", "7,1-2", *ECHO_ENTRY])
    assert hq_env.wait_job(job) == 0
    assert [t["id"] for t in hq_env.tasks(job)] == [1, 2, 7]
    assert [stdout_of(hq_env, job, i) for i in (1, 2, 7)] == ["1|line1", "2|line2", "7|line7"]
    assert not (hq_env.work / f"job-{job}" / "0.stdout").exists()


def test_array_past_the_entries_is_an_error(hq_env):
    hq_env.start_server()
    lines = hq_env.work / "lines.txt"
    lines.write_text("a\nb\nc\n")
    err = hq_env.command(["submit", "--each-line", str(lines), "--array", "1-5", "--", "true"],
                         expect_fail=True)
    assert "task 3 has no entry" in err and "lines.txt" in err, err
    assert hq_env.json(["job", "list", "--all"]) == []


def test_from_json_gives_each_element_as_json(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    items = hq_env.work / "items.json"
    items.write_text(json.dumps([{"x": 1, "name": "a b"}, [1, 2], "text", 3.5, None]))
    job = hq_env.submit(["--from-json", str(items), *ECHO_ENTRY])
    assert hq_env.wait_job(job) == 0
    got = [stdout_of(hq_env, job, i).split("|", 1) for i in range(5)]
    assert [int(i) for i, _ in got] == [0, 1, 2, 3, 4]
    assert [json.loads(e) for _, e in got] == [{"x": 1, "name": "a b"}, [1, 2], "text", 3.5, None]

    picked = hq_env.submit(["--from-json", str(items), "--array", "1,3", *ECHO_ENTRY])
    assert hq_env.wait_job(picked) == 0
    assert [t["id"] for t in hq_env.tasks(picked)] == [1, 3]
    assert stdout_of(hq_env, picked, 1) == "1|[1,2]"
    assert stdout_of(hq_env, picked, 3) == "3|3.5"


def test_from_json_errors_name_the_file(hq_env):
    hq_env.start_server()
    not_array = hq_env.work / "object.json"
    not_array.write_text('{"a": [1, 2]}')
    err = hq_env.command(["submit", "--from-json", str(not_array), "--", "true"],
                         expect_fail=True)
    assert "object.json" in err and "not an array" in err, err
    broken = hq_env.work / "broken.json"
    broken.write_text("[1, 2,")
    err = hq_env.command(["submit", "--from-json", str(broken), "--", "true"], expect_fail=True)
    assert "broken.json" in err and "invalid JSON" in err, err
    err = hq_env.command(["submit", "--from-json", str(hq_env.work / "missing.json"), "--",
                          "true"], expect_fail=True)
    assert "missing.json" in err and "cannot read" in err, err
    err = hq_env.command(["submit", "--each-line", str(hq_env.work / "none.txt"), "--", "true"],
                         expect_fail=True)
    assert "none.txt" in err, err
    assert hq_env.json(["job", "list", "--all"]) == []


def test_stdin_is_given_to_every_task(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    job = submit_with_input(hq_env, ["--stdin", "--array", "0-2", "--", "bash", "-c",
                                     'echo "$HQ_TASK_ID:$(cat)"'], "line one\nline two")
    assert hq_env.wait_job(job) == 0
    for i in range(3):
        assert stdout_of(hq_env, job, i) == f"{i}:line one\nline two\n"
    # Without --stdin a task reads end-of-file at once.
    plain = hq_env.submit(["--", "bash", "-c", 'echo "[$(cat)]"'])
    assert hq_env.wait_job(plain) == 0
    assert stdout_of(hq_env, plain, 0) == "[]\n"


def test_task_dir_exists_during_the_task_and_is_removed_after(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = hq_env.submit(["--task-dir", "--", "bash", "-c",
                         'test -d "$HQ_TASK_DIR" && touch "$HQ_TASK_DIR/scratch" && '
                         'echo "$HQ_TASK_DIR"; echo "$HQ_ERROR_FILENAME"'])
    assert hq_env.wait_job(job) == 0
    task_dir, error_file = stdout_of(hq_env, job, 0).split()
    assert error_file.startswith(task_dir + "/")
    assert not os.path.exists(task_dir)
    assert hq_env.task_desc(job)["task_dir"] is True


def test_error_file_becomes_the_failed_tasks_error(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    job = hq_env.submit(["--task-dir", "--array", "0-1", "--", "bash", "-c",
                         'if [ "$HQ_TASK_ID" = 0 ]; then echo "input file is corrupt" > '
                         '"$HQ_ERROR_FILENAME"; exit 3; else exit 4; fi'])
    assert hq_env.wait_job(job) != 0
    [info] = hq_env.json(["task", "info", str(job), "0"])
    assert info["error"] == "input file is corrupt"
    assert "input file is corrupt" in hq_env.command(["task", "info", str(job), "0"])
    # A task that wrote nothing there fails with its exit code.
    [other] = hq_env.json(["task", "info", str(job), "1"])
    assert "exit code 4" in other["error"]


def test_rm_if_finished_removes_outputs_of_finished_tasks_only(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    job = hq_env.submit(["--array", "0-1",
                         "--stdout", "out-%{TASK_ID}.txt:rm-if-finished",
                         "--stderr", ":rm-if-finished",
                         "--", "bash", "-c", 'echo out; echo err >&2; exit "$HQ_TASK_ID"'])
    assert hq_env.wait_job(job) != 0
    assert not (hq_env.work / "out-0.txt").exists()
    assert not (hq_env.work / f"job-{job}" / "0.stderr").exists()
    assert (hq_env.work / "out-1.txt").read_text() == "out\n"
    assert (hq_env.work / f"job-{job}" / "1.stderr").read_text() == "err\n"
    program = hq_env.task_desc(job)["program"]
    assert program["stdout"] == "out-%{TASK_ID}.txt"
    assert program["stdout_rm_if_finished"] is True
    err = hq_env.command(["submit", "--stdout", "none:rm-if-finished", "--", "true"],
                         expect_fail=True)
    assert "no file to remove" in err


SCRIPT = """#!/bin/bash
# a comment before the directives
#HQ --name from-directive
#HQ --cpus 2 --env "GREETING=hello there"

echo "$HQ_CPUS|$GREETING"
#HQ --name ignored-after-the-first-command
"""


def test_directives_are_read_and_the_command_line_wins(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=4)
    script = hq_env.work / "job.sh"
    script.write_text(SCRIPT)
    script.chmod(0o755)
    job = hq_env.submit(["./job.sh"])
    assert hq_env.wait_job(job) == 0
    assert hq_env.job(job)["name"] == "from-directive"
    cpus, greeting = stdout_of(hq_env, job, 0).strip().split("|")
    assert len(cpus.split(",")) == 2 and greeting == "hello there"

    overridden = hq_env.submit(["--name", "cli", "--cpus", "1", "./job.sh"])
    assert hq_env.wait_job(overridden) == 0
    assert hq_env.job(overridden)["name"] == "cli"
    assert len(stdout_of(hq_env, overridden, 0).split("|")[0].split(",")) == 1

    off = hq_env.submit(["--directives", "off", "./job.sh"])
    assert hq_env.wait_job(off) == 0
    assert hq_env.job(off)["name"] == "job.sh"
    assert stdout_of(hq_env, off, 0).strip().split("|")[1] == ""


def test_directives_modes_file_and_stdin(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    script = hq_env.work / "job.run"  # not .sh: auto does not read it
    script.write_text("#HQ --name by-file\necho hi\n")
    script.chmod(0o755)
    auto = hq_env.submit(["./job.run"])
    assert hq_env.job(auto)["name"] == "job.run"
    by_file = hq_env.submit(["--directives", "file", "./job.run"])
    assert hq_env.job(by_file)["name"] == "by-file"
    by_stdin = submit_with_input(hq_env, ["--stdin", "--directives", "stdin", "--", "bash"],
                                 "#HQ --name by-stdin\necho from-stdin\n")
    assert hq_env.wait_job(by_stdin) == 0
    assert hq_env.job(by_stdin)["name"] == "by-stdin"
    assert stdout_of(hq_env, by_stdin, 0) == "from-stdin\n"
    err = hq_env.command(["submit", "--directives", "stdin", "--", "bash"], expect_fail=True)
    assert "--stdin" in err


def test_bad_directive_names_the_line(hq_env):
    hq_env.start_server()
    script = hq_env.work / "bad.sh"
    script.write_text("#!/bin/bash\n#HQ --name ok\n#HQ --no-such-option\ntrue\n")
    err = hq_env.command(["submit", "./bad.sh"], expect_fail=True)
    assert "bad.sh:3" in err and "--no-such-option" in err, err
    script.write_text("#HQ --wait\n")
    err = hq_env.command(["submit", "./bad.sh"], expect_fail=True)
    assert "bad.sh:1" in err and "--wait" in err, err
    assert hq_env.json(["job", "list", "--all"]) == []


def test_job_file_with_stdin_task_dir_and_array_entries(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    tasks = hq_env.work / "tasks.toml"
    tasks.write_text("""
name = "graph"
[[task]]
id = 0
command = ["bash", "-c", "cat; test -d \\"$HQ_TASK_DIR\\" && echo dir"]
stdin = "from the file\\n"
task_dir = true
[[task]]
id = 1
command = ["bash", "-c", "echo bye"]
stdout = { path = "bye.txt", mode = "rm-if-finished" }
""")
    job = int(hq_env.command(["--output-mode", "quiet", "job", "submit-file",
                              str(tasks)]).strip())
    assert hq_env.wait_job(job) == 0
    assert stdout_of(hq_env, job, 0) == "from the file\ndir\n"
    assert not (hq_env.work / "bye.txt").exists()

    array = hq_env.work / "array.toml"
    array.write_text("""
name = "sweep"
[array]
ids = "3,5,9"
entries = ["a", "b", "c"]
command = ["bash", "-c", "printf '%s|%s' $HQ_TASK_ID $HQ_ENTRY"]
""")
    sweep = int(hq_env.command(["--output-mode", "quiet", "job", "submit-file",
                                str(array)]).strip())
    assert hq_env.wait_job(sweep) == 0
    assert [stdout_of(hq_env, sweep, i) for i in (3, 5, 9)] == ["3|a", "5|b", "9|c"]
    # An array job: one body for all, not one per task.
    assert "array" in hq_env.job_detail(sweep)["submits"][0]


def test_job_file_stream(hq_env):
    hq_env.start_server()
    hq_env.start_worker(cpus=1)
    f = hq_env.work / "s.toml"
    f.write_text("""
stream = "streamdir"
[array]
entries = ["x", "y"]
command = ["bash", "-c", "echo $HQ_ENTRY"]
""")
    job = int(hq_env.command(["--output-mode", "quiet", "job", "submit-file", str(f)]).strip())
    assert hq_env.wait_job(job) == 0
    assert hq_env.job_detail(job)["stream"] == str(hq_env.work / "streamdir")
    out = hq_env.command(["output", "cat", str(hq_env.work / "streamdir"), str(job)])
    assert sorted(out.split()) == ["x", "y"]
    assert not (hq_env.work / f"job-{job}").exists()


def test_entries_and_stdin_survive_a_server_kill(hq_env):
    hq_env.start_server()
    lines = hq_env.work / "lines.txt"
    lines.write_text("one\ntwo\nthree\n")
    job = submit_with_input(hq_env, ["--stdin", "--each-line", str(lines), "--array", "0,2",
                                     "--task-dir", "--", "bash", "-c",
                                     'printf "%s|%s|%s|%s" "$HQ_TASK_ID" "$HQ_ENTRY" "$(cat)" '
                                     '"$(test -d "$HQ_TASK_DIR" && echo dir)"'], "IN")
    hq_env.kill(hq_env.server)
    hq_env.start_server()
    hq_env.start_worker(cpus=2)
    assert hq_env.wait_job(job) == 0
    assert stdout_of(hq_env, job, 0) == "0|one|IN|dir"
    assert stdout_of(hq_env, job, 2) == "2|three|IN|dir"


def test_job_info_leaves_out_many_entries(hq_env):
    hq_env.start_server()
    lines = hq_env.work / "many.txt"
    lines.write_text("".join(f"{i}\n" for i in range(1500)))
    job = hq_env.submit(["--each-line", str(lines), "--", "true"])
    assert hq_env.job(job)["task_count"] == 1500
    assert hq_env.task_desc(job)["entries"] is None
    few = hq_env.submit(["--each-line", str(lines), "--array", "1000-1002", "--", "true"])
    assert hq_env.task_desc(few)["entries"] == ["1000", "1001", "1002"]
