"""Fidelity experiments (`slmkit repro ...`): small CPU-sized versions of the Xmodel-2.5 recipe checks.

- wsd-vs-cosine: same model, data and tokens; WSD (1-sqrt decay) vs cosine.
- muon-decay:    one stable phase, then the decay phase branched from its `stable-end` checkpoint
                 twice on the same batches: AdamW throughout vs AdamW→Muon.
- fp8:           fp32 vs emulated FP8 (E4M3 fwd / E5M2 grad) on the same run.
- mup-transfer:  LR × width sweep (widths 64-512, 8×) for µP vs standard parametrization.
- long-context:  a model trained at 128 tokens, extended to 512 by the long-context stage (larger
                 RoPE base, long documents), against the same model without the stage and against
                 one trained on as many more tokens at 128; loss by position on held-out documents.
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


MUP_WIDTHS = (64, 128, 256, 512)
MUP_LRS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)  # half-decade grid: one grid step = 10^0.5


def mup_transfer(out: Path, quick: bool = False) -> dict:
    """LR × width (8×) on the shipped corpus, µP vs SP; 3 seeds at the narrowest and widest width
    (seeds 1-2 at the first seed's best LR ±1 grid step).

    Verdict: µP transfers when its best LR moves at most one grid step across the widths while SP's
    moves more. ~25 min on one idle CPU thread (the width-512 runs are most of it); resumable (runs.jsonl).
    """
    from slmkit.train.experiments.mup_tools import lr_sweep

    if quick:
        res = lr_sweep(out, widths=(32, 64), lrs=(1e-3, 1e-2), steps=6)
    else:
        ends = {w: [0, 1, 2] if w in (min(MUP_WIDTHS), max(MUP_WIDTHS)) else [0] for w in MUP_WIDTHS}
        res = lr_sweep(out, widths=MUP_WIDTHS, lrs=MUP_LRS, steps=100, seeds=ends, data="corpus", n_layers=2,
                       refine=True)
    spread = res.get("optimum_spread_grid_steps") or {}
    verdict = None
    if spread:
        verdict = ("µP's best LR stays within one grid step while SP's drifts"
                   if spread.get("mup", 99) <= 1 < spread.get("sp", 0)
                   else "µP's best LR stays within one grid step, and so does SP's"
                   if spread.get("mup", 99) <= 1 else "µP's best LR moves more than one grid step")
    extra = {"best_lr": res["best_lr"], "optimum_shift_log2": res["optimum_shift_log2"],
             "optimum_spread_grid_steps": spread, "best_lr_per_seed": res.get("best_lr_per_seed"),
             "verdict": verdict}
    atomic_write_json(out / "results.json", {"rows": res["rows"], **extra})
    text = "### µP LR transfer\n\n" + res["table"] + (f"\n\nverdict: {verdict}" if verdict else "")
    atomic_write_text(out / "results.md", text + "\n")
    return {"table": text, **extra}


# ---------------------------------------------------------------- long context

CORPUS = "$SLMKIT_DATA/pretrain_corpus"
# held out: kernel documents from index 2000 on (training reads the first few hundred of that file)
HELDOUT_LONG, HELDOUT_FROM = "en_linux_kernel_docs.jsonl.gz", 2000


def _corpus_tokenizer(root: Path, vocab: int) -> Path:
    from slmkit.model.tokenizer import train_bpe_from_files
    from slmkit.train.data import _expand

    out = root / f"_tokenizer_corpus{vocab}"
    if not (out / "tokenizer.json").exists():
        files = _expand(f"{CORPUS}/en_*.jsonl.gz", None) + _expand(f"{CORPUS}/code_*.jsonl.gz", None)
        train_bpe_from_files(files, vocab, out, max_chars=4_000_000)  # the first 4M characters: no held-out text
    return out


def _long_base(root: Path, quick: bool) -> dict:
    tok = _corpus_tokenizer(root.parent, 512 if quick else 2048)
    sources = {"en": {"type": "jsonl", "paths": [f"{CORPUS}/en_linux_kernel_docs.jsonl.gz", f"{CORPUS}/en_kjv_bible.jsonl.gz"],
                      "max_docs": 60 if quick else 400},
               "code": {"type": "jsonl", "paths": [f"{CORPUS}/code_python311_stdlib.jsonl.gz"],
                        "max_docs": 30 if quick else 150}}
    if quick:
        model = {"preset": "nano", "vocab_size": "auto", "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1,
                 "d_ff": 64, "max_seq_len": 32, "dim_model_base": 16}
        train, long = {"steps": 16, "batch_size": 4, "seq_len": 32}, {"steps": 6, "seq_len": 64}
    else:
        model = {"preset": "nano", "vocab_size": "auto", "max_seq_len": 128}
        train, long = {"steps": 300, "batch_size": 8, "seq_len": 128}, {"steps": 100, "seq_len": 512}
    return {
        "name": "long-context", "seed": 0, "model": model, "tokenizer": {"path": str(tok)},
        "data": {"sources": sources, "mix": {"stable": {"en": 0.7, "code": 0.3}, "long": {"en": 0.7, "code": 0.3}},
                 "cache_dir": str(root.parent / "_data_corpus"), "align": "doc"},
        "train": dict(train, precision="fp32", threads="auto", compile=False),
        "schedule": {"type": "wsd", "lr": 0.003, "warmup": 0.05, "decay": 0.25, "decay_shape": "1-sqrt"},
        "optimizer": {"stable": "adamw", "decay": "muon"},
        "long_context": dict(long, rope_theta=40000.0, lr=0.001, warmup=0.1, decay=0.3, align="within_doc"),
        "checkpoint": {"every": 0, "keep_last": 1, "milestones": ["decay-end"]},
        "log": {"every": 20, "tensorboard": False, "plots": True, "progress": False},
        "eval": {"synthetic_heldout": 0},
    }


@torch.no_grad()
def loss_by_position(checkpoint: str | Path, tokenizer_dir: str | Path, seq_len: int, n_windows: int = 48) -> np.ndarray:
    """Mean next-token loss at each position 0..seq_len-1 over windows inside held-out documents."""
    import gzip

    from slmkit.model.checkpoint import load_checkpoint
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.paths import data_dir

    model, _ = load_checkpoint(checkpoint)
    tok = load_tokenizer(tokenizer_dir)
    windows = []
    with gzip.open(data_dir() / "pretrain_corpus" / HELDOUT_LONG, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i < HELDOUT_FROM:
                continue
            ids = tok.encode(json.loads(line)["text"], add_special_tokens=False)
            for start in range(seq_len, len(ids) - seq_len - 1, 2 * seq_len):  # not at a document start
                windows.append(ids[start:start + seq_len + 1])
            if len(windows) >= n_windows:
                break
    x = torch.tensor(windows[:n_windows])
    total = torch.zeros(seq_len)
    for chunk in x.split(8):
        logits = model(chunk[:, :-1])
        total += F.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none").sum(0)
    return (total / len(x)).numpy()


def _hf_parity_at(checkpoint: str | Path, seq_len: int) -> float:
    """max |logit difference| between the native model and stock transformers on the exported HF folder,
    over positions beyond the first quarter of a `seq_len` window."""
    import tempfile

    from transformers import LlamaForCausalLM

    from slmkit.model.checkpoint import load_checkpoint
    from slmkit.model.hf import export_hf

    model, _ = load_checkpoint(checkpoint)
    with tempfile.TemporaryDirectory() as tmp:
        export_hf(model, Path(tmp) / "hf")
        hf = LlamaForCausalLM.from_pretrained(str(Path(tmp) / "hf"), dtype=torch.float32).eval()
        ids = torch.randint(0, model.cfg.vocab_size, (1, seq_len), generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            diff = (model(ids) - hf(ids).logits)[:, seq_len // 4:].abs().max()
    return float(diff)


def long_context(out: Path, quick: bool = False) -> dict:
    """Train at 128 → `decay-end`; (a) the long-context stage to 512 with RoPE base 40000, (b) as many
    more steps at 128 (the same tokens, no stage); loss by position 0-511 on held-out documents."""
    import copy

    base = _long_base(out, quick)
    long_len = base["long_context"]["seq_len"]
    staged = _run_long(base, out / "with-stage")
    ckpt = staged["milestones"]["decay-end"]
    control_cfg = copy.deepcopy(base)
    control_cfg["long_context"].update(seq_len=base["train"]["seq_len"], rope_theta=None)  # same data and LR
    control = _run_long(control_cfg, out / "more-steps-at-short", resume=ckpt)
    tok = base["tokenizer"]["path"]
    curves = {"trained at short length (no stage)": loss_by_position(ckpt, tok, long_len),
              f"+{base['long_context']['steps']} steps at short length": loss_by_position(control["checkpoint"], tok, long_len),
              f"+{base['long_context']['steps']} steps long-context stage": loss_by_position(staged["checkpoint"], tok, long_len)}
    short = base["train"]["seq_len"]
    buckets = [(0, short), (short, 2 * short), (2 * short, long_len)] if long_len > 2 * short else [(0, short), (short, long_len)]
    rows = []
    for name, curve in curves.items():
        row = {"model": name}
        for lo, hi in buckets:
            row[f"ppl pos {lo}-{hi - 1}"] = float(np.exp(curve[lo:hi].mean()))
        rows.append(row)
    _plot_positions(curves, short, out / "loss_by_position.png")
    extra = {"short_seq_len": short, "long_seq_len": long_len, "rope_theta": {"before": 10000.0,
             "after": base["long_context"]["rope_theta"]},
             "hf_parity_max_abs_logit_diff_beyond_short": _hf_parity_at(staged["checkpoint"], long_len),
             "branch_checkpoint": ckpt, "tokens_per_step": base["train"]["batch_size"] * short}
    return _write(out, rows, extra, "Long-context stage: perplexity by position (held-out kernel documents)")


def _run_long(cfg: dict, out: Path, **kw) -> dict:
    """Train, or reuse a finished run in `out` (its summary names the checkpoints)."""
    from slmkit.paths import read_json
    from slmkit.train.api import train

    done = out / "summary.json"
    if done.exists():
        summary = read_json(done)
        if summary.get("completed") and summary.get("checkpoint") and Path(summary["checkpoint"]).is_dir():
            return summary
    return train(cfg, out, **kw)


def _plot_positions(curves: dict[str, np.ndarray], short: int, path: Path, bin_size: int = 16) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, curve in curves.items():
        n = len(curve) // bin_size * bin_size
        binned = curve[:n].reshape(-1, bin_size).mean(1)
        ax.plot(np.arange(len(binned)) * bin_size + bin_size / 2, np.exp(binned), marker=".", label=name)
    ax.axvline(short, color="gray", linestyle="--", linewidth=1)
    ax.text(short, ax.get_ylim()[1], f" trained length {short}", va="top", fontsize=8, color="gray")
    ax.set_yscale("log")
    ax.set_xlabel("position in the window")
    ax.set_ylabel(f"perplexity (mean over {bin_size}-token bins)")
    ax.set_title("held-out documents (never trained on), by position")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_fig(fig, path)


EXPERIMENTS = {"wsd-vs-cosine": wsd_vs_cosine, "muon-decay": muon_decay, "fp8": fp8_gap, "mup-transfer": mup_transfer,
               "long-context": long_context}
