"""The sandbox's seccomp-BPF filter: syscalls the program may not make, refused with an errno.

Stdlib only, no slmkit imports: the trusted launcher loads this file by path (``python -I -S``)
and installs the filter just before it execs the sandboxed interpreter; the kernel then applies it
to the program and to every process it starts, for good. Refused:

* ``socket()`` (EACCES): no new sockets even through ctypes where a network namespace is missing.
  ``socketpair()`` stays allowed (it reaches nothing outside).
* ``io_uring_*`` (ENOSYS): io_uring can open sockets and do I/O without the syscalls filtered here.
* ``unshare``, ``setns``, ``clone`` with any ``CLONE_NEW*`` flag (EPERM) and ``clone3`` (ENOSYS,
  whose flags live in memory a filter cannot read; glibc then falls back to ``clone``): no nested
  user (or other) namespaces, the kernel's largest attack surface for unprivileged code.
* ``ptrace``, ``process_vm_readv/writev`` (EPERM): no reading or steering other processes.
* Only when the evaluator shares the program's uid (``protect`` pids given): signals aimed at the
  evaluator (``kill``, ``tgkill``, ``rt_sigqueueinfo``, ``rt_tgsigqueueinfo``, ``pidfd_open`` on a
  protected pid, and ``tkill``/``pidfd_send_signal`` altogether).

Any other architecture than the native one (x32, i386 via ``int 0x80``) kills the process, so the
syscall numbers below can't be dodged.
"""

from __future__ import annotations

import ctypes
import struct

# BPF instructions (linux/filter.h) and seccomp return values (linux/seccomp.h)
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _KILL_PROCESS, _ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_NR, _ARCH, _ARG0 = 0, 4, 16  # offsets in struct seccomp_data (low 32 bits of args[0])
EPERM, EACCES, ENOSYS = 1, 13, 38
CLONE_NEW_ANY = 0x7E020000  # NEWNS | NEWCGROUP | NEWUTS | NEWIPC | NEWUSER | NEWPID | NEWNET

SYSCALLS = {
    "x86_64": dict(audit_arch=0xC000003E, x32=True, socket=41, io_uring_setup=425, io_uring_enter=426,
                   io_uring_register=427, unshare=272, setns=308, clone=56, clone3=435, ptrace=101,
                   process_vm_readv=310, process_vm_writev=311, kill=62, tkill=200, tgkill=234,
                   rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, pidfd_open=434, pidfd_send_signal=424),
    "aarch64": dict(audit_arch=0xC00000B7, x32=False, socket=198, io_uring_setup=425, io_uring_enter=426,
                    io_uring_register=427, unshare=97, setns=268, clone=220, clone3=435, ptrace=117,
                    process_vm_readv=270, process_vm_writev=271, kill=129, tkill=130, tgkill=131,
                    rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, pidfd_open=434, pidfd_send_signal=424),
}

DENIED = (("socket", EACCES), ("io_uring_setup", ENOSYS), ("io_uring_enter", ENOSYS),
          ("io_uring_register", ENOSYS), ("unshare", EPERM), ("setns", EPERM), ("clone3", ENOSYS),
          ("ptrace", EPERM), ("process_vm_readv", EPERM), ("process_vm_writev", EPERM))
PID_FIRST_ARG = ("kill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open")


def _ins(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _deny(errno: int) -> bytes:
    return _ins(_RET, _ERRNO | errno)


def build(machine: str, protect: list[int] | tuple[int, ...] = ()) -> list[bytes] | None:
    """The filter as BPF instructions for ``os.uname().machine``; None where the arch is unknown."""
    nr = SYSCALLS.get(machine)
    if nr is None:
        return None
    prog = [_ins(_LD_W_ABS, _ARCH), _ins(_JEQ, nr["audit_arch"], 1, 0), _ins(_RET, _KILL_PROCESS),
            _ins(_LD_W_ABS, _NR)]
    if nr["x32"]:  # x32 syscalls are the x86_64 numbers with bit 30 set
        prog += [_ins(_JGE, 0x40000000, 0, 1), _ins(_RET, _KILL_PROCESS)]
    denied = list(DENIED)
    if protect:
        denied += [("tkill", EPERM), ("pidfd_send_signal", EPERM)]
    for name, errno in denied:
        prog += [_ins(_JEQ, nr[name], 0, 1), _deny(errno)]
    # clone(flags, ...): refuse any new namespace; the accumulator is reloaded with the number after
    prog += [_ins(_JEQ, nr["clone"], 0, 3), _ins(_LD_W_ABS, _ARG0), _ins(_JSET, CLONE_NEW_ANY, 0, 1),
             _deny(EPERM), _ins(_LD_W_ABS, _NR)]
    if protect:  # a signal syscall jumps over the others and the ALLOW to the shared check of its pid
        for i, name in enumerate(PID_FIRST_ARG):
            prog.append(_ins(_JEQ, nr[name], len(PID_FIRST_ARG) - i, 0))
        prog += [_ins(_RET, _ALLOW), _ins(_LD_W_ABS, _ARG0)]
        for pid in protect[:1500]:  # BPF programs hold at most 4096 instructions
            prog += [_ins(_JEQ, pid, 0, 1), _deny(EPERM)]
    prog.append(_ins(_RET, _ALLOW))
    return prog


def install(libc: ctypes.CDLL, prog: list[bytes]) -> bool:
    """PR_SET_SECCOMP(SECCOMP_MODE_FILTER); needs PR_SET_NO_NEW_PRIVS (or CAP_SYS_ADMIN) first."""

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buf = ctypes.create_string_buffer(b"".join(prog))
    fprog = SockFprog(len(prog), ctypes.addressof(buf))
    return libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0
