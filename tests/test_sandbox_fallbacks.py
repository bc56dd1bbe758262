"""The sandbox's fallbacks and its packaging: walls that must hold when namespaces and seccomp are
missing, and child-side helpers that run as `python -I -S` from wherever the package is installed.
"""

from __future__ import annotations

import ast
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from slmkit.sandbox import run_checked, run_program
from slmkit.sandbox import runner as sandbox

LIMITS = dict(memory_mb=256, max_procs=16, max_file_mb=4, max_output_bytes=4096)
IS_ROOT = os.geteuid() == 0


@pytest.mark.skipif(not IS_ROOT, reason="path-named sockets are guarded by the dropped uid's file permissions")
def test_af_unix_contained_without_namespaces_or_seccomp(monkeypatch):
    """The fallback of the fallback: no namespaces, no seccomp; Landlock scopes and the uid must hold."""
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", False)
    monkeypatch.setattr(sandbox, "_USE_SECCOMP", False)
    abstract = f"slmkit-test-{secrets.token_hex(6)}"
    sock_dir = Path(tempfile.mkdtemp(prefix="slmkit-test-unix-"))
    sock_dir.chmod(0o755)  # reachable by the sandbox uid; only the socket's own mode guards it
    path = str(sock_dir / "evaluator.sock")
    listeners = []
    try:
        for addr in ("\0" + abstract, path):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.bind(addr)
            s.listen()
            s.setblocking(False)
            listeners.append(s)
        os.chmod(path, 0o755)
        src = ("import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\nreached = []\n"
               f"for name in (b'\\0' + {abstract.encode()!r}, {path.encode()!r} + b'\\0'):\n"
               "    fd = libc.socket(1, 1, 0)\n    assert fd >= 0, ('socket', ctypes.get_errno())\n"
               "    addr = struct.pack('=H', 1) + name\n"
               "    if libc.connect(fd, addr, len(addr)) == 0:\n        reached.append(name)\n"
               "    else:\n        print(name, 'errno', ctypes.get_errno())\n"
               "assert reached, 'no evaluator socket reached'\n")
        r = run_checked(src, timeout=5, **LIMITS)
        print(r.isolation, r.stdout)
        assert r.isolation["seccomp"] is False and not r.isolation["net"]
        if not r.isolation.get("landlock_scopes"):
            pytest.skip("this kernel has no Landlock scopes (Linux < 6.12): abstract sockets are reachable here")
        assert r.status == "failed" and "no evaluator socket reached" in r.stderr, (r.status, r.stdout, r.stderr)
        for s in listeners:
            with pytest.raises(BlockingIOError):
                s.accept()
    finally:
        for s in listeners:
            s.close()
        shutil.rmtree(sock_dir, ignore_errors=True)


def test_without_seccomp_the_isolation_report_says_so(monkeypatch):
    monkeypatch.setattr(sandbox, "_USE_SECCOMP", False)
    r = run_program("print('hi')", timeout=5)
    assert r.passed and r.stdout == "hi\n" and r.isolation["seccomp"] is False


HELPERS = ("launcher.py", "prelude.py", "seccomp.py", "landlock.py", "killall.py")


@pytest.mark.parametrize("name", HELPERS)
def test_child_side_helpers_import_only_the_stdlib(name):
    """They run as `python -I -S` (the sandbox uid may not even read the installed package)."""
    path = Path(sandbox.__file__).with_name(name)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{name}: relative import"
            imported.add(node.module.split(".")[0])
    assert imported and imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)


def test_launcher_rejects_a_broken_config_without_running_anything(tmp_path):
    """Run by path exactly as the evaluator does; a config that is not JSON must not get to exec."""
    fd = os.memfd_create("cfg")
    os.write(fd, b"not json")
    try:
        r = subprocess.run([sys.executable, "-I", "-S", sandbox.LAUNCHER, str(fd)], pass_fds=(fd,),
                           capture_output=True, text=True, timeout=30, cwd=tmp_path)
    finally:
        os.close(fd)
    assert r.returncode != 0 and "JSONDecodeError" in r.stderr


def test_helpers_work_from_a_directory_without_the_package(monkeypatch, tmp_path):
    """The launcher and what it loads by path need nothing but each other (as in an installed wheel)."""
    alone = tmp_path / "alone"
    alone.mkdir()
    for name in ("launcher.py", "prelude.py", "seccomp.py", "landlock.py"):
        shutil.copy(Path(sandbox.__file__).with_name(name), alone / name)
    monkeypatch.setattr(sandbox, "LAUNCHER", str(alone / "launcher.py"))
    ok = run_checked("import sys\nassert 'slmkit' not in sys.modules\nassert sum([1, 2]) == 3\n", timeout=5, **LIMITS)
    assert ok.passed and ok.completed, (ok.status, ok.detail, ok.stderr)
    early = run_checked("raise SystemExit(0)\nassert False\n", timeout=5, **LIMITS)
    assert early.status == "failed" and not early.completed
    (alone / "prelude.py").unlink()  # and it really is this directory's copy that runs
    broken = run_checked("pass\n", timeout=5, **LIMITS)
    assert broken.status == "error" and "prelude.py" in broken.detail, (broken.status, broken.detail)
