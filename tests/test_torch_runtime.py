"""TorchRuntime: fast decode == native forward, greedy == Transformer.generate, loglikelihood fast == naive."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.model.checkpoint import save_checkpoint
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import KVCache, RowCache, Segment, Transformer
from slmkit.serve.base import Runtime, SamplingParams
from slmkit.serve.torch_backend import TorchRuntime

ODD = dict(vocab_size=1000, d_model=96, n_heads=6, n_kv_heads=2, n_layers=3, d_ff=200, max_seq_len=96,
           scale_emb=7.0, scale_depth=1.3, dim_model_base=32, rope_theta=5000.0, scale_output=1.7)


def random_model(seed=0, **fields) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("fields", [ODD, dict(vocab_size=300, d_model=64, n_heads=4, n_kv_heads=4, n_layers=2,
                                               d_ff=96, tie_embeddings=False, head_dim=24, scale_depth_attn=0.5)])
def test_fast_decode_step_matches_native_forward(fields):
    model = random_model(0, **fields)
    rt = TorchRuntime.from_model(model)
    ids = np.random.default_rng(1).integers(0, fields["vocab_size"], 30).tolist()
    full = rt.logits(ids)
    cache = KVCache(model.cfg, 1, 40)
    with torch.no_grad():
        model(torch.tensor([ids[:12]]), cache=cache)  # prefill without the fused weights
        rows = np.stack([rt._decode_step(torch.tensor(t), cache).numpy() for t in ids[12:]])
    assert cache.length == 30
    assert np.abs(rows - full[12:]).max() / np.abs(full).max() < 1e-5


def test_generate_ids_greedy_sampling_and_budget():
    model = random_model(0, **ODD)
    rt = TorchRuntime.from_model(model)
    prompt = [5, 17, 99, 3]
    assert list(rt.generate_ids(prompt, SamplingParams(max_new_tokens=30))) == list(model.generate(prompt, 30))
    p = SamplingParams(max_new_tokens=15, temperature=1.0, top_k=20, top_p=0.8, seed=3)
    a, b = list(rt.generate_ids(prompt, p)), list(rt.generate_ids(prompt, p))
    assert a == b and len(a) == 15
    assert a != list(rt.generate_ids(prompt, SamplingParams(max_new_tokens=15, temperature=1.0, seed=4)))
    top1 = SamplingParams(max_new_tokens=10, temperature=0.7, top_k=1, seed=9)
    assert list(rt.generate_ids(prompt, top1)) == list(rt.generate_ids(prompt, SamplingParams(max_new_tokens=10)))
    # never past max_seq_len (96): 90-token prompt leaves 6
    assert len(list(rt.generate_ids(list(range(90)), SamplingParams(max_new_tokens=50)))) == 6
    seq = list(model.generate(prompt, 10))
    model.cfg.eos_token_id = seq[-1]  # generation stops at (and includes) its first occurrence
    out = list(TorchRuntime.from_model(model).generate_ids(prompt, SamplingParams(max_new_tokens=30)))
    assert out == seq[: seq.index(seq[-1]) + 1]


def test_row_cache_decode_matches_native_forward_per_row():
    """Rows of different lengths decode in one packed forward: each row's logits equal its own forward."""
    model = random_model(0, **ODD)
    rt = TorchRuntime.from_model(model)
    rng = np.random.default_rng(2)
    seqs = [rng.integers(0, 1000, n).tolist() for n in (14, 6, 10)]
    new = 4
    prompts = [s[:-new] for s in seqs]
    cache = RowCache(model.cfg, 3, 20)
    with torch.no_grad():
        for b, ids in enumerate(prompts):
            model(torch.tensor([ids]), cache=cache.step([Segment(b, 0, len(ids))]))
        for step in range(new):
            toks = torch.tensor([[s[len(p) + step] for s, p in zip(seqs, prompts)]])
            segs = [Segment(b, len(p) + step, 1) for b, p in enumerate(prompts)]
            got = model(toks, cache=cache.step(segs), fused=rt.fused)[0].numpy()
            for b, s in enumerate(seqs):
                full = rt.logits(s[:len(prompts[b]) + step + 1])[-1]
                assert np.abs(got[b] - full).max() / np.abs(full).max() < 1e-5, (b, step)


