"""Landlock (Linux 5.13+): confine a process and everything it starts to a few paths, without
privileges, irreversibly. The sandbox's filesystem boundary: the interpreter, its libraries and
standard library may be read (and only the interpreter and its loader executed), the work
directory read and written, nothing else touched; on ABI 4+ no TCP connect or bind either; on
ABI 6+ (Linux 6.12) the process is also *scoped*: it may neither signal a process outside its
Landlock domain (`kill`, `pidfd_send_signal`, SIGIO) nor connect to an abstract Unix socket made
outside it.

`Ruleset.build(...)` opens the ruleset in the parent; `restrict_self()` runs in the child between
fork and exec. `available()` is the kernel's ABI version, 0 when Landlock is off.
"""
from __future__ import annotations

import ctypes
import os
import struct
from collections.abc import Sequence
from pathlib import Path

_SYS_CREATE_RULESET, _SYS_ADD_RULE, _SYS_RESTRICT_SELF = 444, 445, 446     # the same on x86-64 and arm64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_BY_ABI = {1: (1 << 13) - 1, 2: (1 << 14) - 1, 3: (1 << 15) - 1, 4: (1 << 15) - 1, 5: (1 << 16) - 1}
_NET_TCP = (1 << 0) | (1 << 1)                 # bind, connect
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1    # ABI 6+
_SCOPED = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
_FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | (1 << 14) | (1 << 15)   # rights a rule on a file may carry

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def available() -> int:
    if os.uname().machine not in ("x86_64", "aarch64"):
        return 0
    abi = _libc.syscall(_SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(int(abi), 0)


class LandlockError(OSError):
    pass


class Ruleset:
    def __init__(self, fd: int, abi: int):
        self.fd = fd
        self.abi = abi
        self.scoped = abi >= 6             # signals and abstract Unix sockets stay inside the domain

    @classmethod
    def build(cls, read: Sequence[str | Path], execute: Sequence[str | Path],
              write: Sequence[str | Path]) -> Ruleset | None:
        """Read (files and listings) under `read`; execute exactly the files in `execute`;
        everything under `write`. None where the kernel has no Landlock."""
        abi = available()
        if abi < 1:
            return None
        handled_fs = _FS_BY_ABI.get(abi, _FS_BY_ABI[5])
        handled_net = _NET_TCP if abi >= 4 else 0
        if abi >= 6:
            attr = struct.pack("=QQQ", handled_fs, handled_net, _SCOPED)
        elif abi >= 4:
            attr = struct.pack("=QQ", handled_fs, handled_net)
        else:
            attr = struct.pack("=Q", handled_fs)
        fd = _libc.syscall(_SYS_CREATE_RULESET, ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
        if fd < 0:
            raise LandlockError(ctypes.get_errno(), "landlock_create_ruleset")
        ruleset = cls(int(fd), abi)
        try:
            for path in read:
                ruleset._allow(path, READ_FILE | READ_DIR, handled_fs)
            for path in execute:
                ruleset._allow(path, EXECUTE | READ_FILE, handled_fs)
            for path in write:
                ruleset._allow(path, handled_fs, handled_fs)
        except BaseException:
            ruleset.close()
            raise
        return ruleset

    def _allow(self, path: str | Path, access: int, handled: int) -> None:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            if not os.path.isdir(path):
                access &= _FILE_ONLY
            rule = struct.pack("=Qi", access & handled, fd)
            if _libc.syscall(_SYS_ADD_RULE, ctypes.c_int(self.fd), ctypes.c_int(_RULE_PATH_BENEATH),
                             ctypes.c_char_p(rule), ctypes.c_uint32(0)) != 0:
                raise LandlockError(ctypes.get_errno(), f"landlock_add_rule {path}")
        finally:
            os.close(fd)

    def restrict_self(self) -> bool:
        """In the child: no new privileges, then the ruleset for good. True when it holds."""
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return _libc.syscall(_SYS_RESTRICT_SELF, ctypes.c_int(self.fd), ctypes.c_uint32(0)) == 0

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def elf_interpreter(executable: str) -> Path | None:
    """The dynamic loader an ELF executable names (PT_INTERP), which execve runs too."""
    try:
        with open(executable, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:        # 64-bit ELF only
                return None
            phoff, = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            for i in range(phnum):
                f.seek(phoff + i * phentsize)
                kind, _flags, offset, _vaddr, _paddr, size = struct.unpack("<IIQQQQ", f.read(40))
                if kind == 3:
                    f.seek(offset)
                    return Path(os.path.realpath(f.read(size).rstrip(b"\0").decode()))
    except (OSError, struct.error, UnicodeDecodeError):
        return None
    return None
