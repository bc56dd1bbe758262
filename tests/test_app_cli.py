"""`slmkit serve ui`: the default model's one-line messages, and the app as a process (page served, Ctrl-C stops
it cleanly)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from slmkit.errors import SlmkitError
from test_app_support import tiny_model_dir  # noqa: F401

LAUNCH = ("import argparse, sys; from slmkit.app.cli import add_commands; p = argparse.ArgumentParser(prog='slmkit'); "
          "add_commands(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def test_default_model_messages(tmp_path, monkeypatch):
    from slmkit.app.ui import default_model

    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path))
    with pytest.raises(SlmkitError) as missing:
        default_model()
    assert "slmkit models pull smollm2-135m-instruct" in str(missing.value) and "\n" not in str(missing.value)
    (tmp_path / "models" / "smollm2-135m-instruct" / "hf").mkdir(parents=True)
    with pytest.raises(SlmkitError) as no_quant:
        default_model()
    assert "slmkit export gguf" in str(no_quant.value) and "--type q4_k_m" in str(no_quant.value)
    made = tmp_path / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct-q4_k_m.gguf"
    made.write_bytes(b"GGUF")
    assert default_model() == made


def test_ui_process_serves_the_page_and_stops_on_ctrl_c(tiny_model_dir, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path / "ui.log", "w+")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "serve", "ui", str(tiny_model_dir), "--port", str(port),
                             "--threads", "1"], stdout=log, stderr=subprocess.STDOUT,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"),
                            # a shell's background job ignores SIGINT and children inherit that: a terminal's Ctrl-C
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 180
        page = None
        while time.monotonic() < deadline and page is None:
            assert proc.poll() is None, open(log.name).read()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
                page = r if r.status_code == 200 else None
            except httpx.TransportError:
                time.sleep(0.3)
        assert page is not None and "gradio" in page.text.lower()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, open(log.name).read()
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


def test_ui_refuses_a_missing_model(tmp_path):
    from slmkit.app.ui import serve_ui

    with pytest.raises(SlmkitError, match="no such model file or folder"):
        serve_ui(str(tmp_path / "nope.gguf"))
