"""`slmkit bench shapes`: equal-parameter models from deep-thin to shallow-wide, decode latency on this CPU.

The question (Nemotron-Flash): at a fixed parameter budget, is deeper-thinner slower to decode? Batch-1
decode reads every weight once per token (same bytes for every shape), but each layer adds a fixed
cost — kernel launches, attention over the cache, norms — so latency grows with depth even at equal
size. Models have random weights (speed only); quality is out of scope here because measuring it needs
a training run per shape.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from slmkit.errors import SlmkitError

DEFAULT_DEPTHS = (4, 8, 12, 16, 24, 32)
HEAD_DIM = 64


def parse_count(text: str | int | float, what: str = "--params") -> int:
    """'20M', '1.3B', '500k' or a plain number → int."""
    if isinstance(text, (int, float)):
        return int(text)
    t = str(text).strip().upper()
    mult = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if t[-1:] in "KMBG" else t) * mult
    except ValueError:
        raise SlmkitError(f"{what}: {text!r} is not a count like 20M or 1.3B") from None
    if value <= 0:
        raise SlmkitError(f"{what}: {text!r} must be positive")
    return int(value)


def shape_config(params: int, n_layers: int, vocab_size: int, ff_ratio: float = 2.5, max_seq_len: int = 2048):
    """A config with `n_layers` whose total parameters (tied embedding included) are closest to `params`.

    Width is a multiple of 64 (head_dim 64, GQA 2:1 where the head count is even); d_ff (multiple of 64)
    absorbs the remainder, and the width is chosen so d_ff/d_model stays closest to `ff_ratio`.
    """
    from slmkit.model.config import ModelConfig

    best = None
    for d in range(64, 8193, 64):
        n_heads = d // HEAD_DIM
        n_kv = n_heads // 2 if n_heads % 2 == 0 else n_heads
        attn = d * n_heads * HEAD_DIM * 2 + d * n_kv * HEAD_DIM * 2
        fixed = n_layers * (attn + 2 * d) + d + vocab_size * d
        d_ff = (params - fixed) / (3 * n_layers * d)
        if d_ff < 64:
            break
        d_ff = max(64, int(round(d_ff / 64)) * 64)
        score = abs(math.log(d_ff / d / ff_ratio))
        if best is None or score < best[0]:
            best = (score, d, n_heads, n_kv, d_ff)
    if best is None:
        raise SlmkitError(f"--params: {params} is too small for {n_layers} layers with a {vocab_size}-token embedding")
    _, d, n_heads, n_kv, d_ff = best
    return ModelConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv, d_ff=d_ff,
                       max_seq_len=max_seq_len, name=f"shape-L{n_layers}-d{d}")


def bench_shapes(params: int | str = "20M", depths: Sequence[int] = DEFAULT_DEPTHS, vocab_size: int = 32000,
                 backend: str = "torch", qtype: str | None = None, prompt_tokens: int = 128, new_tokens: int = 64,
                 repeats: int = 3, threads: int = 2, out_dir: str | Path | None = None, progress: bool = True,
                 bandwidth_mb: int = 512) -> dict[str, Any]:
    """Build (cached) random models of equal size and each depth, bench them on one backend, tabulate."""
    from slmkit.bench.latency import bench_latency, parse_backends
    from slmkit.bench.artifacts import ensure_random_model

    params = parse_count(params)
    backend = parse_backends(backend)[0]
    depths = sorted({int(d) for d in depths})
    if not depths or depths[0] < 1:
        raise SlmkitError(f"--depths: {list(depths)} must be positive layer counts")
    qtype = qtype or {"torch": "f32", "llama.cpp": "f16", "onnxruntime": "int8"}[backend]
    configs = [shape_config(params, L, vocab_size, max_seq_len=max(2048, prompt_tokens + new_tokens + 32)) for L in depths]
    paths = []
    for cfg in configs:
        name = f"shapes-{params // 10**6}M-v{vocab_size}-L{cfg.n_layers}-d{cfg.d_model}-ff{cfg.d_ff}"
        paths.append(ensure_random_model(name, cfg=cfg))
    report = bench_latency(paths, [backend], prompt_tokens=prompt_tokens, new_tokens=new_tokens, repeats=repeats,
                           threads=threads, out_dir=None, gguf_types=[qtype], onnx_types=[qtype], parity=False,
                           raw_llama="none", progress=progress, bandwidth_mb=bandwidth_mb)
    by_model = {}
    for row in report["results"]:
        if row["backend"] == backend:
            by_model.setdefault(row["model"], row)
    results = []
    for cfg, path in zip(configs, paths):
        row = dict(by_model.get(str(path), {"ok": False, "error": "not measured"}))
        row.update({"config": {k: getattr(cfg, k) for k in ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size")},
                    "params": cfg.num_params(), "non_embedding_params": cfg.num_params(embeddings=False)})
        results.append(row)
    ok = [r for r in results if r.get("decode_tok_s")]
    fastest = max(ok, key=lambda r: r["decode_tok_s"]) if ok else None
    shapes = {
        "title": f"Shape sweep: ~{params / 1e6:.0f}M parameters, decode latency vs depth ({backend})",
        "settings": {"params": params, "vocab_size": vocab_size, "depths": depths, "backend": backend, "qtype": qtype,
                     "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats, "threads": threads,
                     "head_dim": HEAD_DIM},
        "machine": report["machine"],
        "results": results,
        "summary": {"fastest": None if fastest is None else {"n_layers": fastest["config"]["n_layers"],
                                                               "d_model": fastest["config"]["d_model"],
                                                               "decode_tok_s": fastest["decode_tok_s"]},
                    "decode_tok_s_by_depth": {r["config"]["n_layers"]: r.get("decode_tok_s") for r in results}},
        "notes": ["random weights: speed only; quality per shape is out of scope (it needs a training run per shape)",
                  "parameter count = non-embedding + tied embedding with the fixed vocabulary; width multiple of 64 "
                  "(head_dim 64), d_ff multiple of 64 absorbs the remainder",
                  "same weight bytes per token for every shape, so the bandwidth bound is nearly equal; what grows "
                  "with depth is per-layer fixed cost"],
    }
    if out_dir is not None:
        from slmkit.bench.report import write_report

        write_report(shapes, Path(out_dir), stem="shapes")
    return shapes
