"""`slmkit serve api` as a process on the pulled SmolLM2-135M-Instruct GGUF: /health goes 503 -> 200, the openai
client streams and completes on both endpoints, the answer is right, and Ctrl-C stops it cleanly."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest

from slmkit.app.cli import add_commands
from slmkit.hub import fetch_gguf

# `slmkit serve ...` through the app's own add_commands (the same parser slmkit.cli builds)
LAUNCH = ("import argparse, sys; from slmkit.app.cli import add_commands; p = argparse.ArgumentParser(prog='slmkit'); "
          "add_commands(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_arguments_and_defaults():
    p = argparse.ArgumentParser(prog="slmkit")
    add_commands(p.add_subparsers())
    a = p.parse_args(["serve", "api", "m.gguf"])
    assert (a.host, a.port, a.parallel, a.max_queue, a.backend) == ("127.0.0.1", 8000, 1, 16, None)
    a = p.parse_args(["serve", "api", "m.gguf", "--host", "0.0.0.0", "--port", "9", "--api-key", "k", "--parallel", "4",
                      "--backend", "llama.cpp"])
    assert (a.host, a.port, a.api_key, a.parallel, a.backend) == ("0.0.0.0", 9, "k", 4, "llama.cpp")
    u = p.parse_args(["serve", "ui"])
    assert u.model is None and u.host == "127.0.0.1"


@pytest.fixture(scope="module")
def smollm2_server(tmp_path_factory):
    gguf, _ = fetch_gguf("smollm2-135m-instruct")
    log = open(tmp_path_factory.mktemp("serve") / "server.log", "w+")
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-c", LAUNCH, "serve", "api", str(gguf), "--port", str(port),
                             "--threads", "1"], env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    statuses = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                statuses.append(httpx.get(url + "/health", timeout=5).status_code)
                if statuses[-1] == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, open(log.name).read()
            time.sleep(0.05)
        assert statuses and statuses[-1] == 200, statuses
        yield url, gguf.name, proc, statuses
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()


@pytest.fixture(scope="module")
def stock_llama(smollm2_server):
    """llama-cpp-python's own chat/completion API on the same file: the reference (its chat template, sampler and
    stop handling, none of ours). Extra weight buffers off as slmkit does on AMX CPUs (they crash there)."""
    from slmkit.serve.llamacpp_backend import extra_bufts_default, open_llama

    gguf, _ = fetch_gguf("smollm2-135m-instruct")
    llm = open_llama(gguf, extra_bufts=extra_bufts_default(), n_ctx=4096, n_threads=1, verbose=False)
    yield llm
    llm.close()


def test_smollm2_gguf_chat_and_completions(smollm2_server, stock_llama):
    url, name, proc, statuses = smollm2_server
    assert set(statuses) <= {503, 200}
    client = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0, timeout=120)
    assert [m.id for m in client.models.list().data] == [name]
    q = [{"role": "user", "content": "What is the capital of France?"}]
    r = client.chat.completions.create(model=name, messages=q, max_tokens=24, temperature=0)
    answer = r.choices[0].message.content
    want = stock_llama.create_chat_completion(q, temperature=0, max_tokens=24)
    assert answer == want["choices"][0]["message"]["content"]  # (this Q4_1 file answers "L'Étoile, ...")
    assert r.usage.prompt_tokens == want["usage"]["prompt_tokens"]
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=name, messages=q, max_tokens=24, temperature=0, stream=True) if c.choices]
    assert "".join(pieces) == answer and len([p for p in pieces if p]) > 3
    c = client.completions.create(model=name, prompt="The capital of France is", max_tokens=6, temperature=0)
    assert "Paris" in c.choices[0].text and c.usage.completion_tokens <= 6
    stock = stock_llama.create_completion("The capital of France is", temperature=0, max_tokens=6)
    assert c.choices[0].text == stock["choices"][0]["text"]
    streamed = "".join(ch.choices[0].text for ch in client.completions.create(
        model=name, prompt="The capital of France is", max_tokens=6, temperature=0, stream=True) if ch.choices)
    assert streamed == c.choices[0].text


def test_ctrl_c_stops_the_server_cleanly(smollm2_server):
    url, name, proc, _ = smollm2_server
    body = {"model": name, "messages": [{"role": "user", "content": "Count to one hundred."}], "max_tokens": 500,
            "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
        lines = resp.iter_lines()
        next(line for line in lines if '"content"' in line)
        proc.send_signal(signal.SIGINT)  # mid-stream
        t0 = time.monotonic()
        code = proc.wait(60)
    assert code == 0 and time.monotonic() - t0 < 45  # graceful period + the token in flight on a loaded machine
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "/health", timeout=2)
