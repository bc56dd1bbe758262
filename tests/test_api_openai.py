"""The OpenAI-compatible server as a user meets it: the `openai` client against `serve api` on 127.0.0.1.

Expected texts come from the runtime itself, called directly (not through the server), and prompt
log-probabilities from the runtime's separate KV-cached scoring path (`loglikelihood`)."""

from __future__ import annotations

import math

import httpx
import openai
import pytest
import torch

from slmkit.serve import SamplingParams, load
from test_app_support import MODEL_NAME, running_api, tiny_model_dir  # noqa: F401

CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def api(tiny_model_dir):
    with running_api(tiny_model_dir, parallel=1, max_queue=8) as (url, service):
        yield url, service


@pytest.fixture(scope="module")
def reference(tiny_model_dir):
    """The same checkpoint loaded on its own, for expected outputs."""
    old = torch.get_num_threads()
    rt = load(tiny_model_dir, threads=1)
    yield rt
    rt.close()
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def client(api):
    return openai.OpenAI(base_url=api[0] + "/v1", api_key="unused", max_retries=0, timeout=120)


def test_health_and_models(api, client):
    url, _ = api
    health = httpx.get(url + "/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]
    assert client.models.retrieve(MODEL_NAME).id == MODEL_NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("other-model")


def test_chat_completion_equals_runtime_and_counts_usage(client, reference):
    want = reference.complete(CHAT, SamplingParams(max_new_tokens=24, temperature=0))
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == want
    assert r.choices[0].finish_reason == "length"
    n_prompt = len(reference.encode_prompt(CHAT))
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (n_prompt, 24, n_prompt + 24)
    # max_completion_tokens is the newer name of the same budget
    r2 = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_completion_tokens=24, temperature=0)
    assert r2.choices[0].message.content == want


def test_chat_stream_arrives_in_pieces_with_usage(client):
    full = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=40, temperature=0)
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=40, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 5, "the answer must arrive in many pieces"
    assert "".join(texts) == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 40
    assert all(c.usage is None for c in chunks[:-1])


def test_completion_stream_and_not(client, reference):
    prompt = "Once upon a time"
    params = SamplingParams(max_new_tokens=30, temperature=0)
    want = reference.complete(reference.encode_prompt(prompt), params)
    r = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=30, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == want
    assert r.usage.prompt_tokens == len(reference.encode_prompt(prompt))
    pieces = [c.choices[0].text for c in client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=30,
                                                                     temperature=0, stream=True) if c.choices]
    assert len([p for p in pieces if p]) > 5 and "".join(pieces) == want
    # several prompts (text and token ids) in one request: one choice each, in order
    ids = reference.encode_prompt("The cat")
    r = client.completions.create(model=MODEL_NAME, prompt=[prompt, "The cat"], max_tokens=30, temperature=0)
    assert [c.text for c in r.choices] == [want, reference.complete(ids, params)]
    r = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=30, temperature=0)
    assert r.choices[0].text == reference.complete(ids, params)


def test_raw_sse_framing(api):
    url, _ = api
    body = {"model": MODEL_NAME, "messages": CHAT, "max_tokens": 8, "temperature": 0, "stream": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as resp:
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: {") for e in events[:-2])


def test_sampling_stop_seed_and_n(client, reference):
    params = SamplingParams(max_new_tokens=60, temperature=1.0, seed=11)
    sampled = reference.complete(CHAT, params)
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=60, temperature=1.0, seed=11)
    assert r.choices[0].message.content == sampled
    assert sampled != reference.complete(CHAT, SamplingParams(max_new_tokens=60, temperature=0))
    # a stop string taken from the middle of the sampled text cuts there
    stop = sampled[20:23]
    assert stop.strip() and stop in sampled
    cut = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=60, temperature=1.0, seed=11,
                                         stop=[stop])
    assert cut.choices[0].message.content == sampled[: sampled.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    # n choices: choice i samples with seed + i
    many = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=20, temperature=1.0, seed=11, n=3)
    texts = [c.message.content for c in many.choices]
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert texts == [reference.complete(CHAT, SamplingParams(max_new_tokens=20, temperature=1.0, seed=11 + i))
                     for i in range(3)]
    assert len(set(texts)) == 3
    assert many.usage.completion_tokens == 60


def test_logprobs_agree_with_runtime_scoring(client, reference):
    r = client.chat.completions.create(model=MODEL_NAME, messages=CHAT, max_tokens=12, temperature=0, logprobs=True,
                                       top_logprobs=3)
    items = r.choices[0].logprobs.content
    assert len(items) == 12 and "".join(t.token for t in items) == r.choices[0].message.content
    for t in items:  # greedy: the chosen token is the most likely one
        assert len(t.top_logprobs) == 3 and t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert sum(math.exp(a.logprob) for a in t.top_logprobs) <= 1.0 + 1e-6
    ctx = reference.encode_prompt(CHAT)
    out = reference.tokenizer.encode(r.choices[0].message.content, add_special_tokens=False)
    (total, greedy), = reference.loglikelihood([(ctx, out)])
    assert greedy and sum(t.logprob for t in items) == pytest.approx(total, abs=1e-3)
    # echo + logprobs + max_tokens 0: prompt log-probabilities (what lm-eval's local-completions scores with)
    text = "The quick brown fox jumps"
    ids = reference.encode_prompt(text)
    e = client.completions.create(model=MODEL_NAME, prompt=text, max_tokens=0, echo=True, logprobs=1, temperature=0)
    lp = e.choices[0].logprobs
    assert e.choices[0].text == text and lp.token_logprobs[0] is None and len(lp.tokens) == len(ids)
    (total, _), = reference.loglikelihood([(ids[:1], ids[1:])])
    assert sum(lp.token_logprobs[1:]) == pytest.approx(total, abs=1e-3)
    assert e.usage.completion_tokens == 0
