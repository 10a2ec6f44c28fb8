"""A seccomp filter (Linux 3.5+) for the sandbox's child: the kernel refuses, whatever the program
does (its audit hook off, ctypes loaded), the system calls a checked program never needs and that
reach outside it:

* `socket` in every family: named Unix sockets on the host (which Landlock does not cover before
  its ABI 8), and any network a namespace would leave; `socketpair` stays (an unconnected pair
  reaches nothing);
* `io_uring_setup`, `io_uring_enter`, `io_uring_register`: io_uring opens sockets and files
  without the system calls this filter sees;
* `ptrace`, `process_vm_readv`, `process_vm_writev`: another process's memory;
* every system call of another ABI (x32, or 32-bit calls through `int 0x80`), whose numbers differ.

Each is answered with EACCES ("Permission denied"). `install()` runs in the child after
`no_new_privs` (set by Landlock, or here), and holds for the child and everything it starts.
"""
from __future__ import annotations

import ctypes
import errno
import os
import struct

_PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 38, 22, 2
_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_ALLOW = 0x7FFF0000
_REFUSE = 0x00050000 | errno.EACCES                     # SECCOMP_RET_ERRNO | EACCES
_X32_BIT = 0x40000000

# AUDIT_ARCH_*, then the numbers of the refused calls on that architecture
_ARCHES = {
    # keyrings are not namespaced: add_key, request_key (which can start the host's request-key
    # helper) and keyctl would reach the harness's session keyring
    "x86_64": (0xC000003E, {"socket": 41, "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311,
                            "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                            "add_key": 248, "request_key": 249, "keyctl": 250}),
    "aarch64": (0xC00000B7, {"socket": 198, "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271,
                             "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
                             "add_key": 217, "request_key": 218, "keyctl": 219}),
}
REFUSED = tuple(_ARCHES["x86_64"][1])

_libc = ctypes.CDLL(None, use_errno=True)


class _Program(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def filter_program() -> bytes | None:
    """The BPF program for this machine's architecture, or None where there is none."""
    arch = _ARCHES.get(os.uname().machine)
    if arch is None:
        return None
    audit_arch, numbers = arch
    calls = sorted(numbers.values())
    # 0 load arch; 1 same arch? skip the refusal; 2 refuse; 3 load nr; 4 x32? refuse;
    # 5.. refused numbers; then allow; then refuse
    refuse_at = 5 + len(calls) + 1
    ops = [_op(_LD_W_ABS, 4), _op(_JEQ_K, audit_arch, jt=1), _op(_RET_K, _REFUSE), _op(_LD_W_ABS, 0),
           _op(_JGE_K, _X32_BIT, jt=refuse_at - 5)]
    for i, number in enumerate(calls):
        ops.append(_op(_JEQ_K, number, jt=refuse_at - (5 + i + 1)))
    ops += [_op(_RET_K, _ALLOW), _op(_RET_K, _REFUSE)]
    return b"".join(ops)


class Filter:
    """Built in the parent (no allocation left for the child but the system calls)."""

    def __init__(self):
        program = filter_program()
        self._buffer: ctypes.Array[ctypes.c_char] | None = None
        self._program: _Program | None = None
        if program:
            self._buffer = buffer = ctypes.create_string_buffer(program)
            self._program = _Program(len(program) // 8, ctypes.addressof(buffer))

    @property
    def supported(self) -> bool:
        return self._program is not None

    def install(self) -> bool:
        """In the child: True when the kernel now refuses the calls above."""
        if self._program is None:
            return False
        if _libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            return False
        return _libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(self._program), 0, 0) == 0
