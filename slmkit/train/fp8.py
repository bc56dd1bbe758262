"""FP8 training of the block Linear layers, in the Transformer Engine "hybrid" format.

Forward operands (activations and weights) are cast to E4M3, gradients flowing back to E5M2, each
with a per-tensor scale from its amax (dynamic, or delayed over an amax history as TE does).

Backends:
- `emulate` (CPU default): a custom autograd Linear that really casts to torch.float8_e4m3fn /
  float8_e5m2 and multiplies the dequantized values in fp32. torchao's float8 path does run on this
  CPU, but ~60x slower than fp32 (its scaled matmul has no fast CPU kernel), so we emulate here.
- `torchao` (CUDA default): torchao.float8.convert_to_float8_training (tensorwise dynamic scaling).
- `te`: Transformer Engine Linear + fp8_autocast(DelayedScaling(HYBRID)), GPU only, if installed.
Embeddings, norms and the output projection stay in fp32; layers with a dim below `min_dim` too.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.errors import SlmkitError

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2
FP8_MAX = {E4M3: torch.finfo(E4M3).max, E5M2: torch.finfo(E5M2).max}


class AmaxScaler:
    """Per-tensor scale = fp8_max / amax; amax is the current one (history 1) or the max of the last
    `history` steps' amaxes (delayed scaling: the current amax is recorded after use)."""

    def __init__(self, history: int = 1) -> None:
        self.history = history
        self.buf = torch.zeros(history)
        self.count = 0

    def scale(self, t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        amax = t.detach().abs().amax().float()
        if self.history > 1:
            if self.buf.device != amax.device:
                self.buf = self.buf.to(amax.device)
            use = amax if self.count == 0 else self.buf.amax()
            self.buf = torch.roll(self.buf, 1)
            self.buf[0] = amax
            self.count += 1
        else:
            use = amax
        return FP8_MAX[dtype] / use.clamp(min=1e-12)

    def state_dict(self) -> dict:
        return {"buf": self.buf.cpu().clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.buf, self.count = state["buf"].clone(), int(state["count"])


def quantize(t: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Scale, saturate to the format's range, cast to fp8."""
    m = FP8_MAX[dtype]
    return (t.float() * scale).clamp(-m, m).to(dtype)


class _Fp8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, mod):
        sx = mod.scalers["input"].scale(x, E4M3)
        sw = mod.scalers["weight"].scale(weight, E4M3)
        xq, wq = quantize(x, sx, E4M3), quantize(weight, sw, E4M3)
        ctx.save_for_backward(xq, wq, sx, sw)
        ctx.mod, ctx.w_dtype = mod, weight.dtype
        if mod.record:
            mod.recorded.update(input=xq, weight=wq, input_scale=sx, weight_scale=sw)
        return F.linear(xq.float() / sx, wq.float() / sw).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        xq, wq, sx, sw = ctx.saved_tensors
        mod = ctx.mod
        sg = mod.scalers["grad"].scale(grad_out, E5M2)
        gq = quantize(grad_out, sg, E5M2)
        if mod.record:
            mod.recorded.update(grad_output=gq, grad_scale=sg)
        g = gq.float() / sg
        x, w = xq.float() / sx, wq.float() / sw
        grad_x = (g @ w).to(grad_out.dtype)
        grad_w = g.reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])
        return grad_x, grad_w.to(ctx.w_dtype), None


class Fp8Linear(nn.Linear):
    """nn.Linear (same `weight`, so checkpoints are unchanged) with emulated FP8 matmuls."""

    def __init__(self, in_features: int, out_features: int, amax_history: int = 1) -> None:
        super().__init__(in_features, out_features, bias=False, device="meta")
        self.scalers = {k: AmaxScaler(amax_history) for k in ("input", "weight", "grad")}
        self.record = False  # tests: keep the last quantized operands in `recorded`
        self.recorded: dict = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Fp8LinearFn.apply(x, self.weight, self)


def _targets(model: nn.Module, min_dim: int):
    for name, mod in model.named_modules():
        if (type(mod) is nn.Linear and name.startswith("layers.") and mod.bias is None
                and min(mod.in_features, mod.out_features) >= min_dim):
            yield name, mod


def _swap(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def resolve_backend(backend: str, device: torch.device) -> str:
    if backend == "auto":
        return "torchao" if device.type == "cuda" else "emulate"
    if backend == "te" and device.type != "cuda":
        raise SlmkitError(f"fp8.backend='{backend}' needs a CUDA GPU")
    return backend


def convert(model: nn.Module, cfg: dict, device: torch.device) -> tuple[str, list[str]]:
    """Swap eligible block Linears for FP8 ones in place; returns (backend, converted names)."""
    f = cfg["fp8"]
    backend = resolve_backend(f["backend"], device)
    names = [n for n, _ in _targets(model, int(f["min_dim"]))]
    if not names:
        return backend, []
    if backend == "emulate":
        for name in names:
            old = model.get_submodule(name)
            new = Fp8Linear(old.in_features, old.out_features, int(f["amax_history"]))
            new.weight = old.weight
            _swap(model, name, new)
    elif backend == "torchao":
        try:
            from torchao.float8 import Float8LinearConfig, convert_to_float8_training
        except ImportError:
            raise SlmkitError("fp8.backend='torchao' but torchao is not installed (pip install 'slmkit[fp8]')") from None
        wanted = set(names)
        convert_to_float8_training(model, config=Float8LinearConfig(), module_filter_fn=lambda m, n: n in wanted)
    elif backend == "te":
        try:
            import transformer_engine.pytorch as te
        except ImportError:
            raise SlmkitError("fp8.backend='te' but transformer_engine is not installed") from None
        for name in names:
            old = model.get_submodule(name)
            new = te.Linear(old.in_features, old.out_features, bias=False, device=old.weight.device)
            with torch.no_grad():
                new.weight.copy_(old.weight)
            _swap(model, name, new)
    return backend, names


def autocast(backend: str, amax_history: int = 128):
    """Context for the forward pass (only TE needs one)."""
    if backend != "te":
        return contextlib.nullcontext()
    import transformer_engine.pytorch as te
    from transformer_engine.common.recipe import DelayedScaling, Format

    return te.fp8_autocast(enabled=True, fp8_recipe=DelayedScaling(fp8_format=Format.HYBRID,
                                                                  amax_history_len=amax_history))


def scaler_state(model: nn.Module) -> dict:
    return {n: {k: s.state_dict() for k, s in m.scalers.items()} for n, m in model.named_modules()
            if isinstance(m, Fp8Linear)}


def load_scaler_state(model: nn.Module, state: dict) -> None:
    for n, m in model.named_modules():
        if isinstance(m, Fp8Linear) and n in state:
            for k, s in m.scalers.items():
                s.load_state_dict(state[n][k])
