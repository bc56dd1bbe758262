"""Which Python the sandbox uid runs, and the environment every sandboxed process starts from."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading

from slmkit.errors import SlmkitError

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_lock = threading.Lock()
_cache: dict[str, str] = {}


def base_env() -> dict[str, str]:
    """Built from scratch: nothing of the evaluator's environment (tokens, keys) leaks in."""
    return {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}


def package_source(name: str) -> str:
    """Source of a stdlib-only helper shipped beside this module (read by the trusted side)."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), name), encoding="utf-8") as f:
        return f.read()


def sandbox_python(uid: int) -> str:
    """An interpreter the unprivileged uid can actually run (a venv under /root is not one)."""
    with _lock:
        if "root" in _cache:
            return _cache["root"]
        cands = [sys.executable, os.path.realpath(sys.executable), getattr(sys, "_base_executable", ""),
                 shutil.which("python3", path=SAFE_PATH) or "", "/usr/bin/python3"]
        tried = []
        for cand in dict.fromkeys(c for c in cands if c):
            tried.append(cand)
            try:
                r = subprocess.run([cand, "-I", "-c", "import json, math, re, collections, itertools, heapq"],
                                   user=uid, group=uid, extra_groups=[], stdin=subprocess.DEVNULL,
                                   capture_output=True, timeout=30, cwd="/", env=base_env())
            except (OSError, subprocess.SubprocessError):
                continue
            if r.returncode == 0:
                _cache["root"] = cand
                return cand
        raise SlmkitError(f"sandbox: no Python interpreter is runnable by the unprivileged sandbox uid "
                          f"(tried {', '.join(tried)}); pass python=<path readable by all users>")
