"""The `remote` runtime against our own OpenAI-compatible server on 127.0.0.1: generation (text, chat, ids,
streaming, the engine on top) equals the model run locally, and scoring from the server's prompt
log-probabilities equals the local runtime's own KV-cached loglikelihood."""

from __future__ import annotations

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.model.tokenizer import load_tokenizer
from slmkit.serve import SamplingParams, load
from slmkit.serve.remote_backend import RemoteRuntime
from test_app_support import MODEL_NAME, running_api, tiny_model_dir  # noqa: F401

CHAT = [{"role": "user", "content": "Tell me a story"}]


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    with running_api(tiny_model_dir, parallel=2, max_queue=16) as (url, service):
        yield url


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    old = torch.get_num_threads()
    rt = load(tiny_model_dir, threads=1)
    yield rt
    rt.close()
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def remote(server, tiny_model_dir):
    return RemoteRuntime(server + "/v1", tokenizer=load_tokenizer(tiny_model_dir))


def test_connects_and_finds_the_model(remote, server):
    assert remote.model == MODEL_NAME and remote.n_ctx == 2048 and remote.name == "remote"
    assert RemoteRuntime(server).url == server + "/v1"  # the /v1 suffix is added
    with pytest.raises(SlmkitError, match="not served"):
        RemoteRuntime(server, model="gpt-4o")
    with pytest.raises(SlmkitError, match="no OpenAI-compatible server"):
        RemoteRuntime("http://127.0.0.1:9/v1")
    with pytest.raises(SlmkitError, match="server URL"):
        RemoteRuntime("/some/model.gguf")


def test_generation_equals_the_local_model(remote, local):
    greedy = SamplingParams(max_new_tokens=40)
    assert remote.complete("Once upon a time", greedy) == local.complete("Once upon a time", greedy)
    assert remote.complete(CHAT, greedy) == local.complete(CHAT, greedy)  # the server's chat template
    sampled = SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, top_k=50)
    assert remote.complete(CHAT, sampled) == local.complete(CHAT, sampled)
    pieces = list(remote.generate(CHAT, SamplingParams(max_new_tokens=40)))
    assert len(pieces) > 5 and "".join(pieces) == local.complete(CHAT, greedy)
    text = local.complete(CHAT, SamplingParams(max_new_tokens=40, temperature=1.0, seed=5))
    stop = text[12:15]
    assert remote.complete(CHAT, SamplingParams(max_new_tokens=40, temperature=1.0, seed=5, stop=[stop])) == \
        text[: text.index(stop)]


def test_generate_ids_and_the_engine_on_top(remote, local):
    ids = local.encode_prompt(CHAT)
    params = SamplingParams(max_new_tokens=30)
    got = list(remote.generate_ids(ids, params))
    want = list(local.generate_ids(ids, params))
    tok = local.tokenizer
    assert tok.decode(got, skip_special_tokens=True) == tok.decode(want, skip_special_tokens=True)
    from slmkit.serve.engine import Request

    res = remote.engine().generate_many([Request(ids, params)])[0]
    assert res.text == local.complete(ids, params)


def test_loglikelihood_equals_local_scoring(remote, local):
    tok = local.tokenizer
    pairs = [(tok.encode(c, add_special_tokens=False), tok.encode(x, add_special_tokens=False))
             for c, x in [("The cat sat on the", " mat"), ("Two plus two is", " four"), ("Hello", " world again")]]
    ctx = local.encode_prompt(CHAT)
    pairs.append((ctx, list(local.generate_ids(ctx, SamplingParams(max_new_tokens=6)))))  # greedy by construction
    got, want = remote.loglikelihood(pairs), local.loglikelihood(pairs)
    for (g, gg), (w, wg) in zip(got, want):
        assert g == pytest.approx(w, abs=1e-3) and gg == wg
    assert got[-1][1] is True
    # text: the server tokenizes context + continuation together and the continuation's tokens are scored
    by_text = remote.score("The cat sat on the", " mat")
    assert sum(by_text) == pytest.approx(got[0][0], abs=1e-3)
    assert remote.score_mode == "echo"


def test_what_the_api_cannot_give(remote, server):
    with pytest.raises(SlmkitError, match="full logits"):
        remote.logits([1, 2, 3])
    bare = RemoteRuntime(server)  # no local tokenizer: text works, token-level calls say what they need
    assert bare.complete("Once upon a time", SamplingParams(max_new_tokens=5))
    with pytest.raises(SlmkitError, match="tokenizer=DIR"):
        list(bare.generate_ids([5, 6, 7], SamplingParams(max_new_tokens=3)))
