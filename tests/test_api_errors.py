"""Bad requests get the right status and an OpenAI-shaped error (and the server keeps serving); keys, local-only
mode, a full queue (503) and a disconnected stream that frees its slot at once."""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from slmkit.app.api import create_app
from slmkit.app.generation import GenerationService
from slmkit.serve import load
from test_app_support import LONG_PROMPT, LONG_TOKENS, MODEL_NAME, running_api, tiny_model_dir  # noqa: F401

OK_CHAT = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4, "temperature": 0}


def chat(**change):
    body = dict(OK_CHAT, **change)
    return {k: v for k, v in body.items() if v is not ...}


# (what, method, path, body (dict -> JSON, str/bytes -> raw), status, param, code)
MALFORMED = [
    ("not JSON", "POST", "/v1/chat/completions", b'{"model": "tiny-chat", "messages": [', 400, None, "invalid_json"),
    ("JSON array body", "POST", "/v1/chat/completions", b"[1, 2]", 400, None, "invalid_json"),
    ("no messages", "POST", "/v1/chat/completions", chat(messages=...), 400, "messages", "missing_required_parameter"),
    ("no model", "POST", "/v1/chat/completions", chat(model=...), 400, "model", "missing_required_parameter"),
    ("empty messages", "POST", "/v1/chat/completions", chat(messages=[]), 400, "messages", "invalid_value"),
    ("unknown role", "POST", "/v1/chat/completions", chat(messages=[{"role": "wizard", "content": "x"}]), 400,
     "messages[0].role", "invalid_value"),
    ("image content", "POST", "/v1/chat/completions",
     chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]), 400,
     "messages[0].content", "invalid_value"),
    ("temperature as text", "POST", "/v1/chat/completions", chat(temperature="hot"), 400, "temperature", "invalid_value"),
    ("temperature too high", "POST", "/v1/chat/completions", chat(temperature=5), 400, "temperature", "invalid_value"),
    ("n = 0", "POST", "/v1/chat/completions", chat(n=0), 400, "n", "invalid_value"),
    ("negative max_tokens", "POST", "/v1/chat/completions", chat(max_tokens=-1), 400, "max_tokens", "invalid_value"),
    ("unknown field", "POST", "/v1/chat/completions", chat(frobnicate=True), 400, "frobnicate", "unrecognized_argument"),
    ("stream as string", "POST", "/v1/chat/completions", chat(stream="yes"), 400, "stream", "invalid_value"),
    ("too many stops", "POST", "/v1/chat/completions", chat(stop=[f"s{i}" for i in range(20)]), 400, None,
     "invalid_value"),
    ("top_logprobs without logprobs", "POST", "/v1/chat/completions", chat(top_logprobs=2), 400, None, "invalid_value"),
    ("tools", "POST", "/v1/chat/completions", chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
     None, "invalid_value"),
    ("context too long", "POST", "/v1/chat/completions", chat(max_tokens=5000), 400, "messages",
     "context_length_exceeded"),
    ("unknown model", "POST", "/v1/chat/completions", chat(model="gpt-4o"), 404, "model", "model_not_found"),
    ("prompt id outside vocab", "POST", "/v1/completions", {"model": MODEL_NAME, "prompt": [5, 99999]}, 400, "prompt",
     "invalid_value"),
    ("completion prompt missing", "POST", "/v1/completions", {"model": MODEL_NAME}, 400, "prompt",
     "missing_required_parameter"),
    ("logprobs too many", "POST", "/v1/completions", {"model": MODEL_NAME, "prompt": "a", "logprobs": 50}, 400,
     "logprobs", "invalid_value"),
    ("unknown route", "POST", "/v1/embeddings", {"model": MODEL_NAME, "input": "a"}, 404, None, "not_found"),
    ("wrong method", "GET", "/v1/chat/completions", None, 405, None, "method_not_allowed"),
    ("body too large", "POST", "/v1/completions", json.dumps({"model": MODEL_NAME, "prompt": "a" * (9 << 20)}), 413,
     None, "body_too_large"),
]


@pytest.fixture(scope="module")
def api(tiny_model_dir):
    with running_api(tiny_model_dir, parallel=1, max_queue=8) as (url, service):
        yield url, service


def assert_openai_error(resp, status, param=None, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"] and isinstance(err["type"], str)
    assert err["param"] == param and err["code"] == code, err


@pytest.mark.parametrize("what,method,path,body,status,param,code", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_openai_error_and_server_keeps_serving(api, what, method, path, body, status, param,
                                                                       code):
    url, _ = api
    kw = {"json": body} if isinstance(body, dict) else {"content": body} if body is not None else {}
    if not isinstance(body, dict) and body is not None:
        kw["headers"] = {"content-type": "application/json"}
    resp = httpx.request(method, url + path, timeout=60, **kw)
    assert_openai_error(resp, status, param, code)
    ok = httpx.post(url + "/v1/chat/completions", json=OK_CHAT, timeout=60)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4


def test_openai_client_raises_typed_errors(api):
    client = openai.OpenAI(base_url=api[0] + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}], temperature=9)
    assert bad.value.status_code == 400 and bad.value.body["param"] == "temperature"
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="davinci-002", prompt="x")


