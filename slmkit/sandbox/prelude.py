"""Trusted prelude of the sandboxed interpreter: runs the program, then reports that it ran to the end.

The launcher reads this file and, walls up, execs ``python -I -S -c <its source> SOURCE_FD TOKEN_FD
REPORT_FD`` as the sandbox user. Stdlib only, no slmkit imports (the sandbox user may not even be
able to read the installed package). Steps:

1. Python-level hardening, defense in depth only (ctypes gets past it; the real walls are the
   uid, namespaces, seccomp and Landlock): socket/DNS functions and signals to foreign processes
   raise ``PermissionError``; tracebacks show the program's lines.
2. The program's source is read from a memfd (nothing on disk) and compiled as ``program.py``
   into a fresh ``__main__`` module; ``site.main()`` gives it the interpreter's usual sys.path.
3. ``exec`` of the program: candidate code and its tests, untrusted.
4. Only if that returned normally: the completion token, which the evaluator put in a pipe and
   which is nowhere in the program's source, code objects, argv, environment or files, is read
   from TOKEN_FD and ``sha256(REPORT_TAG + token)`` written to REPORT_FD (a digest, so a program
   that blindly copies its fds into each other sends the wrong thing). stdout is not the channel;
   an early ``sys.exit(0)``, ``os._exit(0)`` or an exception never gets here.

The program shares this process, so code written against this protocol can still read TOKEN_FD
and write the digest itself; runner.py says what the proof does and does not cover.
"""

import os
import sys

REPORT_TAG = b"slmkit-sandbox-completed:"  # runner.completion_report() computes the same digest


def _deny_network() -> None:
    import socket
    import types

    import _socket

    def denied(*args, **kwargs):
        raise PermissionError(13, "network access is disabled in the slmkit sandbox")

    raw = _socket.socket
    # socket.py calls _socket.socket.__init__ at run time: give it a private copy of the real module
    private = types.ModuleType("_socket")
    private.__dict__.update(_socket.__dict__)
    socket._socket = private

    class NoRawSocket(raw):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:  # wrapping an existing fd (socketpair) stays allowed
                denied()
            raw.__init__(self, family, type, proto, fileno)

    class NoSocket(socket.socket):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:
                denied()
            super().__init__(family, type, proto, fileno)

    socket.socket = socket.SocketType = NoSocket
    _socket.socket = _socket.SocketType = NoRawSocket
    for mod in (socket, _socket):
        for name in ("create_connection", "create_server", "getaddrinfo", "gethostbyname",
                     "gethostbyname_ex", "gethostbyaddr", "getnameinfo", "fromfd"):
            if hasattr(mod, name):
                setattr(mod, name, denied)


def _guard_signals() -> None:
    evaluator = os.getppid()
    real_kill, real_killpg, getpgrp = os.kill, os.killpg, os.getpgrp

    def kill(pid, sig):
        if pid == evaluator or pid == -1 or (pid < -1 and -pid != getpgrp()):
            raise PermissionError(1, "signalling processes outside the sandbox is not allowed")
        return real_kill(pid, sig)

    def killpg(pgid, sig):
        if pgid not in (0, getpgrp()):
            raise PermissionError(1, "signalling processes outside the sandbox is not allowed")
        return real_killpg(pgid, sig)

    os.kill, os.killpg = kill, killpg


def _excepthook(etype, value, tb) -> None:
    """Python-level printer: reads source from linecache (there is no program.py on disk)."""
    import traceback

    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":  # this prelude's frames
        tb = tb.tb_next
    depth, t = 0, tb
    while t is not None and depth <= 200:
        depth, t = depth + 1, t.tb_next
    traceback.print_exception(etype, value, tb, limit=-100 if depth > 200 else None)


def _load_program(source_fd: int):
    """Compile the program as ``program.py`` in a fresh ``__main__``; its lines go to linecache only."""
    import linecache
    import types

    chunks = []
    while True:
        chunk = os.read(source_fd, 1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(source_fd)
    src = b"".join(chunks)
    text = src.decode("utf-8", "replace")
    linecache.cache["program.py"] = (len(text), None, text.splitlines(True), "program.py")
    module = types.ModuleType("__main__")
    module.__file__ = "program.py"
    sys.modules["__main__"] = module
    sys.argv = ["program.py"]
    return compile(src, "program.py", "exec"), module.__dict__


def main() -> None:
    source_fd, token_fd, report_fd = (int(a) for a in sys.argv[1:4])
    import hashlib

    read, write, close, sha256 = os.read, os.write, os.close, hashlib.sha256  # bound before the program runs
    for fd in (token_fd, report_fd):
        os.set_inheritable(fd, False)  # subprocesses of the program don't get them
    import faulthandler

    faulthandler.enable()
    _deny_network()
    _guard_signals()
    sys.excepthook = _excepthook
    code, namespace = _load_program(source_fd)
    import site

    site.main()  # what -S skipped: site-packages on sys.path, exit()/quit() builtins
    exec(code, namespace)
    # Only reached when the program's module code returned normally.
    token = read(token_fd, 4096)
    close(token_fd)
    write(report_fd, sha256(REPORT_TAG + token).hexdigest().encode())
    close(report_fd)


main()
