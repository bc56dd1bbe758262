"""Check an exported HF folder against the native model with *stock* transformers (no custom code)."""

from __future__ import annotations

from pathlib import Path

import torch

from slmkit.errors import SlmkitError
from slmkit.model.transformer import Transformer


@torch.no_grad()
def check_hf_parity(model: Transformer, hf_dir: str | Path, tolerance: float = 1e-5, seq_len: int = 48,
                    batch: int = 2, seed: int = 0) -> dict:
    """Max relative logit error and top-1 agreement on random token ids; raises past `tolerance`."""
    from transformers import AutoModelForCausalLM

    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.cfg.vocab_size, (batch, min(seq_len, model.cfg.max_seq_len)), generator=gen)
    hf = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    ours = model.float().eval()(ids)
    theirs = hf(ids).logits.float()
    rel = float((ours - theirs).abs().max() / ours.abs().max().clamp_min(1e-30))
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).float().mean())
    report = {"max_rel_error": rel, "top1_agreement": top1, "tolerance": tolerance, "tokens": int(ids.numel())}
    if not rel <= tolerance:
        raise SlmkitError(f"{hf_dir}: HF export parity failed: max relative logit error {rel:.3e} > {tolerance:g}")
    return report
