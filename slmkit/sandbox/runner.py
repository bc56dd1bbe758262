"""Run untrusted, model-written Python (HumanEval/MBPP completions) so that it cannot hurt the evaluator.

Model-written code is hostile until proven otherwise. Each program runs in its own process,
started through the trusted *launcher* (launcher.py, ``python -I -S``) that puts up the walls
and then execs the sandboxed interpreter with the *prelude* (prelude.py) in front of the program.

Walls, strongest first:

* **uid drop** (when the evaluator runs as root, as here and in CI; root ignores RLIMIT_NPROC and
  may write or kill anything): the program runs as a dedicated, otherwise unused uid/gid
  (61000 + slot, no supplementary groups), one per concurrent run (uids.py), so it can't touch
  root-owned files or signal other processes, RLIMIT_NPROC holds, and everything it leaves behind
  can be found and killed by uid (procs.py; ``kill(-1)`` issued *as that uid* beats fork bombs).
* **namespaces** (best effort): new network namespace (no interfaces up), new IPC namespace, new
  mount namespace in which every mount is re-mounted read-only and /tmp, /var/tmp, /dev/shm,
  /run/lock are private size-capped tmpfs (the working directory lives in the private /tmp).
  Unprivileged evaluators try the same inside a user namespace.
* **seccomp** (best effort, seccomp.py): no ``socket()``, no io_uring, no new namespaces
  (``unshare``/``setns``/``clone(CLONE_NEW*)``/``clone3``), no ptrace or process_vm_*.
* **Landlock** (best effort, landlock.py, Linux >= 6.7/6.12): no TCP, no connecting to abstract
  AF_UNIX sockets or signalling processes outside the sandbox: this holds where namespaces and
  seccomp are both unavailable. Path-named AF_UNIX sockets are then guarded by file permissions
  only (the dropped uid), and UDP by nothing but the prelude's Python-level block.
* **rlimits**: CPU, address space, processes, file size, open files, no core dumps, no POSIX mqueues;
  ``PR_SET_NO_NEW_PRIVS`` (setuid binaries gain nothing) and ``PR_SET_PDEATHSIG`` (dies with us).
* **evaluator side**: wall-clock timeout, then SIGKILL to the process group *and* every process of
  the sandbox uid; total-memory watchdog over all the run's processes; stdout/stderr read into
  bounded buffers (capture.py); temp dir deleted (``rmtree`` never follows the program's
  symlinks; the program's own directory sits in a root-owned one it cannot rename or replace);
  files/SysV IPC the uid left in shared places swept when mount/IPC namespaces were unavailable.
* **prelude** (defense in depth only, bypassable by ctypes): Python-level socket/DNS functions and
  signals to foreign processes raise ``PermissionError``.

Scoring: ``passed`` means exit code 0 within the limits. Benchmark harnesses append the test code
to the program; ``check_program``/``run_checked``/``run_many(check=True)`` also need the
*completion report*: the evaluator puts a fresh random token in a pipe (fd 4) and the prelude
writes its digest (``completion_report``) to the report pipe (fd 5) only after the program's
code object returned normally.
The token is in no source, code object, linecache entry, argv, /proc/self/cmdline, environment
variable, file or stdout, so a program that exits 0 early (``sys.exit(0)``, ``os._exit(0)``, an
``atexit`` or signal trick), prints whatever it finds, sabotages ``print``/``os.write``/stdio, or
scribbles on the report pipe is scored failed.

What the completion report cannot prove: the program and the prelude share one process, uid,
seccomp filter and Landlock domain, so no kernel wall separates them. Code written against *this*
protocol can read fd 4 and write the digest to fd 5 itself (a few lines of pure Python), or re-run
the prelude on an empty program with those fds, then exit 0 without the tests. Likewise, code that defeats the tests themselves (reads the expected
values from its own source, returns objects whose ``__eq__`` is always true, patches the test
helpers) passes; the tests are part of the program. Closing these needs the tests to run outside
the candidate's process, which the "candidate + tests" string the harnesses hand over rules out.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import math
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from slmkit.errors import SlmkitError
import slmkit.sandbox.procs as procs
from slmkit.sandbox.capture import Capture
from slmkit.sandbox.interpreter import base_env, sandbox_python
from slmkit.sandbox.uids import POOL

__all__ = ["SandboxResult", "STATUSES", "run_program", "run_checked", "check_program", "run_many"]

STATUSES = ("passed", "failed", "timeout", "killed", "error")
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "launcher.py")
# Tests switch these off to exercise the fallbacks (e.g. Docker without CAP_SYS_ADMIN, other arches).
_USE_NAMESPACES = True
_USE_SECCOMP = True
_USE_LANDLOCK = True


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
    completed: bool = False  # the prelude's completion report arrived: the program's code returned normally


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
    require_completion: bool = False,
    python: str | None = None,
) -> SandboxResult:
    """Run ``source`` as ``__main__`` in the sandbox; passed = exit 0 within the limits.

    ``memory_mb`` caps each process's address space and the run's total memory; ``cpu_seconds``
    (default: timeout rounded up + 1) caps CPU per process; ``max_procs`` caps processes+threads
    (per uid); ``max_file_mb`` caps each written file (and sizes the private tmpfs). ``env`` adds
    variables to the minimal environment. ``require_completion``: passed also needs the completion
    report (see ``run_checked``). ``python`` overrides the sandboxed interpreter.
    """
    cpu = cpu_seconds if cpu_seconds is not None else int(math.ceil(timeout)) + 1
    limits = dict(memory_mb=memory_mb, cpu_seconds=cpu, max_procs=max_procs, max_file_mb=max_file_mb,
                  max_open_files=max_open_files, max_output_bytes=max_output_bytes)
    _validate(timeout, **limits)
    if os.geteuid() == 0:
        with POOL.lease() as uid:
            return _run(source, timeout, uid, limits, env, require_completion, python or sandbox_python(uid))
    return _run(source, timeout, None, limits, env, require_completion, python or sys.executable)


def _new_token() -> str:
    return secrets.token_hex(24)


def completion_report(token: bytes) -> bytes:
    """What prelude.py writes to the report pipe once the program's code returned normally."""
    return hashlib.sha256(b"slmkit-sandbox-completed:" + token).hexdigest().encode()


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)  # the offset is shared with the launcher's and the prelude's copies
    return fd


