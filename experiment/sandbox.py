"""Run generated code in a separate process, within limits, never in the service's own process.

`ProcessSandbox.run(program)` writes the program into a throwaway directory and runs it under
the interpreter's isolated mode with, layered:

* resource limits (`setrlimit`): CPU seconds, address space (memory), size of any file it
  writes (its output included), open files, no core dumps, and the number of processes;
* a process-count cap that holds for root as well: a pids cgroup where one can be made (root's
  RLIMIT_NPROC is not enforced), and otherwise forking is refused outright;
* a new session, killed as a whole at the end, and every process in its cgroup (which it
  cannot leave: Landlock keeps it from writing to /sys);
* an empty network namespace (`unshare(CLONE_NEWUSER | CLONE_NEWNET)`) where the kernel allows;
* Landlock (landlock.py) where the kernel has it: the filesystem boundary, enforced by the
  kernel on the child and all it starts: read its interpreter, libraries and standard library,
  execute nothing but the interpreter, read and write only its own directory, no TCP;
* an audit hook in the child (sandbox_guard.py) that turns the ordinary mistakes (files outside
  its directory, sockets, subprocess, ctypes) into clear errors; not a boundary by itself;
* a wall-clock limit, an empty environment and only the first `output_bytes` of its output.

It is not a virtual machine: where stronger isolation is wanted, `DockerSandbox`
(sandbox_docker.py) runs the same check in a container with the same limits.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from experiment.landlock import Ruleset, elf_interpreter

GUARD = Path(__file__).with_name("sandbox_guard.py")
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PIDS_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
_names = itertools.count()


@dataclass(frozen=True)
class Limits:
    """What one check may use. The defaults suit HumanEval's tests with room to spare."""
    cpu_s: int = 10               # CPU seconds (RLIMIT_CPU): SIGXCPU, then SIGKILL
    wall_s: float = 15.0          # wall-clock seconds before the whole session is killed
    memory_bytes: int = 512 * 2**20   # address space (RLIMIT_AS): MemoryError past it
    processes: int = 16           # processes at once, the check's own included
    output_bytes: int = 64 * 1024     # bytes of stdout/stderr kept, and most any file may grow to
    open_files: int = 64


@dataclass(frozen=True)
class SandboxResult:
    passed: bool                  # exited 0 within every limit
    error: str | None             # why not: the last line of the traceback, or the limit it hit
    limit: str | None             # "cpu", "wall", "memory", "output", "processes" or None
    exit_code: int | None
    wall_s: float
    cpu_s: float
    stdout: str
    stderr: str
    isolation: tuple[str, ...]    # the layers that were in place for this run


