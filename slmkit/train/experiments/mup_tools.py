"""µP tooling: coordinate check and LR × width sweep at proxy scale (minutes on a CPU).

Both compare µP (the model's scale_emb / residual scale / dim_model_base, hidden LR ÷ m) with the
*standard parametrization*: the same model with scale_emb=1, no residual scale and
dim_model_base=d_model (m=1) at every width. Data are the synthetic corpus as UTF-8 bytes (vocab
256), so no tokenizer or prepared shards are needed; batches are fixed by the seed.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slmkit.model.config import ModelConfig
from slmkit.model.mup import param_groups
from slmkit.model.transformer import Transformer
from slmkit.paths import atomic_write_json, atomic_write_text
from slmkit.train.metrics import save_fig
from slmkit.train.schedule import Schedule

BASE_WIDTH = 128
HEAD_DIM = 32


def model_config(width: int, mup: bool, n_layers: int = 4, base: int = BASE_WIDTH) -> ModelConfig:
    cfg = dict(vocab_size=256, d_model=width, n_layers=n_layers, n_heads=max(1, width // HEAD_DIM),
               n_kv_heads=max(1, width // HEAD_DIM), d_ff=int(width * 2.5) // 8 * 8, max_seq_len=256,
               init_std=0.1, scale_output=1.0)
    if mup:
        cfg.update(scale_emb=12.0, scale_depth=1.4, dim_model_base=base)
    else:
        cfg.update(scale_emb=1.0, scale_depth=None, dim_model_base=None)
    return ModelConfig.from_dict(cfg, source=f"mup tool width={width}")


def byte_stream(n_docs: int = 3000, seed: int = 0) -> np.ndarray:
    from slmkit.corpus.synthetic import training_texts

    return np.frombuffer("\n\n".join(training_texts(n_docs, seed)).encode("utf-8"), dtype=np.uint8).astype(np.int64)


def batch(stream: np.ndarray, step: int, batch_size: int, seq_len: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(stream) - seq_len - 1, size=batch_size)
    return torch.from_numpy(np.stack([stream[s:s + seq_len + 1] for s in starts]))


def _optimizer(model: Transformer, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(param_groups(model, lr, 0.0), lr=lr, betas=(0.9, 0.95), eps=1e-8)


def coord_check(out: Path, widths=(64, 128, 256, 512), steps: int = 5, lr: float = 1e-2, seed: int = 0,
                batch_size: int = 8, seq_len: int = 64) -> dict:
    """RMS of each layer's output at steps 0..steps, per width, µP vs SP → coord_check.{json,png}."""
    out = Path(out)
    stream = byte_stream(seed=seed)
    records = []
    for mup in (True, False):
        for width in widths:
            torch.manual_seed(seed)
            model = Transformer(model_config(width, mup))
            opt = _optimizer(model, lr)
            acts: dict[str, torch.Tensor] = {}
            hooks = [model.embed_tokens.register_forward_hook(
                lambda m, i, o: acts.__setitem__("embedding", o * model.cfg.scale_emb))]
            for idx, block in enumerate(model.layers):
                hooks.append(block.register_forward_hook(lambda m, i, o, idx=idx: acts.__setitem__(f"layer{idx}", o)))
            for step in range(steps + 1):
                x = batch(stream, step, batch_size, seq_len, seed)
                logits = model(x[:, :-1])
                acts["logits"] = logits
                loss = F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1))
                for name, a in acts.items():
                    records.append({"param": "mup" if mup else "sp", "width": width, "step": step, "layer": name,
                                    "rms": float(a.detach().pow(2).mean().sqrt())})
                if step < steps:
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
            for h in hooks:
                h.remove()
    summary = _coord_summary(records, widths, steps)
    atomic_write_json(out / "coord_check.json", {"widths": list(widths), "steps": steps, "lr": lr,
                                                 "summary": summary, "records": records})
    _plot_coord(records, widths, steps, out / "coord_check.png")
    return {"out": str(out), "plot": str(out / "coord_check.png"), "summary": summary, "records": records}


def _coord_summary(records, widths, steps) -> dict:
    """Growth of the last step's RMS from the narrowest to the widest model, per layer (µP ≈ 1)."""
    out: dict = {}
    for param in ("mup", "sp"):
        for layer in sorted({r["layer"] for r in records}):
            by_w = {r["width"]: r["rms"] for r in records if r["param"] == param and r["layer"] == layer
                    and r["step"] == steps}
            out.setdefault(param, {})[layer] = by_w[max(widths)] / max(by_w[min(widths)], 1e-12)
    return out


