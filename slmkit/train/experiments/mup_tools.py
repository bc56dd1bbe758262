"""µP tooling: coordinate check and LR × width sweep at proxy scale (minutes on a CPU).

Both compare µP (the model's scale_emb / residual scale / dim_model_base, hidden LR ÷ m) with the
*standard parametrization*: the same model with scale_emb=1, no residual scale and
dim_model_base=d_model (m=1) at every width. Data are UTF-8 bytes (vocab 256), so no tokenizer or
prepared shards are needed and the vocabulary does not change with width: the coordinate check
reads the synthetic corpus, the sweep the shipped pretrain corpus ($SLMKIT_DATA/pretrain_corpus,
documents held out for validation); batches are fixed by the seed.
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


def corpus_bytes(max_bytes_per_file: int = 1_000_000, val_every: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) byte streams from the shipped pretrain corpus: the first documents of every
    file up to `max_bytes_per_file`, each `val_every`-th document held out for validation."""
    import gzip

    from slmkit.errors import SlmkitError
    from slmkit.paths import data_dir

    files = sorted((data_dir() / "pretrain_corpus").glob("*.jsonl.gz"))
    if not files:
        raise SlmkitError(f"{data_dir() / 'pretrain_corpus'}: no *.jsonl.gz files (the µP sweep reads them)")
    train, val = [], []
    for path in files:
        used = 0
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for i, line in enumerate(f):
                doc = (json.loads(line)["text"] + "\n\n").encode("utf-8")[:max_bytes_per_file // 4]
                (val if i % val_every == val_every - 1 else train).append(doc)
                used += len(doc)
                if used >= max_bytes_per_file:
                    break
    as_array = lambda docs: np.frombuffer(b"".join(docs), dtype=np.uint8).astype(np.int64)  # noqa: E731
    return as_array(train), as_array(val)


@torch.no_grad()
def _val_loss(model: Transformer, val: np.ndarray, batches: int, batch_size: int, seq_len: int) -> float:
    model.eval()
    losses = [float(F.cross_entropy(model(x[:, :-1]).reshape(-1, 256), x[:, 1:].reshape(-1)))
              for x in (batch(val, i, batch_size, seq_len, 4242) for i in range(batches))]
    model.train()
    return float(np.mean(losses))


def train_proxy(width: int, mup: bool, lr: float, steps: int, seed: int = 0, stream=None, batch_size: int = 8,
                seq_len: int = 64, n_layers: int = 4, val: np.ndarray | None = None, val_batches: int = 8) -> float:
    """Loss after a short WSD AdamW run (inf if it diverged): held-out loss when `val` is given (the
    same fixed batches for every run), else the mean of the last 5 training steps. `seed` sets both
    the initialisation and the batch order."""
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
    if val is None:
        return float(np.mean(tail))
    loss = _val_loss(model, val, val_batches, batch_size, seq_len)
    return loss if math.isfinite(loss) else float("inf")


def _seed_list(seeds, width: int) -> list[int]:
    if isinstance(seeds, int):
        return [seeds]
    if isinstance(seeds, dict):
        return list(seeds.get(width, [0]))
    return list(seeds)


def lr_sweep(out: Path, widths=(64, 256), lrs=(3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1), steps: int = 60,
             seed: int = 0, params=("mup", "sp"), seeds=None, data: str = "synthetic", n_layers: int = 4,
             batch_size: int = 8, seq_len: int = 64, refine: bool = False) -> dict:
    """Loss over LR × width for µP and SP → sweep.{json,md,png} and sweep_per_width.png.

    seeds: one list for every width, or {width: [seeds]} (e.g. 3 seeds at the two ends); losses are
    averaged over seeds and each width's best LR is the grid point with the lowest mean. refine: the
    first seed runs the whole grid, further seeds only its best LR ±1 grid step (the best is then
    taken among those, where every seed ran; far-off LRs keep one seed). data:
    'synthetic' (training loss of the synthetic corpus, seconds) or 'corpus' (held-out loss on the
    shipped pretrain corpus). Every finished run is appended to runs.jsonl, so a rerun continues.
    """
    from rich.progress import Progress

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = seed if seeds is None else seeds
    if data == "corpus":
        stream, val = corpus_bytes()
    else:
        stream, val = byte_stream(seed=seed), None
    done_file = out / "runs.jsonl"
    done = {}
    if done_file.exists():
        for line in done_file.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a torn last line from a killed run: recompute it
                continue
            done[(r["param"], r["width"], r["lr"], r["seed"], r["steps"], r["data"], r["n_layers"])] = r
    rows = []

    def one(log, param, width, lr, s) -> dict:
        key = (param, width, lr, s, steps, data, n_layers)
        if key not in done:
            loss = train_proxy(width, param == "mup", lr, steps, s, stream, batch_size, seq_len, n_layers, val)
            done[key] = {"param": param, "width": width, "lr": lr, "seed": s, "steps": steps, "data": data,
                         "n_layers": n_layers, "loss": loss}
            log.write(json.dumps(done[key]) + "\n")
            log.flush()
        rows.append(done[key])
        return done[key]

    total = sum(len(lrs) + (len(_seed_list(seeds, w)) - 1) * (min(3, len(lrs)) if refine else len(lrs))
                for w in widths) * len(params)
    with Progress(transient=True) as prog, open(done_file, "a", encoding="utf-8") as log:
        task = prog.add_task("µP sweep", total=total)
        for width in widths:  # narrow first: partial results already compare both parametrizations
            for param in params:
                first, *more = _seed_list(seeds, width)
                first_rows = [one(log, param, width, lr, first) for lr in lrs]
                prog.advance(task, len(lrs))
                near = lrs
                if refine:  # further seeds only around the first seed's optimum (±1 grid step)
                    b = int(np.argmin([r["loss"] for r in first_rows]))
                    near = lrs[max(0, b - 1):b + 2]
                for s in more:
                    for lr in near:
                        one(log, param, width, lr, s)
                    prog.advance(task, len(near))
    means = _mean_losses(rows, params, widths, lrs, complete_only=True)
    best = {p: {w: _best_lr(means, p, w, lrs) for w in widths} for p in params}
    shift = {p: math.log2(best[p][max(widths)] / best[p][min(widths)]) for p in params}
    grid_steps = {p: lrs.index(best[p][max(widths)]) - lrs.index(best[p][min(widths)]) for p in params}
    spread = {p: max(lrs.index(best[p][w]) for w in widths) - min(lrs.index(best[p][w]) for w in widths)
              for p in params}
    per_seed = {p: {w: {s: min((r for r in rows if r["param"] == p and r["width"] == w and r["seed"] == s),
                               key=lambda r: r["loss"])["lr"] for s in _seed_list(seeds, w)} for w in widths}
                for p in params}
    table = _sweep_table(means, widths, lrs, params, best, shift, grid_steps, spread)
    result = {"rows": rows, "mean_loss": {p: {str(w): {str(lr): means[p][w][lr] for lr in lrs} for w in widths}
                                          for p in params},
              "refine": refine, "first_seed_only": sorted([list(x) for x in means.get("_partial", set())]),
              "best_lr": best, "best_lr_per_seed": per_seed, "optimum_shift_log2": shift,
              "optimum_shift_grid_steps": grid_steps, "optimum_spread_grid_steps": spread, "steps": steps,
              "widths": list(widths), "lrs": list(lrs), "seeds": {w: _seed_list(seeds, w) for w in widths},
              "data": data, "n_layers": n_layers, "batch_size": batch_size, "seq_len": seq_len}
    atomic_write_json(out / "sweep.json", result)
    atomic_write_text(out / "sweep.md", table + "\n")
    _plot_sweep(means, rows, widths, lrs, params, best, out / "sweep.png", out / "sweep_per_width.png")
    return dict(result, out=str(out), table=table)


def _mean_losses(rows, params, widths, lrs, complete_only: bool = False) -> dict:
    """Mean loss per (param, width, lr) over seeds. complete_only: where some LRs of a width ran on
    more seeds than others, the best is chosen among the LRs with every seed (the others keep their
    first-seed value, marked by `_seeds_per_lr`)."""
    out: dict = {}
    for p in params:
        for w in widths:
            n_seeds = len({r["seed"] for r in rows if r["param"] == p and r["width"] == w})
            for lr in lrs:
                vals = [r["loss"] for r in rows if r["param"] == p and r["width"] == w and r["lr"] == lr]
                mean = float(np.mean(vals)) if vals else float("inf")
                if complete_only and len(vals) < n_seeds:  # kept for the table and plot, not for the argmin
                    out.setdefault("_partial", set()).add((p, w, lr))
                out.setdefault(p, {}).setdefault(w, {})[lr] = mean
    return out


def _best_lr(means: dict, param: str, width: int, lrs) -> float:
    partial = means.get("_partial", set())
    cand = [lr for lr in lrs if (param, width, lr) not in partial]
    return min(cand, key=lambda lr: means[param][width][lr])


def _sweep_table(means, widths, lrs, params, best, shift, grid_steps, spread) -> str:
    lines = ["| param | width | " + " | ".join(f"lr={lr:g}" for lr in lrs) + " | best lr |",
             "|---|---|" + "---|" * (len(lrs) + 1)]
    for param in params:
        for width in widths:
            vals = means[param][width]
            lines.append(f"| {param} | {width} | " + " | ".join(f"{vals[lr]:.3f}" for lr in lrs)
                         + f" | {best[param][width]:g} |")
    lines.append("")
    lines += [f"{p}: best lr moves {grid_steps[p]:+d} grid steps ({shift[p]:+.1f} octaves) from width {min(widths)} "
              f"to {max(widths)}; spread over all widths {spread[p]} grid steps" for p in params]
    return "\n".join(lines)


def _plot_sweep(means, rows, widths, lrs, params, best, path: Path, per_width_path: Path) -> None:
    """The µP-paper figure (loss vs LR, one curve per width, SP beside µP) and one panel per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cap = math.log(256) + 0.5  # a diverged run is drawn just above the uniform-prediction loss
    title = {"mup": "µP", "sp": "standard parametrization"}
    colors = {w: plt.cm.viridis(i / max(len(widths) - 1, 1)) for i, w in enumerate(widths)}
    fig, axes = plt.subplots(1, len(params), figsize=(5.5 * len(params), 4), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, param in zip(axes, params):
        for width in widths:
            ys = [min(means[param][width][lr], cap) for lr in lrs]
            ax.plot(lrs, ys, marker="o", color=colors[width], label=f"width {width}")
            b = lrs.index(best[param][width])
            ax.plot([lrs[b]], [ys[b]], marker="*", markersize=14, color=colors[width])
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(title.get(param, param))
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("held-out loss (nats/byte)" if rows and rows[0].get("data") == "corpus" else "final loss")
    lo = min(v for p in params for w in widths for v in means[p][w].values())
    axes[0].set_ylim(lo - 0.05, min(cap, lo + 1.5))
    save_fig(fig, path)

    fig, axes = plt.subplots(1, len(widths), figsize=(4 * len(widths), 3.6), sharey=True)
    axes = np.atleast_1d(axes)
    styles = {"mup": ("tab:blue", "µP"), "sp": ("tab:red", "SP")}
    for ax, width in zip(axes, widths):
        for param in params:
            color, label = styles.get(param, ("black", param))
            ys = [min(means[param][width][lr], cap) for lr in lrs]
            ax.plot(lrs, ys, marker="o", color=color, label=label)
            for seed in sorted({r["seed"] for r in rows if r["width"] == width and r["param"] == param}):
                pts = sorted((r["lr"], min(r["loss"], cap)) for r in rows
                             if r["width"] == width and r["param"] == param and r["seed"] == seed)
                ax.plot([x for x, _ in pts], [y for _, y in pts], color=color, alpha=0.25, linewidth=0.8)
            b = lrs.index(best[param][width])
            ax.plot([lrs[b]], [ys[b]], marker="*", markersize=14, color=color)
        ax.set_xscale("log")
        ax.set_title(f"width {width}")
        ax.set_xlabel("learning rate")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("loss (mean over seeds; thin: each seed)")
    axes[0].set_ylim(lo - 0.05, min(cap, lo + 1.5))
    save_fig(fig, per_width_path)
