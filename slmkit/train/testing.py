"""Tiny configs for tests and smoke runs: a ~30k-parameter µP model on the synthetic corpus."""

from __future__ import annotations

import copy
from pathlib import Path

TINY_MODEL = {"preset": "nano", "vocab_size": "auto", "d_model": 32, "n_layers": 2, "n_heads": 2, "n_kv_heads": 1,
              "d_ff": 64, "max_seq_len": 64, "dim_model_base": 16}


def tiny_tokenizer(out_dir: str | Path, vocab_size: int = 320, docs: int = 600) -> Path:
    """A small byte-level BPE trained on synthetic texts (cached in out_dir)."""
    out_dir = Path(out_dir)
    if not (out_dir / "tokenizer.json").exists():
        from slmkit.corpus.synthetic import training_texts
        from slmkit.model.tokenizer import train_bpe

        train_bpe(training_texts(docs, 99), vocab_size, out_dir)
    return out_dir


def tiny_config(tokenizer_dir: str | Path, data_dir: str | Path, **changes) -> dict:
    """WSD with a decay phase that hands hidden matrices to Muon; all numbers small."""
    cfg = {
        "name": "tiny",
        "seed": 0,
        "model": dict(TINY_MODEL),
        "tokenizer": {"path": str(tokenizer_dir)},
        "data": {"sources": {"syn": {"type": "synthetic", "docs": 400, "seed": 0},
                             "sft": {"type": "synthetic", "docs": 200, "seed": 1}},
                 "mix": {"stable": {"syn": 1.0}, "decay": {"syn": 0.5, "sft": 0.5}},
                 "cache_dir": str(data_dir)},
        "train": {"steps": 12, "batch_size": 4, "seq_len": 32, "precision": "fp32", "threads": 1},
        "schedule": {"type": "wsd", "lr": 0.01, "warmup": 2, "decay": 4, "decay_shape": "1-sqrt"},
        "optimizer": {"stable": "adamw", "decay": "muon"},
        "checkpoint": {"every": 0, "keep_last": 2, "milestones": ["stable-end"], "final": True},
        "log": {"every": 4, "tensorboard": False, "plots": False, "progress": False},
        "eval": {"synthetic_heldout": 0},
    }
    for key, value in changes.items():
        node = cfg
        parts = key.split("__")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = copy.deepcopy(value)
    return cfg