def _run(source, timeout, uid, limits, env, require_completion, python) -> SandboxResult:
    marker = None if uid is not None else "SLMKIT_SANDBOX_RUN=" + secrets.token_hex(12)
    child_env = base_env()
    if marker:
        child_env.update([marker.split("=", 1)])
    child_env.update({str(k): str(v) for k, v in (env or {}).items()})
    token = _new_token().encode()
    host_dir = tempfile.mkdtemp(prefix="slmkit-sbx-")
    mine: list[int] = []  # every fd this run opened; all closed in `finally`

    def opened(*fds: int) -> tuple[int, ...]:
        mine.extend(fds)
        return fds

    def close(fd: int) -> None:
        mine.remove(fd)
        os.close(fd)

    try:
        workdir = os.path.join(host_dir, "work")  # used when there is no private /tmp
        os.mkdir(workdir, 0o700)
        if uid is not None:  # the uid may use work/ but not rename or replace it: host_dir stays root's
            os.chmod(host_dir, 0o711)
            os.chown(workdir, uid, uid)
        (source_fd,) = opened(_memfd("slmkit-sandbox-program", source.encode("utf-8", "surrogateescape")))
        token_r, token_w = opened(*os.pipe())
        os.write(token_w, token)
        close(token_w)
        report_r, report_w = opened(*os.pipe())
        status_r, status_w = opened(*os.pipe())
        protect = []
        if uid is None:  # same uid as the evaluator: seccomp refuses signals aimed at it
            protect = [os.getpid(), -1, -os.getpgrp()] + [int(t) for t in os.listdir("/proc/self/task")]
        cfg = {
            "host_dir": host_dir, "workdir": workdir, "uid": uid, "gid": uid, "python": python, "env": child_env,
            "parent_pid": os.getpid(), "protect_pids": sorted(set(protect)), "namespaces": _USE_NAMESPACES,
            "seccomp": _USE_SECCOMP, "landlock": _USE_LANDLOCK,
            "cpu_seconds": limits["cpu_seconds"], "memory_mb": limits["memory_mb"], "max_procs": limits["max_procs"],
            "max_file_mb": limits["max_file_mb"], "max_open_files": limits["max_open_files"],
            "tmpfs_mb": max(4 * limits["max_file_mb"], 16), "tmpfs_inodes": 4096,
            "fds": {"status": status_w, "source": source_fd, "token": token_r, "report": report_w},
        }
        (cfg_fd,) = opened(_memfd("slmkit-sandbox-config", json.dumps(cfg).encode()))
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", LAUNCHER, str(cfg_fd)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                pass_fds=(cfg_fd, status_w, source_fd, token_r, report_w), start_new_session=True,
                cwd=host_dir, env=base_env(),
            )
        except OSError as e:
            return SandboxResult(False, "error", None, "", "", 0.0, f"could not start sandbox: {e}", uid)
        finally:
            for fd in (cfg_fd, status_w, source_fd, token_r, report_w):
                close(fd)
        out, err = Capture(limits["max_output_bytes"]), Capture(limits["max_output_bytes"])
        expected = completion_report(token)
        report = Capture(4 * len(expected))
        timed_out, mem_killed, wall = _supervise(proc, {proc.stdout.fileno(): out, proc.stderr.fileno(): err,
                                                        report_r: report}, timeout, uid, marker, limits, python)
        launch = _read_status(status_r)
    finally:
        for fd in mine:
            with contextlib.suppress(OSError):
                os.close(fd)
        shutil.rmtree(host_dir, ignore_errors=True)
    isolation: dict = {}
    for msg in launch:
        isolation.update(msg.get("isolation", {}))
    if uid is not None and not isolation.get("mnt"):
        procs.sweep_uid_leftovers(uid, ipc=bool(isolation.get("ipc")))
    completed = report.total == len(expected) and report.raw() == expected
    status, detail = _score(proc.returncode, launch, timed_out, mem_killed, timeout, limits["memory_mb"],
                            require_completion, completed, report.total)
    return SandboxResult(status == "passed", status, proc.returncode, out.text(), err.text(), wall, detail, uid,
                         isolation, completed)


