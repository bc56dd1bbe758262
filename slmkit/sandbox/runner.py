"""Run untrusted, model-written Python (HumanEval/MBPP completions) so that it cannot hurt the evaluator.

Model-written code is hostile until proven otherwise. Each program runs in its own Python
subprocess, started through a small trusted *launcher* (``python -I -S -c _LAUNCHER``) that sets
up the walls in a single-threaded process and then ``execve``s the sandboxed interpreter. Doing
this in a launcher rather than a ``preexec_fn`` keeps ``run_many``'s threads safe (no Python code
runs between ``fork`` and ``exec`` in the evaluator) and lets setup failures be reported.

Walls, strongest first:

* **uid drop** (when the evaluator runs as root, as here and in CI; root ignores RLIMIT_NPROC and
  may write or kill anything): the program runs as a dedicated, otherwise unused uid/gid
  (61000 + slot, no supplementary groups), one per concurrent run, so it can't touch root-owned
  files or signal other processes, RLIMIT_NPROC holds, and everything it leaves behind can be
  found and killed by uid (``kill(-1)`` issued *as that uid* is atomic against fork bombs).
* **namespaces** (best effort): new network namespace (no interfaces up: no network at all), new
  IPC namespace, new mount namespace in which every mount is re-mounted read-only and /tmp,
  /var/tmp, /dev/shm, /run/lock are private size-capped tmpfs (the working directory lives in the
  private /tmp). Unprivileged evaluators try the same inside a user namespace.
* **seccomp** (best effort): ``socket()`` and ``io_uring_setup()`` fail, so even ctypes can't open
  a socket where namespaces are not allowed (e.g. Docker's default profile).
* **rlimits**: CPU, address space, processes, file size, open files, no core dumps, no POSIX mqueues;
  ``PR_SET_NO_NEW_PRIVS`` (setuid binaries gain nothing) and ``PR_SET_PDEATHSIG`` (dies with us).
* **evaluator side**: wall-clock timeout, then SIGKILL to the process group *and* every process of
  the sandbox uid; total-memory watchdog over all the run's processes; stdout/stderr read into
  bounded buffers (head + tail); temp dir deleted; files/SysV IPC the uid left in shared places
  swept when the mount/IPC namespaces were unavailable.
* **prelude** (defense in depth only, bypassable by ctypes): Python-level socket/DNS functions and
  signals to foreign processes raise ``PermissionError``.

Scoring: ``passed`` means exit code 0 within the limits. Benchmark harnesses must append the test
code to the program; ``check_program``/``run_many(check=True)`` also append a line printing a
random completion token and require it in stdout, so a program that exits 0 early
(``os._exit(0)``, ``sys.exit(0)``) before the tests ran is scored as failed. The token guards
against early exits, not against code that deliberately searches its own process memory for it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import fcntl
import json
import math
import os
import pwd
import re
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from slmkit.errors import SlmkitError

__all__ = ["SandboxResult", "STATUSES", "run_program", "run_checked", "check_program", "run_many"]

STATUSES = ("passed", "failed", "timeout", "killed", "error")

UID_BASE = 61000  # below systemd's DynamicUser range (61184-65519); nothing else uses these
UID_SLOTS = 128
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_USE_NAMESPACES = True  # tests switch this off to exercise the fallback (e.g. Docker without CAP_SYS_ADMIN)


@dataclass
class SandboxResult:
    """What happened to one program. ``passed`` is True only for status "passed"."""

    passed: bool
    status: str  # one of STATUSES
    returncode: int | None
    stdout: str  # bounded: head + tail of what the program wrote
    stderr: str
    wall_s: float
    detail: str = ""  # human-readable reason (signal, limit hit, setup error)
    uid: int | None = None  # the unprivileged uid it ran as (None: evaluator not root)
    isolation: dict = field(default_factory=dict)  # which walls the OS allowed


# --------------------------------------------------------------------------------------------
# Code that runs in the child. Kept as strings so that the evaluator never runs Python between
# fork and exec, and the sandboxed interpreter needs nothing but its stdlib.
# --------------------------------------------------------------------------------------------

_LAUNCHER = r'''
import ctypes, json, os, re, resource, struct, sys
cfg = json.loads(sys.argv[1])
status_fd = cfg["status_fd"]
os.set_inheritable(status_fd, False)          # closed by execve: EOF tells the evaluator we made it


def report(**kw):
    os.write(status_fd, (json.dumps(kw) + "\n").encode())


def fail(msg):
    report(error=msg)
    os._exit(125)


CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWNET = 0x20000, 0x8000000, 0x10000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_REC, MS_PRIVATE, MS_STRICTATIME = 1024, 2048, 4096, 16384, 1 << 18, 1 << 24

try:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    libc.unshare.argtypes = [ctypes.c_int]
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    host_dir = cfg["host_dir"]
    with open(os.path.join(host_dir, "program.py"), "rb") as f:
        source = f.read()
    uid, gid = cfg["uid"], cfg["gid"]
    iso = {"uid_drop": uid is not None}

    def unshare(flags):
        return libc.unshare(flags) == 0

    if uid is None:
        # Unprivileged evaluator: a user namespace (same uid inside) grants the other namespaces.
        myuid, mygid = os.getuid(), os.getgid()
        iso["userns"] = cfg["namespaces"] and unshare(CLONE_NEWUSER)
        if iso["userns"]:
            try:
                with open("/proc/self/setgroups", "w") as f:
                    f.write("deny")
                with open("/proc/self/uid_map", "w") as f:
                    f.write("%d %d 1" % (myuid, myuid))
                with open("/proc/self/gid_map", "w") as f:
                    f.write("%d %d 1" % (mygid, mygid))
            except OSError as e:
                fail("user namespace id maps: %s" % e)
    use_ns = cfg["namespaces"]
    iso["net"] = use_ns and unshare(CLONE_NEWNET)
    iso["ipc"] = use_ns and unshare(CLONE_NEWIPC)
    iso["mnt"] = use_ns and unshare(CLONE_NEWNS)

    workdir = host_dir
    if iso["mnt"]:
        if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
            fail("mount --make-rprivate /: errno %d" % ctypes.get_errno())
        with open("/proc/self/mountinfo", "rb") as f:
            points = []
            for line in f:
                mp = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), line.split()[4])
                if mp not in points:
                    points.append(mp)
        keep = 0
        for mp in points:                       # whole filesystem read-only in this namespace
            try:
                fl = os.statvfs(mp).f_flag
            except OSError:
                continue
            keep = MS_BIND | MS_REMOUNT | MS_RDONLY
            keep |= (MS_NOSUID if fl & 2 else 0) | (MS_NODEV if fl & 4 else 0) | (MS_NOEXEC if fl & 8 else 0)
            keep |= MS_NOATIME if fl & 1024 else (0 if fl & 4096 else MS_STRICTATIME)
            keep |= MS_NODIRATIME if fl & 2048 else 0
            libc.mount(None, mp, None, keep, None)   # failures (odd pseudo-fs) are tolerated
        opts = ("size=%dm,nr_inodes=%d,mode=1777" % (cfg["tmpfs_mb"], cfg["tmpfs_inodes"])).encode()
        done = set()
        for d in ("/tmp", "/var/tmp", "/dev/shm", "/run/lock"):
            real = os.path.realpath(d)
            if real in done or not os.path.isdir(real):
                continue
            done.add(real)
            if libc.mount(b"tmpfs", real.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, opts) != 0 and real == "/tmp":
                fail("mount tmpfs on /tmp: errno %d" % ctypes.get_errno())
        workdir = os.path.join("/tmp", os.path.basename(host_dir))
        os.mkdir(workdir, 0o700)
        with open(os.path.join(workdir, "program.py"), "wb") as f:
            f.write(source)
        if uid is not None:
            os.chown(workdir, uid, gid)
    os.chdir(workdir)

    def limit(res, soft, hard=None):
        hard = soft if hard is None else hard
        _, cur_hard = resource.getrlimit(res)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(res, (soft, hard))

    limit(resource.RLIMIT_CPU, cfg["cpu_seconds"], cfg["cpu_seconds"] + 1)   # SIGXCPU, then SIGKILL
    limit(resource.RLIMIT_AS, cfg["memory_mb"] << 20)
    limit(resource.RLIMIT_NPROC, cfg["max_procs"])
    limit(resource.RLIMIT_FSIZE, cfg["max_file_mb"] << 20)
    limit(resource.RLIMIT_CORE, 0)
    limit(resource.RLIMIT_NOFILE, cfg["max_open_files"])
    limit(resource.RLIMIT_MSGQUEUE, 0)

    if uid is not None:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
            fail("privilege drop did not stick")

    iso["no_new_privs"] = libc.prctl(38, 1, 0, 0, 0) == 0       # PR_SET_NO_NEW_PRIVS

    arches = {  # machine: (AUDIT_ARCH, socket, io_uring_setup, kill, tkill, tgkill, has x32)
        "x86_64": (0xC000003E, 41, 425, 62, 200, 234, True),
        "aarch64": (0xC00000B7, 198, 425, 129, 130, 131, False),
    }
    iso["seccomp"] = False
    spec = arches.get(os.uname().machine)
    if spec and iso["no_new_privs"]:
        audit, nr_socket, nr_uring, nr_kill, nr_tkill, nr_tgkill, x32 = spec
        LD, JEQ, JGE, RET = 0x20, 0x15, 0x35, 0x06
        ALLOW, KILL = 0x7FFF0000, 0x80000000

        def ins(code, k, jt=0, jf=0):
            return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)

        def deny(errno):
            return ins(RET, 0x50000 | errno)

        prog = [ins(LD, 4), ins(JEQ, audit, 1, 0), ins(RET, KILL), ins(LD, 0)]
        if x32:
            prog += [ins(JGE, 0x40000000, 0, 1), ins(RET, KILL)]
        prog += [ins(JEQ, nr_socket, 0, 1), deny(13), ins(JEQ, nr_uring, 0, 1), deny(38)]
        targets = cfg["protect_pids"]
        if targets:  # same-uid evaluator: signals to it (or kill(-1)) must fail
            for nr in (nr_kill, nr_tkill, nr_tgkill):
                block = [ins(LD, 16)]
                for t in targets:
                    block += [ins(JEQ, t, 0, 1), deny(1)]
                block.append(ins(LD, 0))
                prog += [ins(JEQ, nr, 0, len(block))] + block
        prog.append(ins(RET, ALLOW))
        buf = ctypes.create_string_buffer(b"".join(prog))

        class Fprog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        fprog = Fprog(len(prog), ctypes.addressof(buf))
        iso["seccomp"] = libc.prctl(22, 2, ctypes.addressof(fprog), 0, 0) == 0   # PR_SET_SECCOMP, FILTER

    libc.prctl(1, 9, 0, 0, 0)                    # PR_SET_PDEATHSIG SIGKILL (after setuid, which clears it)
    if os.getppid() != cfg["parent_pid"]:
        fail("evaluator went away")

    env = {"HOME": workdir, "TMPDIR": workdir}
    env.update(cfg["env"])
    interp = cfg["python"]
    report(ready=True, isolation=iso)
    os.execve(interp, [interp, "-I", "-c", cfg["runner"]], env)
except SystemExit:
    raise
except BaseException as e:
    fail("%s: %s" % (type(e).__name__, e))
'''

_RUNNER = r'''
def _slmkit_prelude():
    """Defense in depth only: the real walls are the uid, namespaces and seccomp."""
    import faulthandler, os, socket, sys, types, _socket
    faulthandler.enable()

    def denied(*args, **kwargs):
        raise PermissionError(13, "network access is disabled in the slmkit sandbox")

    raw = _socket.socket
    # socket.py calls _socket.socket.__init__ at run time: give it a private copy of the real module
    private = types.ModuleType("_socket")
    private.__dict__.update(_socket.__dict__)
    socket._socket = private

    class NoRawSocket(raw):
        def __init__(self, family=-1, type=-1, proto=-1, fileno=None):
            if fileno is None:        # wrapping an existing fd (socketpair) stays allowed
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

    def excepthook(etype, value, tb):
        """Python-level printer: reads source from linecache (program.py is gone from disk)."""
        import traceback
        while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":  # our runner
            tb = tb.tb_next
        depth, t = 0, tb
        while t is not None and depth <= 200:
            depth, t = depth + 1, t.tb_next
        traceback.print_exception(etype, value, tb, limit=-100 if depth > 200 else None)

    sys.excepthook = excepthook

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


def _slmkit_load():
    import linecache, os, sys, types
    with open("program.py", "rb") as f:
        src = f.read()
    try:
        os.unlink("program.py")       # nothing on disk for the program to read back
    except OSError:
        pass
    text = src.decode("utf-8", "replace")
    linecache.cache["program.py"] = (len(text), None, text.splitlines(True), "program.py")
    module = types.ModuleType("__main__")
    module.__file__ = "program.py"
    sys.modules["__main__"] = module
    sys.argv = ["program.py"]
    return compile(src, "program.py", "exec"), module.__dict__


_slmkit_prelude()
del _slmkit_prelude
_slmkit_code, _slmkit_globals = _slmkit_load()
del _slmkit_load
exec(_slmkit_code, _slmkit_globals)
'''

_KILL_ALL_AS_ME = "import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\n"


# --------------------------------------------------------------------------------------------
# uids and interpreter
# --------------------------------------------------------------------------------------------


class _UidPool:
    """Hands out a uid per concurrent run: in-process set + flock files across evaluator processes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_use: set[int] = set()

    def _lock_dir(self) -> str:
        path = os.path.join(tempfile.gettempdir(), "slmkit-sandbox-uids")
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o700)
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise SlmkitError(f"{path}: sandbox uid lock dir must be a private directory owned by uid {os.geteuid()}")
        return path

    @contextlib.contextmanager
    def lease(self) -> Iterator[int]:
        lock_dir = self._lock_dir()
        uid, fd = None, -1
        with self._lock:
            for cand in range(UID_BASE, UID_BASE + UID_SLOTS):
                if cand in self._in_use or _uid_exists(cand):
                    continue
                fd = os.open(os.path.join(lock_dir, str(cand)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue
                uid = cand
                self._in_use.add(uid)
                break
        if uid is None:
            raise SlmkitError(f"sandbox: all {UID_SLOTS} sandbox uids from {UID_BASE} are busy")
        try:
            _kill_uid(uid)  # stragglers from a crashed evaluator must not share our run
            yield uid
        finally:
            # Orphans killed by us are reaped by init; give it a moment so the next run starts clean.
            deadline = time.monotonic() + 1.0
            while _procs(uid=uid, zombies=True) and time.monotonic() < deadline:
                time.sleep(0.01)
            with self._lock:
                self._in_use.discard(uid)
            os.close(fd)


_POOL = _UidPool()


def _uid_exists(uid: int) -> bool:
    """A uid with a passwd entry belongs to someone; never borrow it (killing by uid must be safe)."""
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


_python_lock = threading.Lock()
_python_cache: dict[str, str] = {}


def _sandbox_python(uid: int) -> str:
    """An interpreter the unprivileged uid can actually run (a venv under /root is not one)."""
    with _python_lock:
        if "root" in _python_cache:
            return _python_cache["root"]
        cands = [sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                 shutil.which("python3", path=_SAFE_PATH) or "", "/usr/bin/python3"]
        tried = []
        for cand in dict.fromkeys(c for c in cands if c):
            tried.append(cand)
            try:
                r = subprocess.run([cand, "-I", "-c", "import json, math, re, collections, itertools, heapq"],
                                   user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=30, cwd="/", env=_base_env())
            except (OSError, subprocess.SubprocessError):
                continue
            if r.returncode == 0:
                _python_cache["root"] = cand
                return cand
        raise SlmkitError(f"sandbox: no Python interpreter is runnable by the unprivileged sandbox uid "
                          f"(tried {', '.join(tried)}); pass python=<path readable by all users>")


def _base_env() -> dict[str, str]:
    """Built from scratch: nothing of the evaluator's environment (tokens, keys) leaks in."""
    return {"PATH": _SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


# --------------------------------------------------------------------------------------------
# Finding and killing what a run left behind
# --------------------------------------------------------------------------------------------


def _procs(*, uid: int | None = None, marker: bytes | None = None, sid: int | None = None,
           zombies: bool = False) -> list[int]:
    """Live (non-zombie unless asked) pids of a run: by real uid, or (unprivileged) by env marker or session."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            if uid is not None:
                with open(f"/proc/{pid}/status", "rb") as f:
                    status = f.read()
                m = re.search(rb"^Uid:\s+(\d+)", status, re.M)
                if not m or int(m.group(1)) != uid or (not zombies and re.search(rb"^State:\s+[ZX]", status, re.M)):
                    continue
                found.append(pid)
            else:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if fields[0] in (b"Z", b"X"):
                    continue
                if sid is not None and int(fields[3]) == sid:
                    found.append(pid)
                    continue
                if marker is not None:
                    with open(f"/proc/{pid}/environ", "rb") as f:
                        if marker in f.read():
                            found.append(pid)
        except (OSError, ValueError, IndexError):
            continue
    return found


def _memory_kb(pids: list[int]) -> int:
    """Total proportional set size, so COW-shared pages of forked children aren't counted twice."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                m = re.search(rb"^Pss:\s+(\d+)", f.read(), re.M)
            total += int(m.group(1)) if m else 0
        except OSError:
            continue
    return total


def _kill_uid(uid: int, python: str | None = None) -> bool:
    """SIGKILL every process of uid. ``kill(-1)`` issued as that uid is atomic against forking."""
    for attempt in range(60):
        pids = _procs(uid=uid)
        if not pids:
            return True
        if python and attempt < 3:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([python, "-I", "-S", "-c", _KILL_ALL_AS_ME], user=uid, group=uid, extra_groups=[],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd="/", env=_base_env(), timeout=10)
        else:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(min(0.005 * (attempt + 1), 0.05))
    return not _procs(uid=uid)


def _kill_run(pid: int, uid: int | None, marker: bytes | None, python: str) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # pid not reaped yet (WNOWAIT), so the group id can't be reused
    if uid is not None:
        _kill_uid(uid, python)
        return
    for _ in range(30):  # same uid as us: best effort by session and env marker
        pids = [p for p in _procs(marker=marker, sid=pid) if p != os.getpid()]
        if not pids:
            return
        for p in pids:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.01)


_SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _sweep_uid_leftovers(uid: int, ipc: bool) -> None:
    """Without a mount/IPC namespace the uid could leave files in world-writable dirs or SysV IPC."""
    for d in dict.fromkeys(os.path.realpath(p) for p in _SHARED_WRITABLE):
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                if e.is_dir(follow_symlinks=False):
                    shutil.rmtree(e.path, ignore_errors=True)
                else:
                    os.unlink(e.path)
            except OSError:
                continue
    if ipc:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, ctl in (("shm", "shmctl"), ("msg", "msgctl"), ("sem", "semctl")):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        if not lines:
            continue
        head = lines[0].split()
        id_col, uid_col = next((i for i, h in enumerate(head) if h.endswith("id")), 1), head.index("uid")
        for line in lines[1:]:
            cols = line.split()
            if len(cols) > uid_col and int(cols[uid_col]) == uid:
                if kind == "sem":
                    libc.semctl(int(cols[id_col]), 0, 0, None)  # IPC_RMID
                else:
                    getattr(libc, ctl)(int(cols[id_col]), 0, None)


# --------------------------------------------------------------------------------------------
# Output capture
# --------------------------------------------------------------------------------------------


class _Capture:
    """Keeps the first and last ``limit/2`` bytes of a stream; the rest is counted and dropped."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 64)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data[-self.half:]
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    def raw(self) -> bytes:
        return bytes(self.head + self.tail)

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        body = bytes(self.head) + (f"\n[... {dropped} bytes dropped ...]\n".encode() if dropped else b"") + bytes(self.tail)
        return body.decode("utf-8", "replace")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _validate(timeout: float, **ints: int) -> None:
    if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
        raise SlmkitError(f"sandbox: timeout={timeout!r} must be a positive number of seconds")
    for name, value in ints.items():
        if not isinstance(value, int) or value <= 0:
            raise SlmkitError(f"sandbox: {name}={value!r} must be a positive integer")
    if ints["memory_mb"] < 32:
        raise SlmkitError(f"sandbox: memory_mb={ints['memory_mb']} is too small to start Python (need >= 32)")


def run_program(
    source: str,
    timeout: float = 10.0,
    *,
    memory_mb: int = 1024,
    cpu_seconds: int | None = None,
    max_procs: int = 32,
    max_file_mb: int = 16,
    max_open_files: int = 256,
    max_output_bytes: int = 8192,
    env: dict[str, str] | None = None,
    expect_token: str | None = None,
    python: str | None = None,
) -> SandboxResult:
    """Run ``source`` as ``__main__`` in the sandbox; passed = exit 0 within the limits.

    ``memory_mb`` caps each process's address space and the run's total memory; ``cpu_seconds``
    (default: timeout rounded up + 1) caps CPU per process; ``max_procs`` caps processes+threads
    (per uid); ``max_file_mb`` caps each written file (and sizes the private tmpfs). ``env`` adds
    variables to the minimal environment. With ``expect_token``, exit 0 also needs the token in
    stdout (see ``run_checked``). ``python`` overrides the sandboxed interpreter.
    """
    cpu = cpu_seconds if cpu_seconds is not None else int(math.ceil(timeout)) + 1
    _validate(timeout, memory_mb=memory_mb, cpu_seconds=cpu, max_procs=max_procs, max_file_mb=max_file_mb,
              max_open_files=max_open_files, max_output_bytes=max_output_bytes)
    if os.geteuid() == 0:
        with _POOL.lease() as uid:
            return _run(source, timeout, uid, cpu, memory_mb, max_procs, max_file_mb, max_open_files,
                        max_output_bytes, env, expect_token, python or _sandbox_python(uid))
    return _run(source, timeout, None, cpu, memory_mb, max_procs, max_file_mb, max_open_files,
                max_output_bytes, env, expect_token, python or sys.executable)


def _run(source, timeout, uid, cpu, memory_mb, max_procs, max_file_mb, max_open_files, max_output_bytes,
         env, expect_token, python) -> SandboxResult:
    marker = None if uid is not None else "SLMKIT_SANDBOX_RUN=" + secrets.token_hex(12)
    child_env = _base_env()
    if marker:
        child_env.update([marker.split("=", 1)])
    child_env.update({str(k): str(v) for k, v in (env or {}).items()})
    host_dir = tempfile.mkdtemp(prefix="slmkit-sbx-")
    isolation: dict = {}
    try:
        with open(os.path.join(host_dir, "program.py"), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(source)
        if uid is not None:
            os.chown(host_dir, uid, uid)
        protect = []
        if uid is None:  # same uid as the evaluator: seccomp refuses signals aimed at it
            protect = [os.getpid(), -1, -os.getpgrp()]
        cfg = {
            "host_dir": host_dir, "uid": uid, "gid": uid, "python": python, "runner": _RUNNER,
            "env": child_env, "parent_pid": os.getpid(), "protect_pids": protect, "namespaces": _USE_NAMESPACES,
            "cpu_seconds": cpu, "memory_mb": memory_mb, "max_procs": max_procs, "max_file_mb": max_file_mb,
            "max_open_files": max_open_files, "tmpfs_mb": max(4 * max_file_mb, 16), "tmpfs_inodes": 4096,
        }
        status_r, status_w = os.pipe()
        try:
            cfg["status_fd"] = status_w
            try:
                proc = subprocess.Popen(
                    [sys.executable, "-I", "-S", "-c", _LAUNCHER, json.dumps(cfg)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(status_w,), start_new_session=True, cwd=host_dir, env=_base_env(),
                )
            except OSError as e:
                return SandboxResult(False, "error", None, "", "", 0.0, f"could not start sandbox: {e}", uid)
            finally:
                os.close(status_w)
            out, err = _Capture(max_output_bytes), _Capture(max_output_bytes)
            timed_out, mem_killed, wall = _supervise(proc, out, err, timeout, uid, marker, memory_mb, python)
            rc = proc.returncode
            with os.fdopen(status_r, "rb") as f:
                status_r = -1
                launch = []
                for line in f.read().splitlines():
                    with contextlib.suppress(ValueError):
                        launch.append(json.loads(line))
        finally:
            if status_r >= 0:
                os.close(status_r)
    finally:
        shutil.rmtree(host_dir, ignore_errors=True)
    for msg in launch:
        isolation.update(msg.get("isolation", {}))
    if uid is not None and not isolation.get("mnt"):
        _sweep_uid_leftovers(uid, ipc=bool(isolation.get("ipc")))
    errors = [m["error"] for m in launch if "error" in m]
    o, e = out.text(), err.text()
    if errors:
        return SandboxResult(False, "error", rc, o, e, wall, "sandbox setup failed: " + "; ".join(errors), uid, isolation)
    if not any(m.get("ready") for m in launch) and not timed_out:
        return SandboxResult(False, "error", rc, o, e, wall, f"sandbox launcher died before starting (rc={rc})", uid, isolation)
    if timed_out:
        status, detail = "timeout", f"wall-clock timeout after {timeout:g}s"
    elif mem_killed:
        status, detail = "killed", f"memory limit: the run's processes used more than {memory_mb} MB"
    elif rc is not None and rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        why = {signal.SIGXCPU: "CPU time limit", signal.SIGKILL: "SIGKILL (hard CPU limit or OOM)",
               signal.SIGSEGV: "segmentation fault", signal.SIGXFSZ: "file size limit"}.get(sig, "signal")
        status, detail = "killed", f"{why} ({name})"
    elif rc == 0:
        if expect_token is not None and expect_token.encode() not in out.raw():
            status, detail = "failed", "exited 0 before the end of the tests (completion token missing)"
        else:
            status, detail = "passed", ""
    else:
        status, detail = "failed", f"exit code {rc}"
    return SandboxResult(status == "passed", status, rc, o, e, wall, detail, uid, isolation)


def _supervise(proc, out, err, timeout, uid, marker, memory_mb, python):
    """Pump output into bounded buffers until exit/timeout/memory; then kill everything left."""
    sel = selectors.DefaultSelector()
    for stream, cap in ((proc.stdout, out), (proc.stderr, err)):
        os.set_blocking(stream.fileno(), False)
        sel.register(stream.fileno(), selectors.EVENT_READ, cap)

    def pump(wait: float) -> None:
        if not sel.get_map():
            time.sleep(min(wait, 0.01))
            return
        for key, _ in sel.select(wait):
            for _ in range(16):
                try:
                    data = os.read(key.fd, 1 << 16)
                except BlockingIOError:
                    break
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(key.fd)
                    break
                key.data.add(data)

    start = time.monotonic()
    deadline, next_mem = start + timeout, start + 0.1
    timed_out = mem_killed = False
    marker_b = marker.encode() if marker else None
    try:
        while True:
            # WNOWAIT: notice the exit without reaping, so the pid/pgid stays ours until we've killed
            if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                break
            now = time.monotonic()
            if now >= deadline:
                timed_out = True
                break
            if now >= next_mem:
                next_mem = now + 0.1
                pids = _procs(uid=uid) if uid is not None else _procs(marker=marker_b, sid=proc.pid)
                if _memory_kb(pids) > memory_mb * 1024:
                    mem_killed = True
                    break
            pump(min(deadline - now, 0.05))
        wall = time.monotonic() - start
    finally:
        _kill_run(proc.pid, uid, marker_b, python)
        end = time.monotonic() + 1.0
        while sel.get_map() and time.monotonic() < end:  # writers are dead: drain to EOF
            pump(0.05)
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        proc.wait()
    return timed_out, mem_killed, wall


def _with_token(source: str) -> tuple[str, str]:
    token = "slmkit-tests-completed-" + secrets.token_hex(16)
    return source.rstrip() + f"\n\n\nprint({token!r}, flush=True)\n", token


def run_checked(problem_code_with_tests: str, timeout: float = 10.0, **limits) -> SandboxResult:
    """Run solution + tests; passed needs exit 0 *and* the token printed after the last test."""
    source, token = _with_token(problem_code_with_tests)
    return run_program(source, timeout, expect_token=token, **limits)


def check_program(problem_code_with_tests: str, timeout: float = 10.0, **limits) -> bool:
    """True when the program (solution followed by its test code) runs to the end and exits 0."""
    return run_checked(problem_code_with_tests, timeout, **limits).passed


def run_many(programs: Sequence[str], workers: int = 2, *, timeout: float = 10.0, check: bool = False,
             **limits) -> list[SandboxResult]:
    """Run programs concurrently; always one result per program, in order, whatever they do.

    ``check=True`` scores each like ``check_program``. Configuration errors (``SlmkitError``)
    propagate; any other failure of the sandbox for one program becomes a status "error" result.
    """
    if not isinstance(workers, int) or workers < 1:
        raise SlmkitError(f"sandbox: workers={workers!r} must be a positive integer")
    one = run_checked if check else run_program

    def task(src: str) -> SandboxResult:
        try:
            return one(src, timeout, **limits)
        except SlmkitError:
            raise
        except Exception as e:  # noqa: BLE001 - the batch must go on
            return SandboxResult(False, "error", None, "", "", 0.0, f"sandbox failure: {type(e).__name__}: {e}")

    if not programs:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(workers, len(programs))) as pool:
        return list(pool.map(task, programs))
