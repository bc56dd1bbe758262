"""Thin adapters from the bench to the exporters (slmkit.export.gguf / .quantize / .onnx / .parity).

Why here: the bench only needs "make me this artifact type from that model"; the exporters own the
formats. With parity on, `slmkit.export.gguf.export_gguf` runs its gate (report at OUT.parity.json).
With parity off (random-weight bench models, whose gate could fail for reasons that say nothing about
the exporter) we write one f32 GGUF, quantize every type from it with llama.cpp's quantizer, and
optionally *measure* parity without gating — the report is marked `gated: false, random_weights: true`.
The source model is loaded once per bench and released before any timing starts.
"""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError

_MODELS: dict[str, Any] = {}


def source_model(source: Path):
    key = str(Path(source).resolve())
    if key not in _MODELS:
        from slmkit.model.hf import load_any

        _MODELS.clear()
        gc.collect()
        _MODELS[key] = load_any(source, verify=False).float().eval()
    return _MODELS[key]


def release() -> None:
    """Drop the cached source model (a 1.3B fp32 model is 5 GB) before measurements start."""
    _MODELS.clear()
    gc.collect()


def tokenizer_dir(source: Path) -> Path:
    from slmkit.model.hf import tokenizer_dir_of

    tok = tokenizer_dir_of(source)
    if tok is None and (Path(source) / "tokenizer.json.gz").exists():
        tok = Path(source)
    if tok is None:
        raise SlmkitError(f"{source}: no tokenizer.json; GGUF export needs the tokenizer beside the weights")
    return tok


def export_gguf(source: Path, out: Path, qtype: str, threads: int = 2, parity: bool = False,
                measure_parity: bool = False) -> Path:
    from slmkit.export import gguf

    if parity:
        gguf.export_gguf(source, out, qtype, parity=True, n_threads=threads, model=source_model(source))
        return out
    model = source_model(source)
    tok = tokenizer_dir(source)
    if qtype in gguf.DIRECT_TYPES:
        gguf.write_gguf(model, out, tok, dtype=qtype)
    else:
        from slmkit.export.quantize import quantize_gguf

        base = out.with_name("model-f32.gguf")  # one f32 file all quantized types are made from (kept: it is the f32 artifact)
        if not base.exists():
            gguf.write_gguf(model, base, tok, dtype="f32")
        quantize_gguf(base, out, qtype, n_threads=threads)
    if measure_parity:
        ungated_parity(source, out, qtype, "llama.cpp", threads)
    return out


def export_onnx(source: Path, out: Path, int8: bool, parity: bool, measure_parity: bool = False, threads: int = 2) -> Path:
    from slmkit.export.onnx import export_onnx as _export

    release()  # the exporter loads its own copy
    _export(source, out, int8=int8, parity=parity)
    if measure_parity and not parity:
        ungated_parity(source, out, "int8" if int8 else "fp32", "onnxruntime", threads)
    return out


def ungated_parity(source: Path, artifact: Path, qtype: str, backend: str, threads: int = 2) -> dict:
    """The exporters' parity metrics with every bound dropped: a measurement, never a gate."""
    from slmkit.export.parity import BOUND_KEYS, heldout_token_batches, run_parity
    from slmkit.model.tokenizer import load_tokenizer

    model = source_model(source)
    tok = load_tokenizer(tokenizer_dir(source))
    batches = heldout_token_batches(tok, model.cfg.vocab_size, n_batches=4, seq_len=min(64, model.cfg.max_seq_len))
    if backend == "llama.cpp":
        from slmkit.serve.llamacpp_backend import LlamaCppRuntime

        # extra buffers off: on VMs that advertise AMX without supporting it, many-row logits crash in the AMX
        # kernels (the runtime's probe only evaluates a few tokens); the numbers do not depend on it
        runtime = LlamaCppRuntime(artifact, n_ctx=max(len(b) for b in batches) + 8, n_threads=threads, f32_kv=True,
                                  tokenizer=tok, extra_bufts=False)
        report_path = Path(f"{artifact}.parity.json")
    else:
        from slmkit.serve.onnx_backend import OnnxRuntime

        runtime = OnnxRuntime(artifact, threads=threads)
        report_path = Path(artifact) / "parity.json"
    try:
        return run_parity(model, runtime, batches, quantized=qtype not in ("f32", "fp32"),
                          bounds={k: None for k in BOUND_KEYS}, report_path=report_path, qtype=qtype,
                          extra={"artifact": str(artifact), "gated": False, "random_weights": True,
                                 "note": "measured by slmkit bench on random weights; not an export gate"})
    finally:
        runtime.close()
