"""The sandbox's child processes, between fork and exec. sandbox.py starts them with
`subprocess.Popen(..., preexec_fn=plan.start)`; everything here runs in copies of the harness,
ends in `execve` of the guard or in `os._exit`, never back in the harness's code, and runs none
of the program: the program starts only after the last step, confined.

    harness ── outer ── init (pid 1 of a new pid namespace) ── check (the guard, then the program)

outer: still in the harness's namespaces. Unshares a mount, network, pid and IPC namespace (in a
    user namespace of its own first when the harness is not root), forks `init`, waits for it and
    ends the way it ended.
init: trusted, the new namespace's pid 1 (so the program is not: the kernel ignores the signals
    init has no handler for, and kills everything left in the namespace when init ends). It gives
    the check its filesystem view: the check's directory becomes a size-limited tmpfs owned by the
    run's uid (the total disk quota), and a directory the run's uid could not reach (an interpreter
    under /root) is mounted back, alone, on a read-only tmpfs over the ancestor that hides it. It
    writes the program's files, forks `check`, reaps every orphan and records the check's status.
check: joins the pids cgroup, builds its Landlock ruleset, sets the limits, drops to the run's own
    uid and gid (a root harness only: a uid no other process has), then no new privileges,
    Landlock with its scopes, the seccomp filter; closes every other descriptor and execs.

Each writes what it put in place to the status file (a descriptor the harness opened in its own
directory, closed before the program starts): `layer <name>` lines, then `exit <wait status>`.
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from experiment.landlock import Ruleset
from experiment.seccomp import Filter

if TYPE_CHECKING:
    from experiment.sandbox import Limits

CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER = 0x00020000, 0x08000000, 0x10000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT = 1, 2, 4, 32
MS_BIND, MS_MOVE, MS_REC, MS_PRIVATE = 4096, 8192, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36
_MAX_FD = 2**31 - 1
OWN_UID_BASE, OWN_UID_SPAN = 1_500_000_000, 100_000_000    # a check's uid: random, no one else's

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Plan:
    """Everything the children need, prepared by the harness: they only make system calls."""
    box: str                               # the check's directory (a tmpfs in its own view)
    files: dict[str, bytes]
    argv: list[str]
    env: dict[str, str]
    limits: Limits
    status_fd: int
    read: list[str]                        # Landlock: read (files and listings) beneath
    execute: list[str]                     # Landlock: execute exactly these
    cgroup_procs: str | None = None        # the pids cgroup's cgroup.procs
    uid: int | None = None                 # the run's own uid (a root harness only)
    exposures: list[tuple[str, list[tuple[str, str]]]] = field(default_factory=list)   # see reachable()
    seccomp: Filter = field(default_factory=Filter)

    def start(self) -> None:               # the outer process: Popen's preexec_fn
        try:
            _outer(self)
        except BaseException as exc:       # noqa: BLE001 - never back into the harness's code
            _fail(self, "outer", exc)
        os._exit(125)


def _outer(plan: Plan) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    root = os.geteuid() == 0
    uid, gid = os.getuid(), os.getgid()
    user = 0 if root else CLONE_NEWUSER
    flags = next((f for f in (user | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWIPC, user | CLONE_NEWNET)
                  if _libc.unshare(f) == 0), 0)
    if flags & CLONE_NEWUSER:
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    _layers(plan, ["network-namespace"] * bool(flags & CLONE_NEWNET) + ["pid-namespace"] * bool(flags & CLONE_NEWPID))
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)   # (after the maps) a copy of the harness: no one reads it
    child = os.fork()
    if child == 0:
        try:
            _init(plan, mounts=bool(flags & CLONE_NEWNS))
        except BaseException as exc:       # noqa: BLE001
            _fail(plan, "init", exc)
    os.closerange(3, _MAX_FD)
    _quiet_stdin()
    _, status = os.waitpid(child, 0)
    _end_as(status)


def _init(plan: Plan, mounts: bool) -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)      # the outer process killed: all of it goes
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)             # its orphans are init's, pid namespace or not
    os.umask(0o022)                        # what it makes for the check's uid must be open to it
    layers, drop = [], plan.uid is not None
    quota = False
    if mounts and _mount(None, "/", None, MS_REC | MS_PRIVATE):  # nothing below propagates to the host
        if plan.exposures and not all(_expose(cover, paths) for cover, paths in plan.exposures):
            drop = False                   # the run's uid could not reach the interpreter: keep ours
        owner = plan.uid if drop else os.getuid()
        limits = plan.limits
        quota = _mount("tmpfs", plan.box, "tmpfs", MS_NOSUID | MS_NODEV,
                       f"size={limits.disk_bytes},nr_inodes={limits.disk_files},mode=0700,uid={owner},gid={owner}")
    elif plan.exposures:
        drop = False
    if quota:
        layers.append("disk-quota")
    elif drop:
        assert plan.uid is not None        # dropping needs a uid to drop to
        os.chown(plan.box, plan.uid, plan.uid)
    os.chdir(plan.box)                     # the tmpfs, not the directory beneath it
    for name, data in plan.files.items():
        fd = os.open(os.path.join(plan.box, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            while data:
                data = data[os.write(fd, data):]
            if drop:
                assert plan.uid is not None
                os.fchown(fd, plan.uid, plan.uid)
        finally:
            os.close(fd)
    _layers(plan, layers)
    check = os.fork()
    if check == 0:
        try:
            _check(plan, drop)
        except BaseException as exc:       # noqa: BLE001
            _fail(plan, "check", exc)
    os.closerange(3, plan.status_fd)       # Popen's error pipe above all: the harness waits for it
    os.closerange(plan.status_fd + 1, _MAX_FD)
    _quiet_stdin()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:                            # reap every orphan the check leaves to init
        pid, status = os.wait()
        if pid == check:
            os.write(plan.status_fd, f"exit {status}\n".encode())
            os._exit(0)


def _check(plan: Plan, drop: bool) -> None:
    if plan.cgroup_procs is not None:
        _write(plan.cgroup_procs, "0")     # this process; all it starts stays in the cgroup
    ruleset = Ruleset.build(read=plan.read, execute=plan.execute, write=[plan.box, "/dev/null"])
    layers: list[str] = []
    if drop:
        assert plan.uid is not None        # dropping needs a uid to drop to
        os.setgroups([])
        os.setresgid(plan.uid, plan.uid, plan.uid)
        os.setresuid(plan.uid, plan.uid, plan.uid)
        layers.append("own-uid")
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)      # cleared by the change of uid
    limits = plan.limits
    for limit, value, hard in ((resource.RLIMIT_CPU, limits.cpu_s, limits.cpu_s + 1),
                               (resource.RLIMIT_AS, limits.memory_bytes, None),
                               (resource.RLIMIT_FSIZE, limits.output_bytes, None),
                               (resource.RLIMIT_NOFILE, limits.open_files, None),
                               (resource.RLIMIT_NPROC, limits.processes, None),
                               (resource.RLIMIT_CORE, 0, None)):
        resource.setrlimit(limit, (value, value if hard is None else hard))
    if ruleset is not None:
        if not ruleset.restrict_self():
            raise OSError(ctypes.get_errno(), "Landlock could not be enforced")   # never run unconfined
        layers += ["landlock"] + ["landlock-scopes"] * ruleset.scoped
        ruleset.close()
    if plan.seccomp.install():
        layers.append("seccomp")
    _layers(plan, layers)
    os.closerange(3, _MAX_FD)
    os.execve(plan.argv[0], plan.argv, plan.env)


def _expose(cover: str, paths: list[tuple[str, str]]) -> bool:
    """Hide `cover` (a directory the run's uid cannot pass) behind a read-only tmpfs that holds
    only `paths`, each mounted back from where it was (by way of `staging`, in the harness's
    own directory), at the same place: every path the interpreter knows stays right."""
    for path, staging in paths:
        if not _mount(path, staging, None, MS_BIND | MS_REC):
            return False
    if not _mount("tmpfs", cover, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=65536"):
        return False
    for path, staging in paths:
        parent = os.path.dirname(path)
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if os.path.isdir(staging):
            os.mkdir(path, 0o755)
        else:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
        if not _mount(staging, path, None, MS_MOVE):
            return False
    return _mount(None, cover, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def reachable(paths: list[str], box_parent: str) -> list[tuple[str, list[str]]] | None:
    """Which directories a new uid cannot pass on its way to `paths` (and which of the paths lie
    beneath each): `init` mounts those paths back for it. None when it cannot be done: a path
    itself unreadable to others, or the sandbox's own temporary folder out of reach."""
    def blocked(path: str) -> str | None:
        parts = path.strip("/").split("/")
        for i in range(len(parts) - 1):
            ancestor = "/" + "/".join(parts[:i + 1])
            if not os.stat(ancestor).st_mode & stat.S_IXOTH:
                return ancestor
        return None

    if blocked(os.path.join(box_parent, "box")) is not None:      # its folder's parents, that one included
        return None
    wanted = sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})
    tops = [p for p in wanted if not any(p.startswith(q + "/") for q in wanted)]
    covers: dict[str, list[str]] = {}
    for path in tops:
        mode = os.stat(path).st_mode
        need = stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0)
        if mode & need != need:
            return None
        cover = blocked(path)
        if cover is not None:
            covers.setdefault(cover, []).append(path)
    return sorted(covers.items())


