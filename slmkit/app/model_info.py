"""What the Model tab shows: the artifact (backend, file, quantization, size, context), its parity report (the
`*.parity.json` beside a GGUF, `parity.json` in an ONNX folder) and a latency measured on the loaded runtime."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from slmkit.app.generation import context_length
from slmkit.serve.base import Runtime, SamplingParams

PARITY_KEYS = ("type", "runtime", "passed", "top1_agreement", "ppl_ratio", "ppl_reference", "ppl_runtime",
               "max_rel_err", "mean_kl", "positions", "bounds", "tensor_types")
LATENCY_TEXT = "The quick brown fox jumps over the lazy dog while the patient farmer counts his sheep. "


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def artifact_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def parity_report(path: Path) -> dict | None:
    """The export's parity report for this artifact, None when it was not parity-gated (or is a source model)."""
    candidates = [path.with_name(path.name + ".parity.json")] if path.is_file() else [path / "parity.json"]
    for report in candidates:
        if report.is_file():
            try:
                data = json.loads(report.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as exc:
                return {"file": str(report), "error": f"unreadable: {exc}"}
            return {"file": str(report), **{k: data[k] for k in PARITY_KEYS if k in data}}
    return None


def quantization(runtime: Runtime, path: Path) -> str:
    """llama.cpp's own description of a GGUF's type; an ONNX folder's recorded type; torch's weight dtype."""
    if runtime.name == "llama.cpp":
        import ctypes

        import llama_cpp

        buf = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(runtime.llama.model, buf, len(buf))
        desc = buf.value.decode("utf-8", "replace")  # e.g. "llama 256M Q4_K - Medium"
        return desc.split(" ", 2)[-1] if desc.count(" ") >= 2 else desc
    if path.is_dir() and (path / "slmkit_onnx.json").is_file():
        meta = json.loads((path / "slmkit_onnx.json").read_text(encoding="utf-8"))
        for key in ("quantization", "dtype", "precision"):
            if meta.get(key):
                return str(meta[key])
        return "int8" if meta.get("int8") else "fp32"
    model = getattr(runtime, "model", None)
    if model is not None:
        return str(next(model.parameters()).dtype).replace("torch.", "")
    return "unknown"


def artifact_facts(runtime: Runtime, path: str | Path) -> dict[str, Any]:
    path = Path(path)
    facts: dict[str, Any] = {"backend": runtime.name, "file": str(path), "size": human_bytes(artifact_size(path)),
                             "quantization": quantization(runtime, path), "context": context_length(runtime)}
    model = getattr(runtime, "model", None)
    if model is not None:
        facts["parameters"] = f"{sum(p.numel() for p in model.parameters()) / 1e6:.1f} M"
    facts["parity"] = parity_report(path)
    return facts


def measure_latency(runtime: Runtime, prompt_tokens: int = 128, new_tokens: int = 32, repeats: int = 2) -> dict:
    """Time to first token for a `prompt_tokens` prompt and greedy decode speed; best of `repeats` runs."""
    ids = runtime.tokenizer.encode(LATENCY_TEXT * (prompt_tokens // 8 + 2), add_special_tokens=False)[:prompt_tokens]
    best_ttft, best_rate, produced = float("inf"), 0.0, 0
    for _ in range(repeats):
        t0 = time.perf_counter()
        first = None
        n = 0
        for _tok in runtime.generate_ids(ids, SamplingParams(max_new_tokens=new_tokens)):
            n += 1
            if first is None:
                first = time.perf_counter()
        end = time.perf_counter()
        if first is None:
            continue
        best_ttft = min(best_ttft, first - t0)
        if n > 1:
            best_rate = max(best_rate, (n - 1) / (end - first))
        produced = n
    return {"prompt_tokens": len(ids), "new_tokens": produced, "ttft_ms": round(best_ttft * 1000, 1),
            "decode_tokens_per_s": round(best_rate, 1), "repeats": repeats}
