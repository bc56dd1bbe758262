"""Finding, measuring and killing what a sandboxed run left behind, and sweeping its leftover files."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import time

from slmkit.sandbox.interpreter import base_env, package_source

SHARED_WRITABLE = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
_KILL_ALL = package_source("killall.py")


def find(*, uid: int | None = None, marker: bytes | None = None, sid: int | None = None,
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


def memory_kb(pids: list[int]) -> int:
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


def kill_uid(uid: int, python: str | None = None) -> bool:
    """SIGKILL every process of uid. ``kill(-1)`` issued as that uid (killall.py) is atomic against forking."""
    for attempt in range(60):
        pids = find(uid=uid)
        if not pids:
            return True
        if python and attempt < 3:
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([python, "-I", "-S", "-c", _KILL_ALL], user=uid, group=uid, extra_groups=[],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               cwd="/", env=base_env(), timeout=10)
        else:
            for pid in pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(min(0.005 * (attempt + 1), 0.05))
    return not find(uid=uid)


def kill_run(pid: int, uid: int | None, marker: bytes | None, python: str) -> None:
    """Kill a run's process group, then everything of its uid (or, same-uid evaluator, its session/marker)."""
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)  # pid not reaped yet (WNOWAIT), so the group id can't be reused
    if uid is not None:
        kill_uid(uid, python)
        return
    for _ in range(30):  # same uid as us: best effort by session and env marker
        pids = [p for p in find(marker=marker, sid=pid) if p != os.getpid()]
        if not pids:
            return
        for p in pids:
            with contextlib.suppress(OSError):
                os.kill(p, signal.SIGKILL)
        time.sleep(0.01)


def sweep_uid_leftovers(uid: int, ipc: bool) -> None:
    """Without a mount/IPC namespace the uid could leave files in world-writable dirs or SysV IPC.

    Run only once every process of the uid is dead. Symlinks are unlinked, never followed
    (``rmtree`` on a real directory doesn't follow the links inside it either).
    """
    for d in dict.fromkeys(os.path.realpath(p) for p in SHARED_WRITABLE):
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
