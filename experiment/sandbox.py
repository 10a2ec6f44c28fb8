"""Run generated code in a separate process, within limits, never in the service's own process.

`ProcessSandbox.run(program)` writes the program into a throwaway directory and runs it under
the interpreter's isolated mode; `check(candidate, tests, entry)` runs HumanEval's tests in a
judge process and the candidate in another (sandbox_guard.py). Layered (docs/SANDBOX.md says
what each guarantees; `SandboxResult.isolation` lists those in force and `no-<layer>` for each
kernel layer this machine could not give):

* resource limits (`setrlimit`): CPU seconds, address space (memory), size of any file it
  writes (its output included), open files, processes, no core dumps;
* a pids cgroup where one can be made (root's RLIMIT_NPROC is not enforced); otherwise forking
  is refused by the audit hook;
* a new session, killed as a whole at the end, with every process in its cgroup, its pid
  namespace and of its uid;
* new namespaces (sandbox_child.py): network (empty), pid (no process outside is addressable:
  not by kill, pidfd_open, prlimit or ptrace), IPC and mount, in a user namespace when the
  harness is not root;
* a uid and gid of its own, that no other process has (a root harness), so that signals,
  prlimit and ptrace are refused by the kernel's permission checks too;
* a total disk quota: its directory is a tmpfs of `disk_bytes` and `disk_files` in its mount
  namespace (RLIMIT_FSIZE bounds each file);
* Landlock (landlock.py): read its interpreter, libraries and standard library, execute nothing
  but the interpreter, read and write only its own directory, no TCP; on ABI 6+ no signal to a
  process outside and no abstract Unix socket made outside;
* a seccomp filter (seccomp.py): no socket of any family (named Unix sockets included), no
  io_uring, no ptrace or process_vm_*;
* an audit hook in the child (sandbox_guard.py) that turns the ordinary mistakes (files outside
  its directory, sockets, subprocess, ctypes) into clear errors; not a boundary by itself;
* a wall-clock limit, an empty environment and only the first `output_bytes` of its output.

The harness never depends on what the child can change: it is in none of the child's
namespaces, of another uid, and any error of its own becomes a failed result; the folders, the
cgroup and the processes of a check are removed whatever happened.

It is not a virtual machine: where stronger isolation is wanted, `DockerSandbox`
(sandbox_docker.py) runs the same check in a container with the same limits.
"""
from __future__ import annotations

import itertools
import json
import os
import resource
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from experiment.landlock import elf_interpreter
from experiment.sandbox_child import OWN_UID_BASE, OWN_UID_SPAN, Plan, own_uids_mapped, reachable, read_status
from experiment.seccomp import Filter

GUARD = Path(__file__).with_name("sandbox_guard.py")
PIDS_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
# the layers the kernel gives where it can; each one missing is reported as `no-<layer>`
KERNEL_LAYERS = ("pids-cgroup", "network-namespace", "pid-namespace", "own-uid", "disk-quota",
                 "landlock", "landlock-scopes", "seccomp")
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
    disk_bytes: int = 16 * 2**20  # all its files together (a tmpfs quota, where it can be mounted)
    disk_files: int = 4096        # files and directories in it


@dataclass(frozen=True)
class SandboxResult:
    passed: bool                  # exited 0 within every limit
    error: str | None             # why not: the last line of the traceback, or the limit it hit
    limit: str | None             # "cpu", "wall", "memory", "output", "disk", "processes" or None
    exit_code: int | None
    wall_s: float
    cpu_s: float
    stdout: str
    stderr: str
    isolation: tuple[str, ...]    # the layers in place for this run, and `no-<layer>` for those missing