def test_api_key(tiny_model_dir):
    with running_api(tiny_model_dir, api_key="s3cret") as (url, _):
        no_key = httpx.post(url + "/v1/chat/completions", json=OK_CHAT, timeout=60)
        assert_openai_error(no_key, 401, None, "invalid_api_key")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        assert good.chat.completions.create(**OK_CHAT).usage.completion_tokens == 4
        assert httpx.get(url + "/health").status_code == 200  # probes need no key


def test_keyless_server_refuses_remote_clients(tiny_model_dir):
    """Without a key only loopback clients are served (the client address is set through the ASGI transport)."""
    service = GenerationService(lambda: load(tiny_model_dir, threads=1))
    try:
        app = create_app(service, MODEL_NAME)
        service.ready.wait(60)

        async def call(client_host):
            transport = httpx.ASGITransport(app=app, client=(client_host, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://server") as c:
                return await c.post("/v1/chat/completions", json=OK_CHAT)

        import asyncio

        assert_openai_error(asyncio.run(call("192.0.2.7")), 403, None, "local_only")
        assert asyncio.run(call("127.0.0.1")).status_code == 200
    finally:
        service.close()


def test_health_is_503_while_loading(tiny_model_dir):
    release = threading.Event()

    def slow_load():
        release.wait(30)
        return load(tiny_model_dir, threads=1)

    service = GenerationService(slow_load)
    from slmkit.app.api import serve_in_thread

    try:
        with serve_in_thread(create_app(service, MODEL_NAME)) as url:
            assert httpx.get(url + "/health").status_code == 503
            assert_openai_error(httpx.post(url + "/v1/chat/completions", json=OK_CHAT), 503, None, "model_loading")
            release.set()
            service.ready.wait(60)
            assert httpx.get(url + "/health").status_code == 200
            assert httpx.post(url + "/v1/chat/completions", json=OK_CHAT, timeout=60).status_code == 200
    finally:
        release.set()
        service.close()


def _long_stream(url, chunks_to_read: int):
    """Start a long greedy streaming request and read a few chunks; returns the open response context and its
    line iterator (dropping the iterator would close the connection)."""
    body = {"model": MODEL_NAME, "messages": LONG_PROMPT, "max_tokens": LONG_TOKENS, "temperature": 0, "stream": True}
    ctx = httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=120)
    resp = ctx.__enter__()
    assert resp.status_code == 200
    lines = resp.iter_lines()
    seen = 0
    for line in lines:
        if line.startswith("data: {") and '"content"' in line:
            seen += 1
            if seen >= chunks_to_read:
                break
    return ctx, lines


def test_disconnected_stream_frees_its_slot_at_once(api):
    """parallel=1: while a long stream runs, a second request waits; closing the stream starts it at once."""
    url, service = api
    before = service.snapshot()
    t0 = time.perf_counter()
    full = httpx.post(url + "/v1/chat/completions",
                      json={**OK_CHAT, "messages": LONG_PROMPT, "max_tokens": LONG_TOKENS}, timeout=300)
    full_s = time.perf_counter() - t0
    assert full.json()["usage"]["completion_tokens"] == LONG_TOKENS

    ctx, _lines = _long_stream(url, 5)
    waiting: dict = {}

    def second():
        with httpx.stream("POST", url + "/v1/chat/completions", json={**OK_CHAT, "stream": True}, timeout=120) as r:
            for line in r.iter_lines():
                if '"content"' in line and '"content":""' not in line:
                    waiting["first_token_at"] = time.perf_counter()
                    break

    t = threading.Thread(target=second)
    t.start()
    time.sleep(0.5)
    assert "first_token_at" not in waiting, "the second request must wait while the first holds the only slot"
    closed_at = time.perf_counter()
    ctx.__exit__(None, None, None)  # the client goes away
    t.join(120)
    gap = waiting["first_token_at"] - closed_at
    # the abandoned stream still had most of its full_s to run; the waiting request starts long before that
    assert gap < full_s / 4, (gap, full_s)
    after = service.snapshot()
    assert after["cancelled"] == before["cancelled"] + 1
    # tokens the abandoned stream generated: far fewer than its budget (it stopped when the client left)
    abandoned = after["completion_tokens"] - before["completion_tokens"] - LONG_TOKENS - 4
    assert 5 <= abandoned < LONG_TOKENS / 2, abandoned
    print(f"full long request {full_s:.2f}s; waiting request's first token {gap * 1000:.0f} ms after the "
          f"disconnect; the abandoned stream generated {abandoned} of {LONG_TOKENS} tokens")


def test_full_queue_answers_503(tiny_model_dir):
    with running_api(tiny_model_dir, parallel=1, max_queue=1) as (url, service):
        ctx, _lines = _long_stream(url, 2)  # occupies the slot
        queued: dict = {}

        def waiter():
            queued["resp"] = httpx.post(url + "/v1/chat/completions", json=OK_CHAT, timeout=120)

        t = threading.Thread(target=waiter)
        t.start()
        deadline = time.monotonic() + 30
        while service.snapshot()["waiting"] < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        resp = httpx.post(url + "/v1/chat/completions", json=OK_CHAT, timeout=60)
        assert_openai_error(resp, 503, None, "queue_full")
        assert resp.headers.get("retry-after") == "1"
        ctx.__exit__(None, None, None)
        t.join(120)
        assert queued["resp"].status_code == 200
        assert service.snapshot()["rejected"] == 1
