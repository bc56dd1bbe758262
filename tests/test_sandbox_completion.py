"""The completion report: passed needs the program's last line to have run, whatever it does to stdout.

The forging attempts that don't know the protocol run in the hostile batch of test_sandbox.py;
here are the scoring rules and the attacks that do know it (the documented limit).
"""

from __future__ import annotations

import pytest

from slmkit.sandbox import run_checked, run_program

LIMITS = dict(memory_mb=256, max_procs=16, max_file_mb=4, max_output_bytes=4096)


@pytest.mark.parametrize("sabotage", [
    "import builtins\nbuiltins.print = lambda *a, **k: None\n",
    "import os\nos.dup2(os.open(os.devnull, os.O_WRONLY), 1)\n",
    "import os\nos.close(1)\nos.close(2)\n",
])
def test_stdout_is_not_the_channel(sabotage):
    """Silencing stdout neither fails a program that runs to its end nor passes one that stops early."""
    tests = "def add(a, b):\n    return a + b\n\nassert add(2, 3) == 5\n"
    r = run_checked(sabotage + tests, timeout=5, **LIMITS)
    assert r.passed and r.completed, (r.status, r.detail, r.stderr)
    r = run_checked(sabotage + "import os\nos._exit(0)\n" + tests, timeout=5, **LIMITS)
    assert r.status == "failed" and not r.completed and "no completion report" in r.detail, (r.status, r.detail)


def test_completion_report_needs_the_last_line_to_run():
    ok = run_checked("x = 1\nassert x == 1\n", timeout=5)
    assert ok.passed and ok.completed
    last_fails = run_checked("x = 1\nassert x == 2\n", timeout=5)
    assert last_fails.status == "failed" and last_fails.returncode == 1 and not last_fails.completed
    plain = run_program("import sys\nsys.exit(0)\n", timeout=5)  # without require_completion: exit 0 is enough
    assert plain.passed and not plain.completed


PROTOCOL_AWARE_FORGERIES = {
    # Knows that the token sits on fd 4 and the digest of it goes to fd 5.
    "echo_digest_of_token_fd": (
        "import hashlib, os\ntoken = os.read(4, 4096)\n"
        "os.write(5, hashlib.sha256(b'slmkit-sandbox-completed:' + token).hexdigest().encode())\nos._exit(0)\n"),
    # Re-runs the trusted prelude (read back from /proc/self/cmdline) on an empty program with fds 4 and 5.
    "rerun_prelude_on_empty_program": (
        "import os, sys\nargv = open('/proc/self/cmdline', 'rb').read().split(b'\\0')\nprelude = argv[4]\n"
        "empty = os.memfd_create('empty', 0)\nos.set_inheritable(4, True)\nos.set_inheritable(5, True)\n"
        "os.execv(sys.executable, [sys.executable, '-I', '-S', '-c', prelude, str(empty), '4', '5'])\n"
        "assert False, 'tests'\n"),
}


@pytest.mark.xfail(strict=True, reason="known limit: the prelude shares the program's process, so code written "
                                       "against the completion protocol can send the report itself (runner.py)")
@pytest.mark.parametrize("name", sorted(PROTOCOL_AWARE_FORGERIES))
def test_protocol_aware_forgery_is_the_known_limit(name):
    r = run_checked(PROTOCOL_AWARE_FORGERIES[name], timeout=5, **LIMITS)
    assert not r.passed, (name, r.status, r.detail, r.stderr)
