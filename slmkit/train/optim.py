"""Optimizers: µP AdamW, and the AdamW→Muon hand-over of hidden matrices at the first decay step.

Ownership is explicit: `owners[param_name]` is "adamw" or "muon". It is saved in the checkpoint and
`build` recreates exactly the optimizers (and parameter order) that own the state being loaded, so a
resume before, at or after the switch continues bit-exactly.

µP and Muon: with adjust_lr_fn="match_rms_adamw" Muon scales each update to RMS ≈ 0.2·lr, the size
of a typical AdamW update, so Muon behaves like AdamW for per-element step size. We therefore keep
the µP hidden-matrix scale (lr × 1/m) on Muon as well (`optimizer.muon.mup_lr_scale: true`); that
is also what lets the stable-phase AdamW LR carry over unchanged at the switch.

torch.optim.Muon runs Newton–Schulz in bfloat16, which this CPU executes ~100x slower than fp32;
`ns_dtype` (auto: fp32 on CPU, bf16 on CUDA) swaps in a float32 iteration on CPU.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from slmkit.model.mup import param_groups

NS_COEFFS = (3.4445, -4.775, 2.0315)


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients, ns_steps: int, eps: float) -> torch.Tensor:
    """Quintic Newton–Schulz orthogonalisation (same iteration as torch's Muon) in float32."""
    a, b, c = ns_coefficients
    x = grad.float()
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(ns_steps):
        g = x @ x.T
        x = a * x + (b * g + c * (g @ g)) @ x
    return x.T if tall else x


@contextmanager
def _ns_dtype(dtype: str):
    if dtype != "fp32":
        yield
        return
    import torch.optim._muon as muon_mod

    original = muon_mod._zeropower_via_newtonschulz
    muon_mod._zeropower_via_newtonschulz = newton_schulz_fp32
    try:
        yield
    finally:
        muon_mod._zeropower_via_newtonschulz = original


class Muon(torch.optim.Muon):
    """torch.optim.Muon with a selectable Newton–Schulz dtype (see module docstring)."""

    def __init__(self, params, ns_dtype: str = "bf16", **kwargs) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        with _ns_dtype(self.ns_dtype):
            return super().step(closure)


def is_muon_candidate(name: str, param: torch.Tensor) -> bool:
    """Hidden 2-D matrices inside the blocks; embeddings, norms and an untied lm_head stay on AdamW."""
    return param.ndim == 2 and name.startswith("layers.")


def initial_owners(model: torch.nn.Module) -> dict[str, str]:
    return {name: "adamw" for name, p in model.named_parameters() if p.requires_grad}


def switched_owners(model: torch.nn.Module) -> dict[str, str]:
    return {name: ("muon" if is_muon_candidate(name, p) else "adamw")
            for name, p in model.named_parameters() if p.requires_grad}


def _fused(cfg: dict, device: torch.device) -> bool | None:
    value = cfg["optimizer"].get("fused", "auto")
    if value == "auto":
        return True if device.type in ("cpu", "cuda") else None
    return bool(value)


def build(model: torch.nn.Module, cfg: dict, owners: dict[str, str], device: torch.device) -> dict[str, torch.optim.Optimizer]:
    """Optimizers for the given ownership: {'adamw': AdamW[, 'muon': Muon]} with `lr_scale` per group."""
    o = cfg["optimizer"]
    lr, wd = float(cfg["schedule"]["lr"]), float(o["weight_decay"])
    adam_groups, muon_params, muon_names = [], [], []
    for group in param_groups(model, lr, wd):
        keep = [(p, n) for p, n in zip(group["params"], group["param_names"]) if owners.get(n) == "adamw"]
        moved = [(p, n) for p, n in zip(group["params"], group["param_names"]) if owners.get(n) == "muon"]
        if keep:
            adam_groups.append(dict(group, params=[p for p, _ in keep], param_names=[n for _, n in keep]))
        for p, n in moved:
            muon_params.append(p)
            muon_names.append(n)
    opts: dict[str, torch.optim.Optimizer] = {}
    if adam_groups:
        opts["adamw"] = torch.optim.AdamW(adam_groups, lr=lr, betas=tuple(o["betas"]), eps=float(o["eps"]),
                                          weight_decay=wd, fused=_fused(cfg, device))
    if muon_params:
        m = o["muon"]
        scale = (1.0 / model.cfg.width_mult) if m.get("mup_lr_scale", True) else 1.0
        ns = m.get("ns_dtype", "auto")
        if ns == "auto":
            ns = "bf16" if device.type == "cuda" else "fp32"
        group = dict(params=muon_params, param_names=muon_names, kind="hidden", lr=lr * scale, lr_scale=scale,
                     weight_decay=wd)
        opts["muon"] = Muon([group], lr=lr * scale, weight_decay=wd, momentum=float(m["momentum"]),
                            nesterov=bool(m["nesterov"]), ns_steps=int(m["ns_steps"]),
                            adjust_lr_fn=m["adjust_lr_fn"], ns_dtype=ns)
    return opts


def switch_to_muon(model: torch.nn.Module, cfg: dict, opts: dict, device: torch.device):
    """Hand hidden matrices to a fresh Muon; AdamW keeps its state for everything else."""
    owners = switched_owners(model)
    new = build(model, cfg, owners, device)
    old = opts["adamw"]
    for group in new["adamw"].param_groups:
        for p in group["params"]:
            if p in old.state:
                new["adamw"].state[p] = old.state[p]
    return new, owners


def set_lr(opts: dict, base_lr: float) -> None:
    for opt in opts.values():
        for group in opt.param_groups:
            group["lr"] = base_lr * group.get("lr_scale", 1.0)


def zero_grad(opts: dict) -> None:
    for opt in opts.values():
        opt.zero_grad(set_to_none=True)
