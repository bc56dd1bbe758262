"""Landlock scoping for the sandbox: walls that hold without namespaces and without seccomp.

Stdlib only, no slmkit imports: the trusted launcher loads this file by path and calls
``restrict`` after ``PR_SET_NO_NEW_PRIVS``. A Landlock domain is inherited by every process the
program starts and can never be left. Used, where the kernel offers it (Linux >= 6.7 for TCP,
>= 6.12 for scopes):

* TCP bind/connect handled with no rule allowing any port: no TCP at all.
* ``LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET``: no connecting to abstract AF_UNIX sockets made outside
  the sandbox (they have no file permissions, and without a network namespace they are shared).
* ``LANDLOCK_SCOPE_SIGNAL``: no signals to processes outside the sandbox (including kill(-1) and
  pidfd_send_signal), and, as with every Landlock domain, no ptrace of them.

Filesystem rights are not handled here: the read-only mount namespace and the uid do that job.
"""

from __future__ import annotations

import ctypes
import os
import struct

_CREATE_RULESET, _RESTRICT_SELF = 444, 446  # same numbers on x86_64 and aarch64 (asm-generic)
_CREATE_RULESET_VERSION = 1
ACCESS_NET_BIND_TCP, ACCESS_NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1


def abi_version(libc: ctypes.CDLL) -> int:
    """Landlock ABI the kernel offers (0: none, or disabled at boot)."""
    v = libc.syscall(_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(v, 0)


def restrict(libc: ctypes.CDLL) -> dict[str, bool]:
    """Put the calling process in a new Landlock domain; says which walls were applied."""
    applied = {"landlock_tcp": False, "landlock_scopes": False}
    abi = abi_version(libc)
    if abi < 4:
        return applied
    net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
    if abi >= 6:  # struct landlock_ruleset_attr grows with the ABI: fs, net, scoped (u64 each)
        attr = struct.pack("=QQQ", 0, net, SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL)
    else:
        attr = struct.pack("=QQ", 0, net)
    buf = ctypes.create_string_buffer(attr, len(attr))
    fd = libc.syscall(_CREATE_RULESET, buf, ctypes.c_size_t(len(attr)), ctypes.c_uint32(0))
    if fd < 0:
        return applied
    try:
        if libc.syscall(_RESTRICT_SELF, ctypes.c_int(fd), ctypes.c_uint32(0)) != 0:
            return applied
    finally:
        os.close(fd)
    return {"landlock_tcp": True, "landlock_scopes": abi >= 6}