class ProcessSandbox:
    """Runs Python programs in a child process within `limits` (see the module docstring)."""

    name = "process"

    def __init__(self, limits: Limits | None = None, python: str | None = None, audit_hook: bool = True):
        self.limits = limits or Limits()
        self.audit_hook = audit_hook      # off only to test the operating system's layers alone
        # the base interpreter, not the virtualenv's: no site-packages, only the standard library
        self.python = python or getattr(sys, "_base_executable", None) or sys.executable
        # Landlock: read the interpreter, its libraries and standard library; execute only the
        # interpreter and its loader; read and write the check's own directory
        python_path = os.path.realpath(self.python)
        prefixes = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
        self._read = prefixes + [
            "/usr/lib", "/lib", "/lib64", "/usr/lib64", "/etc/ld.so.cache", "/usr/share/zoneinfo",
            "/dev/urandom", "/dev/zero", str(GUARD)]
        self._execute = [python_path] + [str(p) for p in [elf_interpreter(python_path)] if p is not None]
        self._seccomp = Filter()
        # a root harness runs each check as a uid of its own; what that uid cannot reach (an
        # interpreter under /root) its mount namespace shows it; None: it cannot be done here
        self._exposable = None
        if os.geteuid() == 0 and own_uids_mapped():
            try:
                self._exposable = reachable([python_path, *prefixes, str(GUARD)], tempfile.gettempdir())
            except OSError:
                self._exposable = None

    def run(self, program: str) -> SandboxResult:
        """Run `program`; it passes when it exits 0 within every limit."""
        return self._launch({"program.py": program}, lambda work, fork, hook: [
            "run", str(work), str(work / "program.py"), fork, hook])

    def check(self, candidate: str, tests: str, entry_point: str) -> SandboxResult:
        """HumanEval's check: `tests` defines `check(f)`, run against `entry_point` as `candidate`
        defines it, each in its own process (sandbox_guard.py's `judge`): the candidate cannot
        read the tests or print the verdict. It passes when `check` returns within every limit.
        The tests and the closing line reach the judge on its standard input, from a file in the
        harness's own directory: never in a file, an argument or a variable the program can read."""
        closing_line = f"all tests ran {secrets.token_hex(16)}"
        secret = json.dumps({"tests": tests, "closing_line": closing_line}).encode()
        result = self._launch({"candidate.py": candidate}, lambda work, fork, hook: [
            "judge", str(work), "-", str(work / "candidate.py"), entry_point, fork, hook], secret=secret)
        return require_line(result, closing_line)

    def _launch(self, files: dict[str, str], guard_args, secret: bytes | None = None) -> SandboxResult:
        """Start the check (sandbox_child.py), wait for it within the wall-clock limit, kill all
        that is left and read its output. Whatever the check did, this returns a result and leaves
        no folder, cgroup or process behind: a harness error is a failed check, never a crash."""
        started = time.monotonic()
        box = private = cgroup = None
        spare: list[int] = []
        try:
            # descriptors kept for the clean-up (removing a folder takes two): a harness short of
            # them fails the check here, before anything exists that it could not remove
            for _ in range(_SPARE_FDS):
                spare.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
            box = Path(tempfile.mkdtemp(prefix=f"mm-sandbox-{os.getpid()}-"))
            private = Path(tempfile.mkdtemp(prefix=f"mm-sandbox-{os.getpid()}-state-"))   # the harness's only
            cgroup = _PidsCgroup.create(self.limits.processes)
            return self._supervise(box, private, cgroup, files, guard_args, secret)
        except (OSError, subprocess.SubprocessError) as exc:
            return SandboxResult(False, f"the sandbox could not run the check: {type(exc).__name__}: {exc}", None,
                                 None, round(time.monotonic() - started, 4), 0.0, "", "", ())
        finally:
            for fd in spare:
                os.close(fd)
            for cleanup in (lambda: cgroup.remove() if cgroup is not None else None,
                            lambda: _remove(box), lambda: _remove(private)):
                try:
                    cleanup()
                except Exception:          # noqa: BLE001 - the next one still runs
                    pass

    def _supervise(self, box: Path, private: Path, cgroup, files, guard_args, secret) -> SandboxResult:
        limits = self.limits
        uid = None
        exposures = []
        if self._exposable is not None:   # a root harness: the check runs as a uid of its own
            uid = OWN_UID_BASE + secrets.randbelow(OWN_UID_SPAN)
            for n, (cover, paths) in enumerate(self._exposable):
                staged = []
                for m, path in enumerate(paths):
                    staging = private / f"expose-{n}-{m}"
                    if os.path.isdir(path):
                        staging.mkdir()
                    else:
                        staging.touch()
                    staged.append((path, str(staging)))
                exposures.append((cover, staged))
        out_path, err_path, status_path = private / "stdout", private / "stderr", private / "status"
        argv = [self.python, "-I", "-S", "-B", str(GUARD),
                *guard_args(box, "1" if cgroup else "0", "1" if self.audit_hook else "0")]
        env = {"PATH": "/usr/bin:/bin", "HOME": str(box), "TMPDIR": str(box), "LANG": "C.UTF-8",
               "PYTHONHASHSEED": "0"}
        if secret is not None:
            (private / "secret").write_bytes(secret)
        status_fd = os.open(status_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            plan = Plan(box=str(box), files={k: v.encode() for k, v in files.items()}, argv=argv, env=env,
                        limits=limits, status_fd=status_fd, read=self._read, execute=self._execute,
                        cgroup_procs=str(cgroup.path / "cgroup.procs") if cgroup else None, uid=uid,
                        exposures=exposures, seccomp=self._seccomp)
            with open(out_path, "wb") as out, open(err_path, "wb") as err, \
                    open(private / "secret" if secret is not None else os.devnull, "rb") as stdin:
                cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                began = time.monotonic()
                proc = subprocess.Popen(argv, cwd=box, stdin=stdin, stdout=out, stderr=err, close_fds=True,
                                        env=env, start_new_session=True, preexec_fn=plan.start)
                timed_out = False
                try:
                    proc.wait(timeout=limits.wall_s)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:                   # whatever happens here, nothing of the check outlives it
                    try:
                        _kill_session(proc.pid, cgroup, uid)
                    finally:
                        proc.kill()
                        proc.wait()
                wall = time.monotonic() - began
                cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        finally:
            os.close(status_fd)
        code, held = read_status(status_path, proc.returncode)
        isolation = (["rlimits", "session", "empty-env"] + ["audit-hook"] * self.audit_hook
                     + ["pids-cgroup"] * (cgroup is not None) + held)
        isolation += [f"no-{layer}" for layer in KERNEL_LAYERS if layer not in isolation]
        stdout = _head(out_path, limits.output_bytes)
        stderr = _head(err_path, limits.output_bytes)
        over_output = max(out_path.stat().st_size, err_path.stat().st_size) >= limits.output_bytes
        return verdict_of(code, timed_out, over_output, stdout, stderr, wall,
                          (cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), tuple(isolation),
                          cpu_limit_s=limits.cpu_s)

def verdict_of(code: int | None, timed_out: bool, over_output: bool, stdout: str, stderr: str,
             wall: float, cpu: float, isolation: tuple[str, ...], cpu_limit_s: float | None = None) -> SandboxResult:
    limit = error = None
    last = next((line for line in reversed(stderr.strip().splitlines()) if line.strip()), "")
    if timed_out:
        limit, error = "wall", "timed out (wall-clock limit)"
    elif "MemoryError" not in stderr and (code == -signal.SIGXCPU or (
            code == -signal.SIGKILL and cpu_limit_s is not None and cpu >= cpu_limit_s)):
        limit, error = "cpu", "CPU time limit exceeded"    # SIGKILL: past the hard limit, cpu_s + 1
    elif code == -signal.SIGKILL and "MemoryError" not in stderr:
        error = "killed (SIGKILL)"
    elif code == -signal.SIGXFSZ or over_output:
        limit, error = "output", "output limit exceeded"
    elif "MemoryError" in last:
        limit, error = "memory", "memory limit exceeded (MemoryError)"
    elif "No space left on device" in last or "Disk quota exceeded" in last:
        limit, error = "disk", f"disk quota exceeded: {last}"
    elif ("BlockingIOError" in last or "Resource temporarily unavailable" in last) and "fork" in stderr:
        limit, error = "processes", f"process limit reached: {last}"
    elif code != 0:
        error = last or f"exited with status {code}"
    passed = code == 0 and limit is None
    return SandboxResult(passed, None if passed else error, limit, code, round(wall, 4), round(cpu, 4),
                         stdout, stderr, isolation)


def require_line(result: SandboxResult, closing_line: str) -> SandboxResult:
    """A check that exited 0 without its judge printing the closing line did not finish its tests."""
    if result.passed and closing_line not in result.stdout.splitlines():
        return replace(result, passed=False,
                       error="exited with status 0 before the end of its tests (they did not all run)")
    return result


def _head(path: Path, limit: int) -> str:
    with open(path, "rb") as f:
        return f.read(limit).decode("utf-8", "replace")


def _kill_session(pid: int, cgroup: _PidsCgroup | None, uid: int | None = None) -> None:
    """Kill the child's whole session, whatever else is in its cgroup (a child that left the
    session with setsid is still there) and every process of the check's own uid."""
    for _ in range(3):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if cgroup is not None:
            cgroup.kill_all()
        left = [p for p in psutil.process_iter(["pid", "uids"]) if _in_session(p, pid)
                or (uid is not None and p.info["uids"] is not None and uid in p.info["uids"])]
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


_SPARE_FDS = 2             # shutil.rmtree holds a directory's descriptor and a dup of it for scandir


def _remove(path: Path | None) -> None:
    """Remove a check's folder whatever the program left in it (a directory without permissions
    included); what cannot be removed is retried once with its permissions restored."""
    if path is None:
        return

    def unlock(function, failed, _info):
        try:
            parent = os.path.dirname(failed)
            os.chmod(parent, os.stat(parent).st_mode | stat.S_IRWXU)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, stat.S_IRWXU)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)
        except OSError:
            pass
    shutil.rmtree(path, onerror=unlock)
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


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