class ProcessSandbox:
    """Runs Python programs in a child process within `limits` (see the module docstring)."""

    name = "process"

    def __init__(self, limits: Limits | None = None, python: str | None = None, audit_hook: bool = True):
        self.limits = limits or Limits()
        self.audit_hook = audit_hook      # off only to test the operating system's layers alone
        # the base interpreter, not the virtualenv's: no site-packages, only the standard library
        self.python = python or getattr(sys, "_base_executable", None) or sys.executable

    def run(self, program: str, must_print: str | None = None) -> SandboxResult:
        """Run `program`; it passes when it exits 0 within every limit and, when `must_print` is
        given, printed that line (so a program that exits early with status 0 does not pass)."""
        limits = self.limits
        work = Path(tempfile.mkdtemp(prefix="mm-sandbox-"))
        private = Path(tempfile.mkdtemp(prefix="mm-sandbox-state-"))    # outside the program's reach
        cgroup = _PidsCgroup.create(limits.processes)
        isolation = ["rlimits", "session", "empty-env"] + (["audit-hook"] if self.audit_hook else [])
        if cgroup is not None:
            isolation.append("pids-cgroup")
        ruleset = self._ruleset(work)
        try:
            source = work / "program.py"
            source.write_text(program, encoding="utf-8")
            out_path, err_path, status_path = private / "stdout", private / "stderr", private / "isolation"
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                started = time.monotonic()
                cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                proc = subprocess.Popen(
                    [self.python, "-I", "-S", "-B", str(GUARD), str(work), str(source), "1" if cgroup else "0",
                     "1" if self.audit_hook else "0"],
                    cwd=work, stdin=subprocess.DEVNULL, stdout=out, stderr=err, close_fds=True,
                    env={"PATH": "/usr/bin:/bin", "HOME": str(work), "TMPDIR": str(work), "LANG": "C.UTF-8",
                         "PYTHONHASHSEED": "0"},
                    start_new_session=True,
                    preexec_fn=_child_setup(limits, cgroup, ruleset, str(status_path)))
                timed_out = False
                try:
                    proc.wait(timeout=limits.wall_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                _kill_session(proc.pid, cgroup)
                proc.wait()
                wall = time.monotonic() - started
                cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            held = status_path.read_text().split(",") if status_path.exists() else []
            isolation += [layer for layer in ("network-namespace", "landlock") if layer in held]
            stdout = _head(out_path, limits.output_bytes)
            stderr = _head(err_path, limits.output_bytes)
            over_output = max(out_path.stat().st_size, err_path.stat().st_size) >= limits.output_bytes
            result = verdict_of(proc.returncode, timed_out, over_output, stdout, stderr, wall,
                                (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), tuple(isolation))
            if result.passed and must_print is not None and must_print not in stdout.splitlines():
                return replace(result, passed=False,
                               error="exited with status 0 before the end of the program (its tests did not all run)")
            return result
        finally:
            if cgroup is not None:
                cgroup.remove()
            if ruleset is not None:
                ruleset.close()
            shutil.rmtree(work, ignore_errors=True)
            shutil.rmtree(private, ignore_errors=True)

    def _ruleset(self, work: Path) -> Ruleset | None:
        """The filesystem the child may touch: read its interpreter, libraries and standard
        library; execute only the interpreter and its loader; read and write its directory."""
        python = Path(os.path.realpath(self.python))
        read = [Path(os.path.realpath(p)) for p in {sys.base_prefix, sys.base_exec_prefix}]
        read += [Path(p) for p in ("/usr/lib", "/lib", "/lib64", "/usr/lib64", "/etc/ld.so.cache",
                                   "/usr/share/zoneinfo", "/dev/urandom", "/dev/zero")] + [GUARD]
        execute = [python] + [p for p in [elf_interpreter(str(python))] if p is not None]
        return Ruleset.build(read=read, execute=execute, write=[work, Path("/dev/null")])


def _child_setup(limits: Limits, cgroup: _PidsCgroup | None, ruleset: Ruleset | None, status_path: str):
    """What the child does between fork and exec (libc and the ruleset are opened in the parent):
    join the cgroup, set limits, leave the network, then confine the filesystem, last."""
    libc = ctypes.CDLL(None, use_errno=True)

    def setup() -> None:
        if cgroup is not None:
            cgroup.join(os.getpid())
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.output_bytes, limits.output_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        held = []
        if libc.unshare(CLONE_NEWUSER | CLONE_NEWNET) == 0:
            held.append("network-namespace")
        if ruleset is not None:
            held.append("landlock")
        fd = os.open(status_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, ",".join(held).encode())
        os.close(fd)
        if ruleset is not None and not ruleset.restrict_self():
            os._exit(126)                 # never run the program unconfined after promising otherwise
    return setup


def verdict_of(code: int | None, timed_out: bool, over_output: bool, stdout: str, stderr: str,
             wall: float, cpu: float, isolation: tuple[str, ...]) -> SandboxResult:
    limit = error = None
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    if timed_out:
        limit, error = "wall", "timed out (wall-clock limit)"
    elif code in (-signal.SIGXCPU, -signal.SIGKILL) and "MemoryError" not in stderr:
        limit, error = "cpu", "CPU time limit exceeded"
    elif code == -signal.SIGXFSZ or over_output:
        limit, error = "output", "output limit exceeded"
    elif "MemoryError" in last:
        limit, error = "memory", "memory limit exceeded (MemoryError)"
    elif ("BlockingIOError" in last or "Resource temporarily unavailable" in last) and "fork" in stderr:
        limit, error = "processes", f"process limit reached: {last}"
    elif code != 0:
        error = last or f"exited with status {code}"
    passed = code == 0 and limit is None
    return SandboxResult(passed, None if passed else error, limit, code, round(wall, 4), round(cpu, 4),
                         stdout, stderr, isolation)


def _head(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def _kill_session(pid: int, cgroup: _PidsCgroup | None) -> None:
    """Kill the child's whole session, and whatever else is in its cgroup (a child that left the
    session with setsid is still there)."""
    for _ in range(3):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if cgroup is not None:
            cgroup.kill_all()
        left = [p for p in psutil.process_iter(["pid"]) if _in_session(p, pid)]
        if not left:
            return
        for p in left:
            try:
                p.kill()
            except psutil.Error:
                pass
        time.sleep(0.05)


def _in_session(process: psutil.Process, sid: int) -> bool:
    try:
        return os.getsid(process.pid) == sid and process.pid != sid
    except (ProcessLookupError, PermissionError, OSError):
        return False


class _PidsCgroup:
    """A pids cgroup (v1 or v2) capping how many processes a check may have at once."""

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def create(cls, max_pids: int) -> _PidsCgroup | None:
        for root in PIDS_CGROUP_ROOTS:
            if not (root / "cgroup.procs").exists():
                continue
            path = root / f"mm-sandbox-{os.getpid()}-{next(_names)}"
            try:
                path.mkdir()
                (path / "pids.max").write_text(str(max_pids))
                return cls(path)
            except OSError:
                try:
                    path.rmdir()          # a cgroup's files are the kernel's: rmdir, not rmtree
                except OSError:
                    pass
        return None

    def join(self, pid: int) -> None:
        with open(self.path / "cgroup.procs", "w") as f:
            f.write(str(pid))

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except OSError:
            return []

    def kill_all(self) -> None:
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def remove(self) -> None:
        deadline = time.monotonic() + 2.0
        while self.pids() and time.monotonic() < deadline:
            self.kill_all()
            time.sleep(0.02)
        try:
            self.path.rmdir()
        except OSError:
            pass

