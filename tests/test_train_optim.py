"""Our Muon against torch.optim.Muon (bit-exact in bf16, within bf16 error in fp32) and the
sync-free skip of non-finite steps in fused AdamW and Muon."""

from __future__ import annotations

import pytest
import torch

from slmkit.train import optim


def _problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(24, 16), (16, 40), (32, 32)]
    params = [torch.randn(s, generator=g) for s in shapes]
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(6)]
    return params, grads


def _run(make_opt, params, grads):
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = make_opt(ps)
    for step_grads in grads:
        for p, g in zip(ps, step_grads):
            p.grad = g.clone()
        opt.step()
    return ps, opt


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
def test_muon_bf16_equals_torch_muon_bit_for_bit(nesterov, adjust):
    params, grads = _problem()
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov, adjust_lr_fn=adjust)
    ours, o1 = _run(lambda ps: optim.Muon(ps, ns_dtype="bf16", **kw), params, grads)
    ref, o2 = _run(lambda ps: torch.optim.Muon(ps, **kw), params, grads)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
        assert torch.equal(o1.state[a]["momentum_buffer"], o2.state[b]["momentum_buffer"])
    # same state layout: a torch Muon state dict loads into ours (old checkpoints keep working)
    fresh = optim.Muon([torch.nn.Parameter(p.clone()) for p in params], ns_dtype="fp32", **kw)
    fresh.load_state_dict(o2.state_dict())


@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_fp32_matches_torch_muon_within_bf16_error(nesterov):
    params, grads = _problem(1)
    kw = dict(lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn="match_rms_adamw")
    ours, _ = _run(lambda ps: optim.Muon(ps, ns_dtype="fp32", **kw), params, grads)
    ref, _ = _run(lambda ps: torch.optim.Muon(ps, **kw), params, grads)
    for a, b, p0 in zip(ours, ref, params):
        moved = (b.detach() - p0).norm()
        assert moved > 0.05
        assert ((a - b).norm() / moved) < 0.03  # bf16 has 8 mantissa bits; fp32 iterates without that error
        assert not torch.equal(a, b)  # it really ran in fp32


def test_newton_schulz_orthogonalises_in_float64():
    g = torch.randn(48, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = optim.newton_schulz(g, dtype=torch.float64)
    assert x.shape == g.shape and x.dtype == torch.float64
    sv = torch.linalg.svdvals(x)
    assert sv.min() > 0.5 and sv.max() < 1.5  # the quintic maps every singular value near 1
    u, _, vh = torch.linalg.svd(g, full_matrices=False)
    assert torch.nn.functional.cosine_similarity((u @ vh).flatten(), x.flatten(), dim=0) > 0.95
    fp32 = optim.newton_schulz(g.float())
    assert torch.allclose(fp32.double(), x, atol=1e-4)


def _adamw(ps):
    return torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1, fused=True)


@pytest.mark.parametrize("make", [_adamw, lambda ps: optim.Muon(ps, lr=0.02, ns_dtype="fp32")], ids=["adamw", "muon"])
def test_found_inf_skips_a_step_and_otherwise_changes_nothing(make):
    params, grads = _problem(2)
    # reference: two plain steps
    ref, _ = _run(make, params, grads[:2])
    # the same two steps with a poisoned (skipped) step in between, through optim.step
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = make(ps)
    assert optim.skips_without_sync(opt)
    for i, step_grads in enumerate([grads[0], None, grads[1]]):
        for p, g in zip(ps, step_grads or grads[0]):
            p.grad = torch.full_like(p, float("nan")) if step_grads is None else g.clone()
        finite = torch.tensor(step_grads is not None)
        optim.step({"x": opt}, finite, sync_free=True)
    for a, b in zip(ps, ref):
        assert torch.equal(a, b)
    if isinstance(opt, torch.optim.AdamW):
        assert all(float(opt.state[p]["step"]) == 2 for p in ps)


def test_unfused_adamw_falls_back_to_a_checked_step():
    params, grads = _problem(3)
    ps = [torch.nn.Parameter(p.clone()) for p in params]
    opt = torch.optim.AdamW(ps, lr=0.01, foreach=False)
    assert not optim.skips_without_sync(opt)
    for p in ps:
        p.grad = torch.full_like(p, float("inf"))
    optim.step({"x": opt}, torch.tensor(False), sync_free=False)
    assert all(torch.equal(a, b) for a, b in zip(ps, params)) and not opt.state
