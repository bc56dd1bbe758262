"""The one forward over a RowCache (the engine's cache): a packed step that mixes decode rows, prefill chunks
on top of cached prefixes and read-only scoring continuations gives every token the logits of a plain full
forward over its own sequence; fused inference weights change nothing and never reach training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slmkit.model.config import ModelConfig
from slmkit.model.transformer import KVCache, RowCache, Segment, Transformer

ODD = dict(vocab_size=1000, d_model=96, n_heads=6, n_kv_heads=2, n_layers=3, d_ff=200, max_seq_len=128,
           scale_emb=7.0, scale_depth=1.3, dim_model_base=32, rope_theta=5000.0, scale_output=1.7)


def random_model(seed=0, **fields) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**fields)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def full_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0]


def rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("fields", [ODD, dict(ODD, n_kv_heads=6, tie_embeddings=False, head_dim=20)])
@pytest.mark.parametrize("use_fused", [False, True])
def test_mixed_packed_step_equals_full_forward(fields, use_fused):
    model = random_model(1, **fields)
    fused = model.fuse(share=False) if use_fused else None
    rng = np.random.default_rng(0)
    seq = {r: rng.integers(0, 1000, n).tolist() for r, n in {0: 30, 1: 12, 2: 41, 3: 25, 5: 17}.items()}
    cache = RowCache(model.cfg, 6, 64)
    with torch.no_grad():
        # rows 0, 1, 3 hold their prompts minus the last token; row 2 holds 20 tokens of its 41; row 5 none yet
        for r, have in ((0, 29), (1, 11), (3, 24), (2, 20)):
            model(torch.tensor([seq[r][:have]]), cache=cache.step([Segment(r, 0, have)]), fused=fused)
        # one packed step: decode rows 0, 1, 3 (non-contiguous span: row 2 sits between), row 2's next chunk,
        # row 5's first chunk, and three children of row 3 (continuations after its 25 tokens)
        kids = [rng.integers(0, 1000, n).tolist() for n in (4, 1, 7)]
        segs = [Segment(0, 29, 1), Segment(1, 11, 1), Segment(3, 24, 1), Segment(2, 20, 21), Segment(5, 0, 17)]
        segs += [Segment(3, 25, len(k), store=False) for k in kids]
        ids = [seq[0][29], seq[1][11], seq[3][24]] + seq[2][20:] + seq[5] + [t for k in kids for t in k]
        got = model(torch.tensor([ids]), cache=cache.step(segs), fused=fused)[0]
    at = 0
    for s in segs:
        own = ids[at:at + s.n]
        if s.store:
            assert own == seq[s.row][s.start:s.start + s.n]
        ref = full_logits(model, seq[s.row][:s.start] + own)[s.start:]
        assert rel(got[at:at + s.n], ref) < 1e-5, s
        at += s.n
    # children kept nothing: row 3 still decodes as if they never ran
    with torch.no_grad():
        nxt = model(torch.tensor([[7]]), cache=cache.step([Segment(3, 25, 1)]), fused=fused)[0, -1]
    assert rel(nxt, full_logits(model, seq[3] + [7])[-1]) < 1e-5


def test_row_cache_grow_and_copy_row_keep_contents():
    model = random_model(2, **ODD)
    ids = np.random.default_rng(3).integers(0, 1000, 40).tolist()
    cache = RowCache(model.cfg, 2, 16)
    with torch.no_grad():
        model(torch.tensor([ids[:16]]), cache=cache.step([Segment(0, 0, 16)]))
        cache.grow(48)
        cache.copy_row(0, 1, 10)  # row 1 borrows the first 10 positions of row 0 (a shared prefix)
        a = model(torch.tensor([ids[16:]]), cache=cache.step([Segment(0, 16, 24)]))[0]
        b = model(torch.tensor([ids[10:]]), cache=cache.step([Segment(1, 10, 30)]))[0]
    ref = full_logits(model, ids)
    assert rel(a, ref[16:]) < 1e-5 and rel(b, ref[10:]) < 1e-5
    with pytest.raises(ValueError, match="overflow"):
        cache.step([Segment(0, 40, 9)])


def test_fused_weights_are_views_and_never_reach_training():
    model = random_model(3, **ODD)
    ids = torch.randint(0, 1000, (2, 9))
    with torch.no_grad():
        ref = model(ids)
    fused = model.fuse(share=True)
    q = model.layers[1].self_attn.q_proj.weight
    assert q.untyped_storage().data_ptr() == fused.layers[1][1].untyped_storage().data_ptr()
    assert "wqkv" not in str(list(model.state_dict()))
    with torch.no_grad():
        cache = KVCache(model.cfg, 2, 9)
        assert rel(model(ids, cache=cache, fused=fused), ref) < 1e-5
    # with autograd recording the fused weights are ignored: gradients reach the separate matrices
    loss = model(ids, fused=fused).logsumexp(-1).mean()
    loss.backward()
    assert q.grad is not None and float(q.grad.abs().sum()) > 0
    # an in-place update of a parameter (an optimizer step) is seen by the shared fused matrix
    with torch.no_grad():
        q.add_(0.01)
        cache = KVCache(model.cfg, 2, 9)
        assert rel(model(ids, cache=cache, fused=fused), model(ids)) < 1e-5
