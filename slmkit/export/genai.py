"""ONNX Runtime GenAI interop: `genai_config.json` beside our ONNX export, and GenAI's own model builder.

Why: GenAI's `og.Model(folder)` runs any decoder whose folder holds a genai_config.json naming the graph's
inputs/outputs, the KV layout and the search defaults. Our export already uses the names GenAI expects
(input_ids, attention_mask, position_ids, past_key_values.N.key/value → logits, present.N.key/value) and
the [batch, kv_heads, seq, head_dim] layout, so the config is all a GenAI user needs to run our artifact.
Our graph concatenates past and new keys (present grows by T each call), so the config says
`past_present_share_buffer: false`; GenAI's own graphs share one max-length buffer instead.

`build_genai` runs GenAI's builder (`python -m onnxruntime_genai.models.builder`) on an HF Llama folder:
the peer an edge user would pick instead of us, measured side by side in benchmarks/onnx_interop.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError
from slmkit.paths import atomic_dir, atomic_write_json, read_json

CONFIG_FILE = "genai_config.json"
BUILDER_PRECISIONS = ("fp32", "int8", "int4")


def eos_token_ids(folder: Path, config: dict[str, Any]) -> list[int]:
    """The ids our runtimes stop at (serve.base.Runtime.eos_ids: the tokenizer's EOS and its chat end tokens)
    plus config.json's / generation_config.json's eos_token_id, so GenAI stops where we do."""
    ids: set[int] = set()
    for source in (config, _optional_json(folder / "generation_config.json")):
        value = source.get("eos_token_id")
        ids.update(int(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, int))
    if (folder / "tokenizer.json").exists():
        from slmkit.model.tokenizer import load_tokenizer
        from slmkit.serve.base import Runtime

        probe = Runtime()
        probe.tokenizer = load_tokenizer(folder)
        ids |= probe.eos_ids
    return sorted(ids)


def genai_config(folder: str | Path, threads: int | None = None) -> dict[str, Any]:
    """The genai_config.json for an `slmkit export onnx` folder (reads its config.json and model file name)."""
    folder = Path(folder)
    cfg = read_json(folder / "config.json")
    meta = _optional_json(folder / "slmkit_onnx.json")
    gen = _optional_json(folder / "generation_config.json")
    try:
        heads, kv_heads = int(cfg["num_attention_heads"]), int(cfg.get("num_key_value_heads") or cfg["num_attention_heads"])
        hidden, layers, vocab = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"]), int(cfg["vocab_size"])
        context = int(cfg.get("max_position_embeddings") or meta.get("max_seq_len"))
    except (KeyError, TypeError, ValueError) as exc:
        raise SlmkitError(f"{folder / 'config.json'}: field {exc} missing or not a number (needed for {CONFIG_FILE})") from None
    head_size = int(cfg.get("head_dim") or hidden // heads)
    eos = eos_token_ids(folder, cfg)
    pad = cfg.get("pad_token_id")
    session: dict[str, Any] = {"log_id": "onnxruntime-genai", "provider_options": []}
    if threads:
        session.update(intra_op_num_threads=int(threads), inter_op_num_threads=1)
    config = {
        "model": {
            "bos_token_id": cfg.get("bos_token_id"),
            "context_length": context,
            "decoder": {
                "session_options": session,
                "filename": meta.get("model_file") or "model.onnx",
                "head_size": head_size,
                "hidden_size": hidden,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                           "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
                "num_attention_heads": heads,
                "num_hidden_layers": layers,
                "num_key_value_heads": kv_heads,
            },
            "eos_token_id": eos if len(eos) > 1 else (eos[0] if eos else None),
            "pad_token_id": pad if isinstance(pad, int) else (eos[0] if eos else 0),
            "type": str(cfg.get("model_type") or "llama"),
            "vocab_size": vocab,
        },
        "search": {
            "diversity_penalty": 0.0, "do_sample": bool(gen.get("do_sample", False)), "early_stopping": True,
            "length_penalty": 1.0, "max_length": context, "min_length": 0, "no_repeat_ngram_size": 0,
            "num_beams": 1, "num_return_sequences": 1,
            "past_present_share_buffer": False,  # our graph concatenates: present = past + new positions
            "repetition_penalty": 1.0, "temperature": float(gen.get("temperature", 1.0)),
            "top_k": int(gen.get("top_k", 50) or 50), "top_p": float(gen.get("top_p", 1.0)),
        },
    }
    for key in ("bos_token_id", "eos_token_id"):  # GenAI's parser rejects null ids; absent means "none"
        if config["model"][key] is None:
            del config["model"][key]
    return config


def write_genai_config(folder: str | Path) -> Path:
    """Write FOLDER/genai_config.json (atomically) so `onnxruntime_genai.Model(FOLDER)` runs our export."""
    folder = Path(folder)
    return atomic_write_json(folder / CONFIG_FILE, genai_config(folder))


def build_genai(hf_dir: str | Path, out_dir: str | Path, precision: str = "int4", threads: int | None = None,
                extra_options: dict[str, Any] | None = None, timeout_s: float = 7200) -> Path:
    """GenAI's model builder on an HF Llama folder → OUTDIR (model.onnx, genai_config.json, tokenizer), CPU EP.

    The builder runs in a subprocess (it imports torch + transformers and holds the whole model); the folder is
    swapped in only when it finished. int4/int8 are its MatMulNBits weight-only graphs (block 32, accuracy_level 4).
    """
    if precision not in BUILDER_PRECISIONS:
        raise SlmkitError(f"genai build: precision '{precision}' unknown ({', '.join(BUILDER_PRECISIONS)})")
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if not (hf_dir / "config.json").exists():
        raise SlmkitError(f"{hf_dir}: not an HF model folder (config.json missing); export one with `slmkit export hf`")
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        raise SlmkitError("genai build: needs the onnxruntime-genai package (pip install slmkit[export])") from None
    extras = [f"{k}={v}" for k, v in (extra_options or {}).items()]
    env = dict(os.environ)
    if threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(threads)
    with atomic_dir(out_dir) as tmp, tempfile.TemporaryDirectory(prefix=".genai-cache-", dir=out_dir.parent) as cache:
        cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(tmp),
               "-p", precision, "-e", "cpu", "-c", cache] + (["--extra_options", *extras] if extras else [])
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise SlmkitError(f"{out_dir}: GenAI builder timed out after {timeout_s:.0f}s") from None
        if proc.returncode != 0 or not (tmp / "genai_config.json").exists():
            lines = [ln for ln in (proc.stderr + proc.stdout).strip().splitlines() if ln.strip()]
            raise SlmkitError(f"{out_dir}: GenAI builder failed (exit {proc.returncode}): "
                              f"{(lines or ['no output'])[-1][:300]}")
    return out_dir


def _optional_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    value = read_json(path)
    return value if isinstance(value, dict) else {}