def _read_status(fd: int) -> list[dict]:
    """The launcher's JSON lines; its write end closed at exec (or death), so this never blocks."""
    with os.fdopen(os.dup(fd), "rb") as f:
        lines = f.read().splitlines()
    launch = []
    for line in lines:
        with contextlib.suppress(ValueError):
            launch.append(json.loads(line))
    return launch


def _score(rc, launch, timed_out, mem_killed, timeout, memory_mb, require_completion, completed, report_bytes):
    errors = [m["error"] for m in launch if "error" in m]
    if errors:
        return "error", "sandbox setup failed: " + "; ".join(errors)
    if not any(m.get("ready") for m in launch) and not timed_out:
        return "error", f"sandbox launcher died before starting (rc={rc})"
    if timed_out:
        return "timeout", f"wall-clock timeout after {timeout:g}s"
    if mem_killed:
        return "killed", f"memory limit: the run's processes used more than {memory_mb} MB"
    if rc is not None and rc < 0:
        sig = -rc
        name = signal.Signals(sig).name if sig in signal.valid_signals() else str(sig)
        why = {signal.SIGXCPU: "CPU time limit", signal.SIGKILL: "SIGKILL (hard CPU limit or OOM)",
               signal.SIGSEGV: "segmentation fault", signal.SIGXFSZ: "file size limit"}.get(sig, "signal")
        return "killed", f"{why} ({name})"
    if rc != 0:
        return "failed", f"exit code {rc}"
    if require_completion and not completed:
        if report_bytes == 0:
            return "failed", "exited 0 before the end of the program (no completion report: the tests did not finish)"
        return "failed", "exited 0 with a forged or damaged completion report"
    return "passed", ""


def _supervise(proc, captures, timeout, uid, marker, limits, python):
    """Pump output into bounded buffers until exit/timeout/memory; then kill everything left."""
    sel = selectors.DefaultSelector()
    for fd, cap in captures.items():
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ, cap)

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
                pids = procs.find(uid=uid) if uid is not None else procs.find(marker=marker_b, sid=proc.pid)
                if procs.memory_kb(pids) > limits["memory_mb"] * 1024:
                    mem_killed = True
                    break
            pump(min(deadline - now, 0.05))
        wall = time.monotonic() - start
    finally:
        procs.kill_run(proc.pid, uid, marker_b, python)
        end = time.monotonic() + 1.0
        while sel.get_map() and time.monotonic() < end:  # writers are dead: drain to EOF
            pump(0.05)
        sel.close()
        proc.stdout.close()
        proc.stderr.close()
        proc.wait()
    return timed_out, mem_killed, wall


def run_checked(problem_code_with_tests: str, timeout: float = 10.0, **limits) -> SandboxResult:
    """Run solution + tests; passed needs exit 0 *and* the completion report sent after the last line ran."""
    return run_program(problem_code_with_tests, timeout, require_completion=True, **limits)


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
