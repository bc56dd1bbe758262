"""The engine on torch: every request's greedy (and seeded) output equals running it alone through the
runtime's single-stream decoder, whatever the arrival order, batch size, step budget, prefix-cache state,
stop strings or cancellations of the others; scoring equals a plain full forward."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.model.config import ModelConfig
from slmkit.model.tokenizer import load_tokenizer
from slmkit.model.transformer import Transformer
from slmkit.serve.base import Runtime, SamplingParams, TextStream
from slmkit.serve.engine import Request
from slmkit.serve.torch_backend import TorchRuntime


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: tiny kernels on a loaded 2-core machine otherwise wait on each other."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def rt(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=len(tok), d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=128, max_seq_len=160,
                      scale_emb=4.0, scale_depth=1.4, dim_model_base=32, eos_token_id=tok.eos_token_id)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(4.0)  # peaked logits: random tiny models are otherwise near-uniform
    runtime = TorchRuntime.from_model(model, tokenizer=tok)
    yield runtime
    runtime.close()


def alone(rt, req: Request, cancel_at: int | None = None):
    """(token ids, text, finish_reason) of one request through generate_ids + TextStream, no engine."""
    p = req.params
    stream = TextStream(rt.tokenizer, list(req.stop) + list(p.stop))
    budget = max(0, min(p.max_new_tokens, rt.cfg.max_seq_len - len(req.prompt_ids)))
    ids, reason = [], "length"
    for tid in (rt.generate_ids(req.prompt_ids, p) if budget else []):
        ids.append(tid)
        stream.push(tid)
        if tid in rt.eos_ids:
            reason = "eos"
            break
        if stream.stopped:
            reason = "stop"
            break
        if cancel_at is not None and len(ids) == cancel_at:
            reason = "cancelled"
            break
    stream.finish()
    return ids, stream.text, reason


def random_workload(rt, seed: int, n: int = 40):
    """Prompts of 1..60 tokens, a third extending an earlier prompt (trajectories, shared few-shot prefixes),
    greedy and seeded sampling, stop strings that occur in the reference text, some cancelled mid-way."""
    rng = random.Random(seed)
    vocab = rt.cfg.vocab_size
    prompts: list[list[int]] = []
    work = []
    for i in range(n):
        if prompts and rng.random() < 0.35:
            base = rng.choice(prompts)
            prompt = base[:rng.randint(1, len(base))] + [rng.randrange(3, vocab) for _ in range(rng.randint(0, 20))]
        else:
            prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 60))]
        prompts.append(prompt)
        sampled = rng.random() < 0.3
        params = SamplingParams(max_new_tokens=rng.randint(1, 40), temperature=0.9 if sampled else 0.0,
                                top_k=rng.choice([0, 20]), top_p=rng.choice([1.0, 0.9]), seed=rng.randrange(1000))
        req = Request(prompt, params)
        ids, text, _ = alone(rt, req)
        if text and rng.random() < 0.4:  # a stop string from the middle of what it would say
            a = rng.randrange(len(text))
            req.stop = [text[a:a + rng.randint(1, 4)]]
        cancel_at = rng.randint(1, len(ids)) if ids and rng.random() < 0.15 else None
        work.append((req, cancel_at))
    return work


def submit_all(engine, work, rng):
    """Submit in a random order from two threads with random pauses; return handles in work order."""
    handles = [None] * len(work)
    order = list(range(len(work)))
    rng.shuffle(order)

    def cancel_after(n, box):
        seen = [0]

        def on_token(_tid, _piece):
            seen[0] += 1
            if seen[0] == n:
                box[0].cancel()
        return on_token

    def feed(part):
        for i in part:
            req, cancel_at = work[i]
            box = [None]
            if cancel_at is not None:
                req = Request(req.prompt_ids, req.params, req.stop, on_token=cancel_after(cancel_at, box))
            box[0] = handles[i] = engine.submit(req)
            if rng.random() < 0.3:
                threading.Event().wait(rng.random() * 0.01)

    threads = [threading.Thread(target=feed, args=(order[k::2],)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return handles


@pytest.mark.parametrize("seed,options", [
    (1, dict(max_batch=1, max_step_tokens=64, prefix_cache_mb=0)),
    (2, dict(max_batch=3, max_step_tokens=5, prefix_cache_mb=64, block_tokens=4)),
    (3, dict(max_batch=8, max_step_tokens=40, prefix_cache_mb=0.02, block_tokens=8)),  # tiny cache: evictions
    (4, dict(max_batch=16, max_step_tokens=512, prefix_cache_mb=64, block_tokens=16)),
])
def test_engine_output_equals_each_request_alone(rt, seed, options):
    work = random_workload(rt, seed=seed)
    refs = [alone(rt, req, cancel_at) for req, cancel_at in work]
    engine = type(rt.engine()).for_runtime(rt, **options)
    try:
        for rounds in range(2):  # the second round meets a warm prefix cache
            handles = submit_all(engine, work, random.Random(rounds))
            for (req, cancel_at), h, (ids, text, reason) in zip(work, handles, refs):
                res = h.result(timeout=120)
                if reason == "cancelled":  # the cancel lands after the token that asked for it
                    assert res.finish_reason in ("cancelled", "eos", "stop", "length") and res.token_ids == ids
                else:
                    assert (res.token_ids, res.text, res.finish_reason) == (ids, text, reason), (req, cancel_at)
                assert res.prompt_tokens == len(req.prompt_ids)
        stats = engine.stats()
        assert stats["finished"] == 2 * len(work) and stats["active"] == 0
        if options["prefix_cache_mb"] >= 1:
            assert stats["prefix_cache"]["hit_tokens"] > 0 and stats["cached_tokens"] > 0
    finally:
        engine.close()


def test_streaming_callbacks_and_results(rt):
    engine = rt.engine()
    prompt = rt.tokenizer.encode("Tom has 12 apples", add_special_tokens=False)
    params = SamplingParams(max_new_tokens=30)
    seen = []
    h = engine.submit(Request(prompt, params, on_token=lambda tid, piece: seen.append((tid, piece))))
    pieces = list(h)
    res = h.result()
    assert "".join(pieces) == res.text == rt.complete(prompt, params)
    assert [t for t, _ in seen] == res.token_ids
    assert "".join(pieces).startswith("".join(p for _, p in seen))  # the rest comes with the final flush
    assert res.first_token_s > 0 and res.total_s >= res.first_token_s
    # on_token returning True ends the request as a stop
    res = engine.submit(Request(prompt, params, on_token=lambda tid, piece: len(seen) > 0)).result()
    assert res.finish_reason == "stop" and len(res.token_ids) == 1
    # a prompt that fills the window gets no tokens; an empty prompt starts from BOS/EOS like generate_ids
    assert engine.submit(Request(list(range(3, 163)), params)).result().finish_reason == "length"
    assert engine.submit(Request([], params)).result().token_ids == list(rt.generate_ids([], params))
    # generate_many keeps order and reports progress
    order = []
    many = engine.generate_many([Request(prompt[:k], SamplingParams(max_new_tokens=5)) for k in (1, 3, 5)],
                                progress=lambda i, r: order.append(i))
    assert sorted(order) == [0, 1, 2]
    assert [r.token_ids for r in many] == [list(rt.generate_ids(prompt[:k], SamplingParams(max_new_tokens=5))) for k in (1, 3, 5)]
    # a failing callback fails its own request only
    bad = engine.submit(Request(prompt, params, on_token=lambda *_: 1 / 0))
    good = engine.submit(Request(prompt, params))
    with pytest.raises(ZeroDivisionError):
        bad.result()
    assert good.result().text == rt.complete(prompt, params)


def test_growing_trajectory_reuses_its_prefix(rt):
    """An agent-style episode: each prompt is the last prompt + its output + an observation; the engine
    serves the old part from the prefix cache and gives the tokens of prefilling from scratch."""
    engine = type(rt.engine()).for_runtime(rt, block_tokens=8)
    try:
        rng = np.random.default_rng(7)
        traj = rng.integers(3, rt.cfg.vocab_size, 30).tolist()
        cached = []
        for _turn in range(4):
            res = engine.submit(Request(traj, SamplingParams(max_new_tokens=12))).result()
            assert res.token_ids == list(rt.generate_ids(traj, SamplingParams(max_new_tokens=12)))
            cached.append(res.cached_tokens)
            traj = traj + res.token_ids + rng.integers(3, rt.cfg.vocab_size, 5).tolist()
        assert cached[0] == 0 and all(c >= 24 for c in cached[1:]), cached
        assert engine.stats()["prefix_cache"]["hit_rate"] > 0.5
    finally:
        engine.close()


def test_shared_fewshot_prefix_is_computed_once(rt):
    """Prompts sharing a long prefix, submitted together: the first computes it, the rest wait one step and
    find it cached (prefill tokens ~ one prefix + the distinct tails)."""
    engine = type(rt.engine()).for_runtime(rt, max_batch=8, max_step_tokens=512, block_tokens=16)
    try:
        rng = np.random.default_rng(8)
        shared = rng.integers(3, rt.cfg.vocab_size, 96).tolist()
        prompts = [shared + rng.integers(3, rt.cfg.vocab_size, 5).tolist() for _ in range(8)]
        results = engine.generate_many([Request(p, SamplingParams(max_new_tokens=4)) for p in prompts])
        assert [r.token_ids for r in results] == [list(rt.generate_ids(p, SamplingParams(max_new_tokens=4))) for p in prompts]
        stats = engine.stats()
        assert stats["prefill_tokens"] == 101 + 7 * 5, stats
        assert [r.cached_tokens for r in results] == [0] + [96] * 7
    finally:
        engine.close()


def test_loglikelihood_equals_full_forward(rt):
    rng = np.random.default_rng(9)
    V = rt.cfg.vocab_size
    shared = rng.integers(3, V, 50).tolist()
    reqs = []
    for _ in range(30):
        ctx = (shared[:rng.integers(1, 50)] if rng.random() < 0.5 else []) + rng.integers(3, V, rng.integers(1, 30)).tolist()
        for _ in range(rng.integers(1, 5)):
            reqs.append((ctx, rng.integers(3, V, rng.integers(1, 12)).tolist()))
    reqs.append(([], [5, 6]))
    reqs.append(([7, 8], []))
    greedy = list(rt.generate_ids(shared, SamplingParams(max_new_tokens=4)))
    reqs.append((shared, greedy))
    naive = Runtime.loglikelihood(rt, [(c or [rt.start_id()], t) for c, t in reqs[:-2]]) + [(0.0, True)] \
        + Runtime.loglikelihood(rt, [reqs[-1]])
    for options in (dict(max_step_tokens=8, max_batch=2), dict(max_step_tokens=512, max_batch=32)):
        engine = type(rt.engine()).for_runtime(rt, **options)
        try:
            seen = []
            got = engine.loglikelihood(reqs, progress=seen.append)
            assert sum(seen) == len(reqs)
            for (a, ga), (b, gb) in zip(got, naive):
                assert a == pytest.approx(b, rel=1e-5, abs=1e-4) and ga == gb
            assert got[-1][1] is True
        finally:
            engine.close()
    with pytest.raises(SlmkitError, match="window"):
        rt.engine().loglikelihood([(list(range(3, 150)), list(range(3, 40)))])


def test_engine_options_and_close(rt):
    from slmkit.serve.engine import Engine

    with pytest.raises(SlmkitError, match="unknown"):
        Engine.for_runtime(rt, max_batchh=3)
    with pytest.raises(SlmkitError, match="positive"):
        Engine.for_runtime(rt, max_batch=0)
    engine = Engine.for_runtime(rt, max_batch=2)
    assert rt.engine(max_batch=2) is rt.engine(max_batch=2)
    engine.close()
    with pytest.raises(SlmkitError, match="closed"):
        engine.submit(Request([1, 2], SamplingParams()))
