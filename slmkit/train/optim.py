"""Optimizers: µP AdamW, and the AdamW→Muon hand-over of hidden matrices at the first decay step.

Ownership is explicit: `owners[param_name]` is "adamw" or "muon". It is saved in the checkpoint and
`build` recreates exactly the optimizers (and parameter order) that own the state being loaded, so a
resume before, at or after the switch continues bit-exactly.

µP and Muon: with adjust_lr_fn="match_rms_adamw" Muon scales each update to RMS ≈ 0.2·lr, the size
of a typical AdamW update, so Muon behaves like AdamW for per-element step size. We therefore keep
the µP hidden-matrix scale (lr × 1/m) on Muon as well (`optimizer.muon.mup_lr_scale: true`); that
is also what lets the stable-phase AdamW LR carry over unchanged at the switch.

Our `Muon` is a torch.optim.Optimizer with torch.optim.Muon's update rule and its state layout
(`momentum_buffer`), plus a choice of Newton–Schulz dtype: torch 2.13's Muon takes no custom
Newton–Schulz function and always iterates in bfloat16, which this CPU runs ~100x slower than
fp32, so `ns_dtype` (auto: fp32 on CPU, bf16 on CUDA) picks the dtype. In bf16 it is the same
arithmetic as torch's (tests compare the two step by step).

Skipping a non-finite step without a host sync: fused AdamW reads a `found_inf` tensor (the
protocol torch's GradScaler uses) and leaves parameters, moments and step counts untouched when it
is 1; our Muon honours the same attribute. `step(opts, finite)` uses that where every optimizer can,
else it reads the flag once (one sync).
"""

from __future__ import annotations

import math

import torch

from slmkit.model.mup import param_groups

NS_COEFFS = (3.4445, -4.775, 2.0315)
NS_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def newton_schulz(grad: torch.Tensor, ns_coefficients=NS_COEFFS, ns_steps: int = 5, eps: float = 1e-7,
                  dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Quintic Newton–Schulz orthogonalisation of a 2-D matrix, iterated in `dtype` (never in place on
    the input: with nesterov=False the input is the momentum buffer itself)."""
    a, b, c = ns_coefficients
    x = grad.to(dtype)
    tall = grad.size(0) > grad.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(ns_steps):
        gram = x @ x.T
        update = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        x = torch.addmm(x, update, x, beta=a)
    return x.T if tall else x


def newton_schulz_fp32(grad: torch.Tensor, ns_coefficients=NS_COEFFS, ns_steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    return newton_schulz(grad, ns_coefficients, ns_steps, eps, torch.float32)


def adjusted_lr(lr: float, adjust_lr_fn: str | None, shape) -> float:
    """Muon's per-matrix LR: 'original' √max(1, A/B) (Keller Jordan), 'match_rms_adamw' 0.2·√max(A, B)
    (Moonshot), as torch.optim.Muon defines them."""
    rows, cols = shape[:2]
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return lr * math.sqrt(max(1, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    raise ValueError(f"adjust_lr_fn={adjust_lr_fn!r} (use 'original' or 'match_rms_adamw')")


class Muon(torch.optim.Optimizer):
    """Muon for 2-D hidden matrices: EMA momentum (optionally Nesterov), Newton–Schulz orthogonalised
    update, decoupled weight decay, per-shape LR adjustment; Newton–Schulz in `ns_dtype`."""

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients=NS_COEFFS, eps: float = 1e-7, ns_steps: int = 5,
                 adjust_lr_fn: str | None = None, ns_dtype: str = "bf16") -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr={lr}, momentum={momentum}, weight_decay={weight_decay} must be >= 0")
        if adjust_lr_fn not in (None, "original", "match_rms_adamw"):
            raise ValueError(f"Muon: adjust_lr_fn={adjust_lr_fn!r} (use 'original' or 'match_rms_adamw')")
        if ns_dtype not in NS_DTYPES:
            raise ValueError(f"Muon: ns_dtype={ns_dtype!r} (use {', '.join(NS_DTYPES)})")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=tuple(ns_coefficients), eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon: only 2-D parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        skip = getattr(self, "found_inf", None)  # tensor: 1 = leave everything as it is (no host sync)
        skip = None if skip is None else skip.bool()
        dtype = NS_DTYPES[self.ns_dtype]
        for group in self.param_groups:
            lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                new_buf = buf.lerp(grad, 1 - mu)
                update = grad.lerp(new_buf, mu) if group["nesterov"] else new_buf
                update = newton_schulz(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                new_p = p * (1 - lr * wd)
                new_p.add_(update, alpha=-adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
                if skip is not None:
                    new_buf = torch.where(skip, buf, new_buf)
                    new_p = torch.where(skip, p, new_p)
                buf.copy_(new_buf)
                p.copy_(new_p)
        return loss


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


def skips_without_sync(opt: torch.optim.Optimizer) -> bool:
    """Whether `opt.step()` honours a `found_inf` tensor (fused AdamW, our Muon)."""
    if isinstance(opt, Muon):
        return True
    return isinstance(opt, torch.optim.AdamW) and all(g.get("fused") for g in opt.param_groups)


def step(opts: dict, finite: torch.Tensor, sync_free: bool) -> None:
    """One optimizer step for every optimizer, or none of them when `finite` is False.

    sync_free: pass the flag to the optimizers as `found_inf` (no host sync); else read it here."""
    if sync_free:
        found_inf = (~finite).float()
        for opt in opts.values():
            opt.found_inf = found_inf
            opt.step()
        return
    if bool(finite):
        for opt in opts.values():
            opt.step()


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