def own_uids_mapped() -> bool:
    """Whether this process can become any uid and gid of the range a check's own is drawn from:
    true for root, not for root in a user namespace that maps a few ids (a rootless container)."""
    for name in ("uid_map", "gid_map"):
        try:
            lines = Path(f"/proc/self/{name}").read_text().split("\n")
        except OSError:
            return False
        spans = [tuple(map(int, line.split())) for line in lines if len(line.split()) == 3]
        if not any(inside <= OWN_UID_BASE and OWN_UID_BASE + OWN_UID_SPAN <= inside + count
                   for inside, _outside, count in spans):
            return False
    return True


def read_status(path: Path, returncode: int | None) -> tuple[int | None, list[str]]:
    """The check's own exit status as its init saw it (the outer process ends the same way, but
    not when it was killed first), and the layers the children put in place."""
    code = returncode
    layers: list[str] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return code, layers
    for line in lines:
        word, _, rest = line.partition(" ")
        if word == "layer" and rest not in layers:
            layers.append(rest)
        elif word == "exit" and rest.isdigit():
            code = os.waitstatus_to_exitcode(int(rest))
    return code, layers


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> bool:
    encode = (lambda s: None if s is None else s.encode())
    return _libc.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)) == 0


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _layers(plan: Plan, layers: list[str]) -> None:
    if layers:
        os.write(plan.status_fd, "".join(f"layer {layer}\n" for layer in layers).encode())


def _quiet_stdin() -> None:
    """The judge's secret comes on standard input: only the check's process keeps it."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)


def _end_as(status: int) -> None:
    """End the way the child ended: the same exit status, or the same signal."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 125)


def _fail(plan: Plan, where: str, exc: BaseException) -> None:
    try:
        message = f"sandbox setup failed ({where}): {type(exc).__name__}: {exc}\n".encode()
        os.write(2, message)
        os.write(plan.status_fd, b"error " + message)
    finally:
        os._exit(125)
