"""The one parity gate: every exported artifact must reproduce the torch fp32 model.

HF folders are checked with stock transformers (`check_hf_parity`); GGUF and ONNX runtimes through
their `logits()` (`run_parity`).

Same token ids go through the native model (fp32) and the runtime's `logits()`. We measure
  max relative logit error  max|a-b| / max|a|   (worst batch),
  top-1 agreement           fraction of positions whose argmax matches,
  perplexity                next-token ppl of the held-out ids under both (and their ratio),
  mean KL(ref || runtime)   per position, nats.
Unquantized exports must stay within 1e-4 relative; lossy ones (f16, int quants) within per-type
bounds. The report is written beside the artifact before a failure is raised, so it can be read.

Which text the gate runs on matters: a model trained on its own domain is near-uniform (or confidently
wrong) on generic prose, where quantization noise moves perplexity a lot and says nothing about the
model. `gate_batches` picks, in order: `--gate-text FILE`, the held-out sample the trainer recorded
with the checkpoint (`gate_text.txt` in the checkpoint / HF folder), and only then the built-in generic
text; the report's `gate_text` field says which one was used.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.model.checkpoint import GATE_TEXT_FILE, read_gate_text
from slmkit.paths import atomic_write_json

UNQUANTIZED_BOUNDS: dict[str, float] = {"max_rel_err": 1e-4}

# Defaults per lossy type (GGUF names; ONNX callers pass "int8"/"fp16" style names or their own bounds).
# ppl_ratio = ppl(runtime)/ppl(reference); top1 = argmax agreement with the fp32 model.
QUANT_BOUNDS: dict[str, dict[str, float]] = {
    "f16": {"min_top1": 0.98, "max_ppl_ratio": 1.005, "max_rel_err": 2e-2},
    "fp16": {"min_top1": 0.98, "max_ppl_ratio": 1.005, "max_rel_err": 2e-2},
    "bf16": {"min_top1": 0.95, "max_ppl_ratio": 1.02, "max_rel_err": 1e-1},
    "q8_0": {"min_top1": 0.95, "max_ppl_ratio": 1.02},
    "int8": {"min_top1": 0.90, "max_ppl_ratio": 1.05},
    "q6_k": {"min_top1": 0.92, "max_ppl_ratio": 1.03},
    "q5_k_m": {"min_top1": 0.88, "max_ppl_ratio": 1.06},
    "q5_k_s": {"min_top1": 0.88, "max_ppl_ratio": 1.07},
    "q5_0": {"min_top1": 0.86, "max_ppl_ratio": 1.08},
    "q5_1": {"min_top1": 0.86, "max_ppl_ratio": 1.08},
    "q4_k_m": {"min_top1": 0.80, "max_ppl_ratio": 1.15},
    "q4_k_s": {"min_top1": 0.78, "max_ppl_ratio": 1.18},
    "q4_0": {"min_top1": 0.75, "max_ppl_ratio": 1.25},
    "q4_1": {"min_top1": 0.75, "max_ppl_ratio": 1.25},
    "iq4_nl": {"min_top1": 0.78, "max_ppl_ratio": 1.18},
    "iq4_xs": {"min_top1": 0.78, "max_ppl_ratio": 1.18},
    "q3_k_l": {"min_top1": 0.68, "max_ppl_ratio": 1.4},
    "q3_k_m": {"min_top1": 0.65, "max_ppl_ratio": 1.5},
    "q3_k_s": {"min_top1": 0.60, "max_ppl_ratio": 1.7},
    "q2_k": {"min_top1": 0.50, "max_ppl_ratio": 2.5},
}
GENERIC_QUANT_BOUNDS: dict[str, float] = {"min_top1": 0.75, "max_ppl_ratio": 1.25}
BOUND_KEYS = ("max_rel_err", "min_top1", "max_ppl_ratio", "max_mean_kl")


def default_bounds(quantized: bool, qtype: str | None = None) -> dict[str, float]:
    """Bounds for an export: 1e-4 relative when unquantized, else the per-type (or generic) table."""
    if not quantized:
        return dict(UNQUANTIZED_BOUNDS)
    return dict(QUANT_BOUNDS.get((qtype or "").lower(), GENERIC_QUANT_BOUNDS))


def _reference_logits(model, ids: Sequence[int]) -> np.ndarray:
    import torch

    param = next(model.parameters())
    with torch.no_grad():
        x = torch.tensor([list(ids)], dtype=torch.long, device=param.device)
        out = model(x)[0].float()
    return out.cpu().numpy().astype(np.float32)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def compare_logits(ref: np.ndarray, got: np.ndarray, ids: Sequence[int]) -> dict[str, float]:
    """Metrics for one sequence: both arrays [T, vocab]; NLL over the T-1 next-token targets."""
    diff = float(np.max(np.abs(ref.astype(np.float64) - got.astype(np.float64))))
    scale = float(np.max(np.abs(ref)))
    lp_ref, lp_got = _log_softmax(ref), _log_softmax(got)
    targets = np.asarray(ids[1:], dtype=np.int64)
    rows = np.arange(len(targets))
    kl = (np.exp(lp_ref) * (lp_ref - lp_got)).sum(-1)
    return {
        "tokens": int(ref.shape[0]),
        "max_abs_err": diff,
        "max_abs_logit": scale,
        "max_rel_err": diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf),
        "top1_agree": int((ref.argmax(-1) == got.argmax(-1)).sum()),
        "nll_ref": float(-lp_ref[rows, targets].sum()),
        "nll_runtime": float(-lp_got[rows, targets].sum()),
        "kl_sum": float(kl.sum()),
    }


def summarize(per_batch: list[dict[str, float]]) -> dict[str, float]:
    positions = sum(b["tokens"] for b in per_batch)
    targets = sum(b["tokens"] - 1 for b in per_batch)
    ppl_ref = math.exp(sum(b["nll_ref"] for b in per_batch) / max(targets, 1))
    ppl_rt = math.exp(sum(b["nll_runtime"] for b in per_batch) / max(targets, 1))
    return {
        "positions": positions,
        "max_rel_err": max(b["max_rel_err"] for b in per_batch),
        "max_abs_err": max(b["max_abs_err"] for b in per_batch),
        "top1_agreement": sum(b["top1_agree"] for b in per_batch) / positions,
        "ppl_reference": ppl_ref,
        "ppl_runtime": ppl_rt,
        "ppl_ratio": ppl_rt / ppl_ref,
        "mean_kl": sum(b["kl_sum"] for b in per_batch) / positions,
    }


def check_bounds(metrics: dict[str, float], bounds: dict[str, float]) -> list[str]:
    """Human-readable violations (empty list = pass)."""
    failures = []
    if "max_rel_err" in bounds and not metrics["max_rel_err"] <= bounds["max_rel_err"]:
        failures.append(f"max relative logit error {metrics['max_rel_err']:.3g} > {bounds['max_rel_err']:.3g}")
    if "min_top1" in bounds and not metrics["top1_agreement"] >= bounds["min_top1"]:
        failures.append(f"top-1 agreement {metrics['top1_agreement']:.4f} < {bounds['min_top1']:.4f}")
    if "max_ppl_ratio" in bounds and not metrics["ppl_ratio"] <= bounds["max_ppl_ratio"]:
        failures.append(f"perplexity ratio {metrics['ppl_ratio']:.4f} > {bounds['max_ppl_ratio']:.4f} "
                        f"(runtime {metrics['ppl_runtime']:.3f} vs fp32 {metrics['ppl_reference']:.3f})")
    if "max_mean_kl" in bounds and not metrics["mean_kl"] <= bounds["max_mean_kl"]:
        failures.append(f"mean KL {metrics['mean_kl']:.4g} > {bounds['max_mean_kl']:.4g}")
    return failures


def run_parity(reference_model, runtime, token_batches: list[list[int]], quantized: bool,
               bounds: dict | None = None, report_path: str | Path | None = None,
               qtype: str | None = None, extra: dict[str, Any] | None = None,
               failures: list[str] | None = None) -> dict:
    """Compare `runtime.logits` with the fp32 `reference_model` on `token_batches`; raise SlmkitError on failure.

    bounds: overrides merged onto `default_bounds(quantized, qtype)` (a None value drops that check).
    `failures`: checks the caller already failed (e.g. tokenizer mismatch), reported with the logit checks.
    Returns the report (also written to `report_path` as JSON, even when the gate fails).
    """
    name = str(report_path or getattr(runtime, "path", None) or getattr(runtime, "name", "runtime"))
    batches = [list(map(int, b)) for b in token_batches if len(b) >= 2]
    if not batches:
        raise SlmkitError(f"{name}: parity needs at least one token batch of length >= 2")
    vocab = int(reference_model.cfg.vocab_size)
    bad = [t for b in batches for t in b if not 0 <= t < vocab]
    if bad:
        raise SlmkitError(f"{name}: parity token id {bad[0]} outside the model vocabulary (0..{vocab - 1})")
    merged = default_bounds(quantized, qtype)
    for key, value in (bounds or {}).items():
        if key not in BOUND_KEYS:
            raise SlmkitError(f"{name}: unknown parity bound '{key}' (known: {', '.join(BOUND_KEYS)})")
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = float(value)

    t0 = time.perf_counter()
    per_batch = []
    for ids in batches:
        ref = _reference_logits(reference_model, ids)
        got = np.asarray(runtime.logits(ids), dtype=np.float32)
        if got.shape != ref.shape:
            raise SlmkitError(f"{name}: runtime logits have shape {got.shape}, fp32 model gives {ref.shape}")
        if not np.isfinite(got).all():
            raise SlmkitError(f"{name}: runtime logits contain NaN/inf (broken export)")
        per_batch.append(compare_logits(ref, got, ids))
    metrics = summarize(per_batch)
    failures = list(failures or []) + check_bounds(metrics, merged)
    gate = getattr(token_batches, "source", None) or {  # GateBatches say which text the gate ran on
        "kind": "caller", "path": None, "label": "token batches given by the caller"}
    report = {
        "artifact": str((extra or {}).get("artifact") or getattr(runtime, "path", "") or ""),
        "runtime": getattr(runtime, "name", type(runtime).__name__),
        "quantized": bool(quantized),
        "type": qtype,
        "bounds": merged,
        "passed": not failures,
        "failures": failures,
        **metrics,
        "batches": len(batches),
        "seconds": round(time.perf_counter() - t0, 3),
        "per_batch": per_batch,
        "gate_text": gate,
        **(extra or {}),
    }
    if report_path is not None:
        atomic_write_json(report_path, report)
    if failures:
        where = f" (report: {report_path})" if report_path is not None else ""
        on = f" on {gate['label']}"
        raise SlmkitError(f"{report['artifact'] or name}: parity gate failed{on}: {'; '.join(failures)}{where}")
    return report


# ---- held-out token ids ------------------------------------------------------------------------

HELDOUT_TEXT = (
    "The lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a tin of oil and a "
    "rag. In 1887 the lamp burned 42 litres a month; by 1921 electric bulbs had replaced the flame.",
    "Photosynthesis converts light energy into chemical energy: plants take in carbon dioxide and water "
    "and release oxygen. A single leaf may contain 500,000 chloroplasts per square millimetre.",
    "Question: Tom has 17 apples and gives 5 to Mia. How many apples does he have left?\n"
    "Answer: 17 - 5 = 12. Tom has 12 apples left.",
    "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a\n",
    "Les montagnes étaient couvertes de neige; the travellers crossed the pass at 3:45 p.m. and reached "
    "the village before nightfall — tired, cold, but happy.",
)


def heldout_token_batches(tokenizer=None, vocab_size: int | None = None, n_batches: int = 4,
                          seq_len: int = 64, seed: int = 0) -> list[list[int]]:
    """Held-out parity inputs: fixed text through `tokenizer` (ids must fit the vocab), else seeded random ids."""
    batches: list[list[int]] = []
    if tokenizer is not None:
        text = "\n\n".join(HELDOUT_TEXT)
        ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
        if vocab_size is not None:
            ids = [t for t in ids if t < vocab_size]
        while len(ids) < n_batches * seq_len and ids:
            ids = ids + ids
        batches = [ids[i * seq_len:(i + 1) * seq_len] for i in range(n_batches)]
        batches = [b for b in batches if len(b) >= 2]
    if not batches:
        if vocab_size is None:
            raise SlmkitError("parity: need a tokenizer or vocab_size to build held-out token batches")
        rng = np.random.default_rng(seed)
        batches = [rng.integers(0, vocab_size, size=seq_len).tolist() for _ in range(n_batches)]
    return batches


def check_hf_parity(model, hf_dir: str | Path, tolerance: float = 1e-5, seq_len: int = 48,
                    batch: int = 2, seed: int = 0) -> dict:
    """An exported HF folder run by *stock* transformers (no custom code) against the native model: max
    relative logit error and top-1 agreement on random token ids; raises past `tolerance`."""
    import torch
    from transformers import AutoModelForCausalLM

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, min(seq_len, model.cfg.max_seq_len)), generator=gen)
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    with torch.no_grad():
        ours = model.float().eval()(ids)
        theirs = hf(ids).logits.float()
    rel = float((ours - theirs).abs().max() / ours.abs().max().clamp_min(1e-30))
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
    report = {"max_rel_error": rel, "top1_agreement": top1, "tolerance": tolerance, "tokens": int(ids.numel())}
    if not rel <= tolerance:
        raise SlmkitError(f"{hf_dir}: HF export parity failed: max relative logit error {rel:.3e} > {tolerance:g}")
    return report


# ---- which text the gate runs on ---------------------------------------------------------------

GATE_SEQ_LEN = 64
GATE_MAX_BATCHES = 8


class GateBatches(list):
    """Token batches for the gate plus where they came from (`source`, recorded in the parity report)."""

    def __init__(self, batches, source: dict[str, Any]):
        super().__init__(batches)
        self.source = source


def gate_text_file(model_path: str | Path | None) -> Path | None:
    """The held-out gate text stored with a checkpoint / HF folder, if there is one."""
    if model_path is None:
        return None
    path = Path(model_path)
    candidate = path / GATE_TEXT_FILE if path.is_dir() else path.with_name(GATE_TEXT_FILE)
    return candidate if candidate.is_file() else None


def text_token_batches(tokenizer, text: str, vocab_size: int | None, seq_len: int = GATE_SEQ_LEN,
                       max_batches: int = GATE_MAX_BATCHES) -> list[list[int]]:
    """Consecutive, non-overlapping windows of `text`'s token ids (no repetition: a short text gives fewer)."""
    ids = [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
    if vocab_size is not None:
        ids = [t for t in ids if t < vocab_size]
    batches = [ids[i:i + seq_len] for i in range(0, len(ids), seq_len)][:max_batches]
    return [b for b in batches if len(b) >= 2]


def gate_batches(model_path: str | Path | None, tokenizer, vocab_size: int, gate_text: str | Path | None = None,
                 max_seq_len: int | None = None) -> GateBatches:
    """The gate's token batches: `gate_text` (a FILE the user named), else the checkpoint's `gate_text.txt`,
    else the built-in generic text (else seeded random ids when there is no tokenizer)."""
    seq_len = min(GATE_SEQ_LEN, max_seq_len or GATE_SEQ_LEN)
    chosen = [("--gate-text", Path(gate_text))] if gate_text is not None else []
    stored = gate_text_file(model_path)
    if stored is not None and not chosen:
        chosen = [("checkpoint", stored)]
    for kind, path in chosen:
        if tokenizer is None:
            raise SlmkitError(f"{path}: a gate text needs the model's tokenizer (none beside {model_path})")
        batches = text_token_batches(tokenizer, read_gate_text(path), vocab_size, seq_len)
        if not batches:
            raise SlmkitError(f"{path}: the gate text gives fewer than 2 tokens")
        label = (f"--gate-text {path}" if kind == "--gate-text" else f"the held-out text stored with the model ({path})")
        return GateBatches(batches, {"kind": kind, "path": str(path), "label": label,
                                     "tokens": sum(map(len, batches)), "batches": len(batches)})
    batches = heldout_token_batches(tokenizer, vocab_size, n_batches=4, seq_len=seq_len)
    kind = "generic" if tokenizer is not None else "random-ids"
    label = ("the built-in generic text (no gate_text.txt beside the model, no --gate-text)" if tokenizer is not None
             else "seeded random token ids (no tokenizer)")
    return GateBatches(batches, {"kind": kind, "path": None, "label": label,
                                 "tokens": sum(map(len, batches)), "batches": len(batches)})


def carry_gate_text(src_model: str | Path, dst_folder: str | Path) -> Path | None:
    """Copy the checkpoint's gate text into an exported folder (so exports of that folder gate on it too)."""
    from slmkit.paths import atomic_write_text

    found = gate_text_file(src_model)
    if found is None:
        return None
    return atomic_write_text(Path(dst_folder) / GATE_TEXT_FILE, read_gate_text(found))
