"""The pool of dedicated sandbox uids: one per concurrent run, never one that belongs to anybody."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import stat
import tempfile
import threading
import time
from collections.abc import Iterator

from slmkit.errors import SlmkitError
import slmkit.sandbox.procs as procs

UID_BASE = 61000  # below systemd's DynamicUser range (61184-65519); nothing else uses these
UID_SLOTS = 128


def uid_exists(uid: int) -> bool:
    """A uid with a passwd entry belongs to someone; never borrow it (killing by uid must be safe)."""
    try:
        pwd.getpwuid(uid)
        return True
    except KeyError:
        return False


class UidPool:
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
                if cand in self._in_use or uid_exists(cand):
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
            procs.kill_uid(uid)  # stragglers from a crashed evaluator must not share our run
            yield uid
        finally:
            # Orphans killed by us are reaped by init; give it a moment so the next run starts clean.
            deadline = time.monotonic() + 1.0
            while procs.find(uid=uid, zombies=True) and time.monotonic() < deadline:
                time.sleep(0.01)
            with self._lock:
                self._in_use.discard(uid)
            os.close(fd)


POOL = UidPool()
