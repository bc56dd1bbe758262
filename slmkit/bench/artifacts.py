"""Artifacts a latency bench runs on: random-weight preset models, and GGUF / ONNX exports of a model.

Why a cache: a 1.3B export takes minutes and gigabytes; the bench is rerun far more often than the
weights change. Everything lands in `cache_dir()/bench/<model key>/` and is reused when the source
weights (path, size, mtime) are the same. Random-weight models say so in their record: their parity
numbers describe quantization error on random weights only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError
from slmkit.paths import atomic_write_json, cache_dir

GGUF_DIRECT = ("f32", "f16", "bf16")
# llama.cpp file types by name (llama_ftype); the q4_0 family is what llama.cpp repacks for AVX2/AVX512 at load
LLAMA_FTYPES = {"q4_0": 2, "q4_1": 3, "q8_0": 7, "q5_0": 8, "q5_1": 9, "q2_k": 10, "q3_k_s": 11, "q3_k_m": 12,
                "q3_k_l": 13, "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18, "iq4_nl": 25,
                "iq4_xs": 30}


def bench_root() -> Path:
    root = cache_dir() / "bench"
    root.mkdir(parents=True, exist_ok=True)
    return root


def source_key(path: str | Path) -> str:
    """Name + hash of (resolved path, weight file sizes and mtimes): changes when the weights change."""
    path = Path(path).resolve()
    stamp = [str(path)]
    for f in sorted(path.glob("*.safetensors")) + sorted(path.glob("slmkit.json")):
        st = f.stat()
        stamp.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return f"{path.name}-{hashlib.sha1('|'.join(stamp).encode()).hexdigest()[:10]}"


# ---- random-weight preset models ------------------------------------------------------------------

def preset_tokenizer_dir(vocab_size: int) -> tuple[Path, str]:
    """The real tokenizer when the shared data has one that fits (DeepSeek-V3 for xmodel2.5), else a tiny BPE."""
    from slmkit.paths import data_dir

    root = data_dir(required=False)
    if root is not None and vocab_size >= 128815:
        cand = root / "tokenizers" / "deepseek-v3"
        if cand.is_dir():
            return cand, "deepseek-v3"
    tiny = bench_root() / "tokenizer-bpe-320"
    if not (tiny / "tokenizer.json").exists():
        from slmkit.corpus.synthetic import training_texts
        from slmkit.model.tokenizer import train_bpe

        train_bpe(training_texts(400, seed=7), 320, tiny)
    return tiny, "synthetic-bpe-320"


def ensure_random_model(name: str, cfg=None, seed: int = 0, progress=None) -> Path:
    """An slmkit checkpoint with µP-initialised random weights of a preset's (or a given config's) shape."""
    import torch

    from slmkit.model.checkpoint import is_checkpoint, save_checkpoint
    from slmkit.model.config import ModelConfig
    from slmkit.model.transformer import Transformer

    cfg = cfg or ModelConfig.from_preset(name)
    out = bench_root() / f"random-{name}" / "checkpoint"
    if is_checkpoint(out):
        return out
    tok_dir, tok_name = preset_tokenizer_dir(cfg.vocab_size)
    if progress:
        progress(f"building random-weight {name} ({cfg.num_params() / 1e6:.0f}M params)")
    torch.manual_seed(seed)
    with torch.no_grad():
        model = Transformer(cfg).eval()
    save_checkpoint(out, model, tokenizer_dir=tok_dir,
                    meta={"random_weights": True, "seed": seed, "tokenizer": tok_name,
                          "note": "random weights for latency benchmarks; quality numbers are meaningless"})
    del model
    return out


def is_random(path: str | Path) -> bool:
    try:
        record = json.loads((Path(path) / "slmkit.json").read_text())
    except (OSError, ValueError):
        return False
    return bool((record.get("meta") or {}).get("random_weights"))


# ---- exports -------------------------------------------------------------------------------------

def artifact_dir(source: str | Path) -> Path:
    out = bench_root() / "artifacts" / source_key(source)
    out.mkdir(parents=True, exist_ok=True)
    return out


def ensure_gguf(source: str | Path, qtype: str, threads: int = 2, parity: bool = False, progress=None,
                measure_parity: bool = False) -> Path:
    """`<cache>/<key>/model-<qtype>.gguf`, exported once (f32/f16/bf16 directly, others via llama.cpp's quantizer).

    parity: the exporter's gate; measure_parity: ungated metrics (random-weight models) when no report exists yet.
    """
    from slmkit.bench import exports as bench_export

    qtype = qtype.lower()
    if qtype not in GGUF_DIRECT and qtype not in LLAMA_FTYPES:
        raise SlmkitError(f"--gguf-types: '{qtype}' unknown (known: {', '.join(GGUF_DIRECT + tuple(LLAMA_FTYPES))})")
    folder = artifact_dir(source)
    out = folder / f"model-{qtype}.gguf"
    if not out.exists():
        if progress:
            progress(f"exporting {Path(source).name} → GGUF {qtype}")
        bench_export.export_gguf(Path(source), out, qtype, threads=threads, parity=parity)
    if measure_parity and find_parity(out) is None:
        if progress:
            progress(f"measuring parity of GGUF {qtype} (ungated)")
        bench_export.ungated_parity(Path(source), out, qtype, "llama.cpp", threads)
    return out


def ensure_onnx(source: str | Path, qtype: str = "int8", parity: bool = False, progress=None,
                measure_parity: bool = False, threads: int = 2) -> Path:
    from slmkit.bench import exports as bench_export

    if qtype not in ("int8", "fp32"):
        raise SlmkitError(f"--onnx-types: '{qtype}' unknown (known: int8, fp32)")
    out = artifact_dir(source) / f"onnx-{qtype}"
    if not (out / "model.onnx").exists():
        if progress:
            progress(f"exporting {Path(source).name} → ONNX {qtype}")
        bench_export.export_onnx(Path(source), out, int8=qtype == "int8", parity=parity)
    if measure_parity and find_parity(out) is None:
        if progress:
            progress(f"measuring parity of ONNX {qtype} (ungated)")
        bench_export.ungated_parity(Path(source), out, qtype, "onnxruntime", threads)
    return out


def find_parity(artifact: str | Path) -> dict[str, Any] | None:
    """The parity report an exporter wrote beside (or inside) an artifact, trimmed to the headline numbers."""
    artifact = Path(artifact)
    candidates = [artifact.with_name(artifact.name + ".parity.json"), artifact.with_suffix(".parity.json"),
                  artifact / "parity.json", artifact.parent / f"{artifact.stem}.parity.json"]
    for cand in candidates:
        if cand.is_file():
            try:
                report = json.loads(cand.read_text())
            except (OSError, ValueError):
                continue
            keep = {k: report.get(k) for k in ("passed", "max_rel_err", "top1_agreement", "ppl_ratio", "mean_kl",
                                               "ppl_reference", "ppl_runtime", "gated", "random_weights") if k in report}
            metrics = report.get("metrics") if isinstance(report.get("metrics"), dict) else {}
            for k in ("max_rel_err", "top1_agreement", "ppl_ratio", "mean_kl"):
                if k not in keep and k in metrics:
                    keep[k] = metrics[k]
            keep["file"] = str(cand)
            return keep
    return None