def _plot_coord(records, widths, steps, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = ["embedding"] + sorted({r["layer"] for r in records if r["layer"].startswith("layer")}) + ["logits"]
    fig, axes = plt.subplots(2, len(layers), figsize=(3 * len(layers), 6), sharex=True)
    for row, param in enumerate(("mup", "sp")):
        for col, layer in enumerate(layers):
            ax = axes[row][col]
            for step in range(steps + 1):
                ys = [next(r["rms"] for r in records if r["param"] == param and r["layer"] == layer
                           and r["width"] == w and r["step"] == step) for w in widths]
                ax.plot(widths, ys, marker="o", label=f"step {step}", color=plt.cm.viridis(step / max(steps, 1)))
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{'µP' if param == 'mup' else 'SP'}: {layer}", fontsize=9)
            if row == 1:
                ax.set_xlabel("width")
            if col == 0:
                ax.set_ylabel("activation RMS")
    axes[0][-1].legend(fontsize=7)
    save_fig(fig, path)


def train_proxy(width: int, mup: bool, lr: float, steps: int, seed: int = 0, stream=None, batch_size: int = 8,
                seq_len: int = 64, n_layers: int = 4) -> float:
    """Final loss (mean of the last 5 steps; inf if it diverged) of a short WSD AdamW run."""
    stream = byte_stream(seed=seed) if stream is None else stream
    torch.manual_seed(seed)
    model = Transformer(model_config(width, mup, n_layers))
    opt = _optimizer(model, lr)
    sched = Schedule("wsd", lr, steps, warmup=max(1, steps // 10), decay=max(1, steps // 5))
    tail = []
    for step in range(steps):
        x = batch(stream, step, batch_size, seq_len, seed)
        loss = F.cross_entropy(model(x[:, :-1]).reshape(-1, 256), x[:, 1:].reshape(-1))
        if not torch.isfinite(loss):
            return float("inf")
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        for g in opt.param_groups:
            g["lr"] = sched.lr_at(step) * g["lr_scale"]
        opt.step()
        if step >= steps - 5:
            tail.append(loss.item())
    return float(np.mean(tail))


def lr_sweep(out: Path, widths=(64, 256), lrs=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), steps: int = 60,
             seed: int = 0, params=("mup", "sp")) -> dict:
    """Final loss over LR × width for µP and SP → sweep.{json,md,png}; where each width's optimum sits."""
    from rich.progress import Progress

    out = Path(out)
    stream = byte_stream(seed=seed)
    rows = []
    with Progress(transient=True) as prog:
        task = prog.add_task("µP sweep", total=len(params) * len(widths) * len(lrs))
        for param in params:
            for width in widths:
                for lr in lrs:
                    loss = train_proxy(width, param == "mup", lr, steps, seed, stream)
                    rows.append({"param": param, "width": width, "lr": lr, "loss": loss})
                    prog.advance(task)
    best = {}
    for param in params:
        for width in widths:
            cand = [r for r in rows if r["param"] == param and r["width"] == width]
            b = min(cand, key=lambda r: r["loss"])
            best.setdefault(param, {})[width] = b["lr"]
    shift = {p: math.log2(best[p][max(widths)] / best[p][min(widths)]) for p in params}
    table = _sweep_table(rows, widths, lrs, params, best, shift)
    atomic_write_json(out / "sweep.json", {"rows": rows, "best_lr": best, "optimum_shift_log2": shift,
                                           "steps": steps, "widths": list(widths), "lrs": list(lrs)})
    atomic_write_text(out / "sweep.md", table + "\n")
    _plot_sweep(rows, widths, params, out / "sweep.png")
    return {"out": str(out), "rows": rows, "best_lr": best, "optimum_shift_log2": shift, "table": table}


def _sweep_table(rows, widths, lrs, params, best, shift) -> str:
    lines = ["| param | width | " + " | ".join(f"lr={lr:g}" for lr in lrs) + " | best lr |",
             "|---|---|" + "---|" * (len(lrs) + 1)]
    for param in params:
        for width in widths:
            vals = {r["lr"]: r["loss"] for r in rows if r["param"] == param and r["width"] == width}
            lines.append(f"| {param} | {width} | " + " | ".join(f"{vals[lr]:.3f}" for lr in lrs)
                         + f" | {best[param][width]:g} |")
    lines.append("")
    lines += [f"{p}: optimum moves {shift[p]:+.1f} octaves (log2) from width {min(widths)} to {max(widths)}"
              for p in params]
    return "\n".join(lines)


def _plot_sweep(rows, widths, params, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(5 * len(params), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, param in zip(axes, params):
        for width in widths:
            pts = sorted((r["lr"], r["loss"]) for r in rows if r["param"] == param and r["width"] == width)
            ax.plot([p[0] for p in pts], [min(p[1], 10) for p in pts], marker="o", label=f"width {width}")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title("µP" if param == "mup" else "standard parametrization")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("final loss")
    save_fig(fig, path)


def dump(obj) -> str:
    return json.dumps(obj, indent=2)
