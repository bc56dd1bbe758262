"""The engine on llama.cpp (an f32 GGUF, f32 KV cache): every request gives what it gives alone — greedy
equal to llama.cpp's own single-sequence loop, seeded sampling equal to a one-row engine — whatever the
arrival order, batch size, step budget, prefix-cache state, stops and cancellations."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import llama_cpp  # noqa: E402,F401  (a core dependency: missing fails, not skips)
import gguf  # noqa: E402,F401  (a core dependency: missing fails, not skips)

from test_engine import alone, random_workload, submit_all  # noqa: E402

from slmkit.export.gguf import write_gguf  # noqa: E402
from slmkit.model.config import ModelConfig  # noqa: E402
from slmkit.model.tokenizer import load_tokenizer  # noqa: E402
from slmkit.model.transformer import Transformer  # noqa: E402
from slmkit.serve.base import SamplingParams  # noqa: E402
from slmkit.serve.engine import Engine, Request  # noqa: E402
from slmkit.serve.llamacpp_backend import LlamaCppRuntime  # noqa: E402


@pytest.fixture(scope="module")
def rt(tmp_path_factory, tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tok), d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=128, max_seq_len=160,
                      scale_emb=4.0, scale_depth=1.4, dim_model_base=32, eos_token_id=tok.eos_token_id)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)
    path = write_gguf(model, tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", tiny_tokenizer_dir, dtype="f32")
    runtime = LlamaCppRuntime(path, n_ctx=160, f32_kv=True, tokenizer=tok)
    runtime.cfg = cfg  # the workload helpers read the window and vocabulary from here
    runtime.gguf_path = path
    yield runtime
    runtime.close()


def one_row_reference(rt, work):
    engine = Engine.for_runtime(rt, max_batch=1, prefix_cache_mb=0)
    try:
        out = []
        for req, _ in work:
            res = engine.submit(req).result(timeout=120)
            out.append((res.token_ids, res.text, res.finish_reason))
        return out
    finally:
        engine.close()


@pytest.mark.parametrize("seed,options", [
    (5, dict(max_batch=4, max_step_tokens=7, prefix_cache_mb=64, block_tokens=4)),
    (6, dict(max_batch=16, max_step_tokens=256, prefix_cache_mb=0.05, block_tokens=8)),
])
def test_llamacpp_engine_output_equals_each_request_alone(rt, seed, options):
    work = random_workload(rt, seed=seed, n=30)
    refs = one_row_reference(rt, work)
    for (req, _), ref in zip(work, refs):
        if req.params.temperature <= 0:  # greedy: the same as llama.cpp's own loop
            assert ref == alone(rt, req), req
    engine = Engine.for_runtime(rt, **options)
    try:
        for rounds in range(2):
            handles = submit_all(engine, work, random.Random(rounds))
            for (req, cancel_at), h, ref in zip(work, handles, refs):
                res = h.result(timeout=120)
                if cancel_at is not None:
                    assert res.token_ids == ref[0][:cancel_at]
                else:
                    assert (res.token_ids, res.text, res.finish_reason) == ref, req
        assert engine.stats()["finished"] == 2 * len(work)
        if options["prefix_cache_mb"] >= 1:
            assert engine.stats()["prefix_cache"]["hit_tokens"] > 0
    finally:
        engine.close()


def test_llamacpp_trajectory_and_context_growth(rt):
    """A growing trajectory restores its saved state; a request longer than the streams hold waits for the
    running ones and gets a rebuilt, larger context; generate_ids still works beside the engine."""
    wide = LlamaCppRuntime(rt.gguf_path, n_ctx=600, f32_kv=True, tokenizer=rt.tokenizer)
    engine = Engine.for_runtime(wide, max_batch=2, block_tokens=8)
    try:
        rng = np.random.default_rng(3)
        traj = rng.integers(3, 500, 20).tolist()
        res = engine.submit(Request(traj, SamplingParams(max_new_tokens=6))).result()
        assert engine.stats()["kv_cells_per_stream"] == 256
        traj2 = traj + res.token_ids + [7, 8, 9]
        res2 = engine.submit(Request(traj2, SamplingParams(max_new_tokens=6))).result()
        assert res2.cached_tokens >= 20
        assert res2.token_ids == list(wide.generate_ids(traj2, SamplingParams(max_new_tokens=6)))
        long = rng.integers(3, 500, 400).tolist()
        short = engine.submit(Request(traj, SamplingParams(max_new_tokens=8)))
        big = engine.submit(Request(long, SamplingParams(max_new_tokens=9)))
        assert big.result().token_ids == list(wide.generate_ids(long, SamplingParams(max_new_tokens=9)))
        assert short.result().token_ids == list(wide.generate_ids(traj, SamplingParams(max_new_tokens=8)))
        assert engine.stats()["kv_cells_per_stream"] == 512
    finally:
        engine.close()
        wide.close()


def test_llamacpp_engine_scoring_equals_full_logits(rt):
    """Contexts packed per decode call, continuations in spare streams after a copy of their context."""
    from slmkit.serve.base import Runtime

    rng = np.random.default_rng(11)
    shared = rng.integers(3, 500, 40).tolist()
    reqs = []
    for _ in range(12):
        ctx = (shared[:rng.integers(1, 40)] if rng.random() < 0.5 else []) + rng.integers(3, 500, rng.integers(1, 20)).tolist()
        reqs += [(ctx, rng.integers(3, 500, rng.integers(1, 9)).tolist()) for _ in range(rng.integers(1, 12))]
    naive = Runtime.loglikelihood(rt, reqs)
    for options in (dict(max_batch=3, max_step_tokens=6), dict(max_batch=16, max_step_tokens=256)):
        engine = Engine.for_runtime(rt, **options)
        try:
            got = engine.loglikelihood(reqs)
        finally:
            engine.close()
        for (a, ga), (b, gb) in zip(got, naive):
            assert a == pytest.approx(b, abs=2e-3) and ga == gb