def test_generate_batch_equals_one_prompt_at_a_time():
    model = random_model(3, **ODD)
    rt = TorchRuntime.from_model(model)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, 1000, n).tolist() for n in (3, 25, 11, 1, 40)]
    greedy = SamplingParams(max_new_tokens=20)
    ref = [list(rt.generate_ids(p, greedy)) for p in prompts]
    assert len({tuple(r) for r in ref}) == len(prompts)  # each row has its own continuation
    assert rt.generate_batch(prompts, 20) == ref
    # a stop rule ends rows early (rows leave the batch at different steps); the others are unchanged
    stop_at = {0: 4, 2: 9}
    got = rt.generate_batch(prompts, 20, lambda row, ids: len(ids) >= stop_at.get(row, 99))
    assert got == [r[:stop_at.get(i, 20)] for i, r in enumerate(ref)]
    # prompts sharing a few-shot-like prefix (>= MIN_PREFIX_REUSE tokens) prefill it once; same tokens
    shared = rng.integers(0, 1000, 66).tolist()
    fewshot = [shared + rng.integers(0, 1000, n).tolist() for n in (2, 9, 1)] + [prompts[1]]
    assert rt.generate_batch(fewshot, 12) == [list(rt.generate_ids(p, SamplingParams(max_new_tokens=12))) for p in fewshot]
    # the context window caps each row's budget as generate_ids does (max_seq_len 96): 90 tokens leave 6
    long = [list(range(90)), [1, 2, 3]]
    got = rt.generate_batch(long, 50)
    assert got == [list(rt.generate_ids(p, SamplingParams(max_new_tokens=50))) for p in long]
    assert len(got[0]) == 6 and len(got[1]) > 6


def test_loglikelihood_fast_path_equals_naive():
    rt = TorchRuntime.from_model(random_model(2, **ODD))
    ctx_a, ctx_b = [1, 2, 3, 4, 5, 6, 7], [9, 8]
    reqs = [(ctx_a, [10, 11, 12]), (ctx_b, [1]), (ctx_a, [13]), (ctx_a, [14, 15, 16, 17, 18, 19]),
            (ctx_b, [5, 5]), (ctx_a, [10, 11, 12])]
    fast = rt.loglikelihood(reqs, batch_size=2)
    naive = Runtime.loglikelihood(rt, reqs)
    for (f, fg), (n, ng) in zip(fast, naive):
        assert f == pytest.approx(n, rel=1e-5, abs=1e-5) and fg == ng
    # a continuation that is the greedy one is flagged as such
    greedy = list(rt.generate_ids(ctx_a, SamplingParams(max_new_tokens=3)))
    assert rt.loglikelihood([(ctx_a, greedy)])[0][1] is True


def test_loglikelihood_prefix_reuse_equals_naive():
    """Contexts sharing a long few-shot prefix reuse its KV cache (cropped, not recomputed); scores unchanged."""
    rt = TorchRuntime.from_model(random_model(5, **ODD))
    rng = np.random.default_rng(6)
    shared = rng.integers(0, 1000, 70).tolist()  # longer than MIN_PREFIX_REUSE
    reqs = [(shared + rng.integers(0, 1000, n).tolist(), rng.integers(0, 1000, m).tolist())
            for n, m in ((3, 1), (9, 4), (1, 2), (5, 1))]
    reqs += [(reqs[1][0], [7, 8, 9]), (shared[:10], [4]), ([], [3, 2]), (shared, [])]
    seen = []
    fast = rt.loglikelihood(reqs, batch_size=3, progress=seen.append)
    naive = Runtime.loglikelihood(rt, reqs[:-2]) + [Runtime.loglikelihood(rt, [([rt.start_id()], [3, 2])])[0], (0.0, True)]
    for (f, fg), (n, ng) in zip(fast, naive):
        assert f == pytest.approx(n, rel=1e-5, abs=1e-4) and fg == ng
    assert sum(seen) == len(reqs)


def test_load_checkpoint_path_with_tokenizer(tmp_path, tiny_tokenizer_dir):
    from slmkit.serve import load

    save_checkpoint(tmp_path / "ck", random_model(0, **ODD), tokenizer_dir=tiny_tokenizer_dir)
    rt = load(tmp_path / "ck")
    assert isinstance(rt, TorchRuntime) and rt.tokenizer is not None
    # a runtime that owns its model shares the fused q|k|v buffer instead of copying it
    q = rt.model.layers[0].self_attn.q_proj.weight
    assert q.untyped_storage().data_ptr() == rt.fused.layers[0][1].untyped_storage().data_ptr()
    assert list(rt.generate_ids([1, 2, 3], SamplingParams(max_new_tokens=12))) == list(rt.model.generate([1, 2, 3], 12))
    text = rt.complete("1 + 1 =", SamplingParams(max_new_tokens=8))
    assert isinstance(text, str)
    assert len(rt.score("1 + 1 =", " 2")) >= 1
    with pytest.raises(SlmkitError):
        TorchRuntime(tmp_path / "missing")
    with pytest.raises(SlmkitError, match="dtype"):
        TorchRuntime(tmp_path / "ck", dtype="float8")
