"""Fidelity experiments (`slmkit repro ...`): small CPU-sized versions of the Xmodel-2.5 recipe checks.

- wsd-vs-cosine: same model, data and tokens; WSD (1-sqrt decay) vs cosine.
- muon-decay:    one stable phase, then the decay phase branched from its `stable-end` checkpoint
                 twice on the same batches: AdamW throughout vs AdamW→Muon.
- fp8:           fp32 vs emulated FP8 (E4M3 fwd / E5M2 grad) on the same run.
- mup-transfer:  LR × width sweep (4× width) for µP vs standard parametrization.
Each writes results.json, results.md (table) and a PNG into its folder. Validation loss is measured
on batches from a synthetic stream with a seed the training sources never use.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from slmkit.paths import atomic_write_json, atomic_write_text
from slmkit.train.metrics import read_metrics, save_fig


def _base(root: Path, quick: bool) -> dict:
    from slmkit.train.testing import tiny_tokenizer

    tok = tiny_tokenizer(root.parent / "_tokenizer", vocab_size=512, docs=3000)
    if quick:
        model = {"preset": "nano", "vocab_size": "auto", "d_model": 32, "n_layers": 2, "n_heads": 2,
                 "n_kv_heads": 1, "d_ff": 64, "max_seq_len": 128, "dim_model_base": 16}
        train = {"steps": 16, "batch_size": 4, "seq_len": 32}
    else:
        model = {"preset": "nano", "vocab_size": "auto", "d_model": 96, "n_layers": 3, "n_heads": 3,
                 "n_kv_heads": 1, "d_ff": 256, "max_seq_len": 128, "dim_model_base": 96}
        train = {"steps": 240, "batch_size": 8, "seq_len": 128}
    return {
        "name": "repro", "seed": 0, "model": model, "tokenizer": {"path": str(tok)},
        "data": {"sources": {"syn": {"type": "synthetic", "docs": 20000, "seed": 0},
                             "sft": {"type": "synthetic", "docs": 5000, "seed": 1}},
                 "mix": {"stable": {"syn": 1.0}}, "cache_dir": str(root.parent / "_data"), "align": "doc"},
        "train": dict(train, precision="fp32", threads="auto"),
        "schedule": {"type": "wsd", "lr": 0.003, "warmup": 0.05, "decay": 0.25, "decay_shape": "1-sqrt"},
        "optimizer": {"stable": "adamw", "decay": "adamw"},
        "checkpoint": {"every": 0, "keep_last": 1, "milestones": ["stable-end"]},
        "log": {"every": 20, "tensorboard": False, "plots": True, "progress": False},
        "eval": {"synthetic_heldout": 0},
    }


def _merge(cfg: dict, **changes) -> dict:
    import copy

    out = copy.deepcopy(cfg)
    for key, value in changes.items():
        node = out
        parts = key.split("__")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


@torch.no_grad()
def val_loss(checkpoint: str | Path, tokenizer_dir: str | Path, seq_len: int, n_batches: int = 8,
             batch_size: int = 8) -> float:
    """Mean next-token loss on held-out synthetic text (seed 4242, never a training seed here)."""
    from slmkit.corpus.synthetic import training_texts
    from slmkit.model.checkpoint import load_checkpoint
    from slmkit.model.tokenizer import load_tokenizer

    model, _ = load_checkpoint(checkpoint)
    tok = load_tokenizer(tokenizer_dir)
    ids: list[int] = []
    for text in training_texts(600, 4242):
        ids += tok.encode(text, add_special_tokens=False) + [tok.eos_token_id]
    arr = np.asarray(ids, dtype=np.int64)
    rng = np.random.default_rng(0)
    losses = []
    for _ in range(n_batches):
        starts = rng.integers(0, len(arr) - seq_len - 1, size=batch_size)
        x = torch.from_numpy(np.stack([arr[s:s + seq_len + 1] for s in starts]))
        logits = model(x[:, :-1])
        losses.append(float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))))
    return float(np.mean(losses))


def _run(cfg: dict, out: Path, **kw) -> dict:
    from slmkit.train.api import train

    res = train(cfg, out, **kw)
    res["val_loss"] = val_loss(res["checkpoint"], cfg["tokenizer"]["path"], cfg["train"]["seq_len"]) \
        if res.get("checkpoint") else None
    return res


def _curves(runs: dict[str, Path], path: Path, title: str, smooth: int = 10) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, run_dir in runs.items():
        rows = [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "loss" in r]
        steps = np.array([r["step"] for r in rows])
        loss = np.array([r["loss"] for r in rows])
        k = min(smooth, len(loss))
        sm = np.convolve(loss, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], sm, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel(f"train loss (moving avg {smooth})")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    lo = min(min(r["loss"] for r in read_metrics(Path(d) / "metrics.jsonl") if "loss" in r) for d in runs.values())
    ax.set_ylim(lo * 0.9, lo * 2.5)
    save_fig(fig, path)


def _write(out: Path, rows: list[dict], extra: dict, title: str) -> dict:
    keys = list(rows[0])
    table = "\n".join([f"### {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
                      + ["| " + " | ".join(f"{r[k]:.4f}" if isinstance(r[k], float) else str(r[k]) for k in keys)
                         + " |" for r in rows] + [""] + [f"- {k}: {v}" for k, v in extra.items()])
    atomic_write_text(out / "results.md", table + "\n")
    atomic_write_json(out / "results.json", {"rows": rows, **extra})
    return {"rows": rows, "table": table, **extra}


def _row(name: str, res: dict) -> dict:
    return {"run": name, "final_train_loss": res["final_loss"], "val_loss": res["val_loss"],
            "tokens_per_s": round(res["tokens_per_s"] or 0.0, 1)}


def wsd_vs_cosine(out: Path, quick: bool = False) -> dict:
    base = _base(out, quick)
    runs = {"wsd": _merge(base), "cosine": _merge(base, schedule__type="cosine")}
    res = {n: _run(c, out / n) for n, c in runs.items()}
    _curves({n: out / n for n in runs}, out / "loss.png", "WSD vs cosine (equal tokens)")
    from slmkit.train.config import load_config
    from slmkit.train.schedule import Schedule, plot_schedules

    plot_schedules({n: Schedule.from_config(load_config(c)[0]) for n, c in runs.items()}, out / "schedules.png")
    gap = res["wsd"]["val_loss"] - res["cosine"]["val_loss"]
    return _write(out, [_row(n, r) for n, r in res.items()], {"val_gap_wsd_minus_cosine": gap},
                  "WSD vs cosine")


def muon_decay(out: Path, quick: bool = False) -> dict:
    base = _merge(_base(out, quick), data__mix={"stable": {"syn": 1.0}, "decay": {"syn": 0.7, "sft": 0.3}})
    stable = _run(base, out / "stable", stop_after=None)  # full AdamW run also provides `stable-end`
    ckpt = stable["milestones"]["stable-end"]
    muon = _run(_merge(base, optimizer__decay="muon"), out / "decay_muon", resume=ckpt)
    runs = {"adamw-decay": stable, "muon-decay": muon}
    _curves({"adamw-decay": out / "stable", "muon-decay": out / "decay_muon"}, out / "loss.png",
            "decay phase from the same stable checkpoint")
    decay_losses = {n: float(np.mean(r["losses"][-(len(muon["losses"])):])) for n, r in runs.items()}
    extra = {"branch_checkpoint": ckpt, "decay_steps": len(muon["losses"]),
             "mean_decay_train_loss": decay_losses,
             "val_gap_muon_minus_adamw": muon["val_loss"] - stable["val_loss"]}
    return _write(out, [_row(n, r) for n, r in runs.items()], extra, "AdamW-only vs AdamW→Muon decay")


def fp8_gap(out: Path, quick: bool = False) -> dict:
    base = _merge(_base(out, quick), fp8__min_dim=0)
    res = {"fp32": _run(base, out / "fp32"), "fp8": _run(_merge(base, train__precision="fp8"), out / "fp8")}
    _curves({n: out / n for n in res}, out / "loss.png", "FP8 (emulated E4M3/E5M2) vs fp32")
    a, b = np.array(res["fp32"]["losses"]), np.array(res["fp8"]["losses"])
    extra = {"mean_abs_train_loss_gap": float(np.mean(np.abs(a - b))),
             "final_train_loss_gap": res["fp8"]["final_loss"] - res["fp32"]["final_loss"],
             "val_gap_fp8_minus_fp32": res["fp8"]["val_loss"] - res["fp32"]["val_loss"],
             "fp8_backend": res["fp8"]["fp8_backend"], "fp8_layers": res["fp8"]["fp8_layers"]}
    return _write(out, [_row(n, r) for n, r in res.items()], extra, "FP8 vs fp32")


def mup_transfer(out: Path, quick: bool = False) -> dict:
    from slmkit.train.experiments.mup_tools import lr_sweep

    if quick:
        res = lr_sweep(out, widths=(32, 64), lrs=(1e-3, 1e-2), steps=6)
    else:
        res = lr_sweep(out, widths=(64, 256), lrs=(1e-3, 3e-3, 1e-2, 3e-2, 1e-1), steps=80)
    extra = {"best_lr": res["best_lr"], "optimum_shift_log2": res["optimum_shift_log2"]}
    atomic_write_json(out / "results.json", {"rows": res["rows"], **extra})
    atomic_write_text(out / "results.md", "### µP LR transfer (4x width)\n\n" + res["table"] + "\n")
    return {"table": "### µP LR transfer\n\n" + res["table"], **extra}


EXPERIMENTS = {"wsd-vs-cosine": wsd_vs_cosine, "muon-decay": muon_decay, "fp8": fp8_gap, "mup-transfer": mup_transfer}


def dumps(obj) -> str:
    return json.dumps(obj, indent=2, default=str)
