"""The ONNX decoder: the native forward over a `ConcatCache`, with optimum's input/output names.

An exporter needs plain tensors in and out, so the past keys/values are graph inputs and the presents
graph outputs (`slmkit.model.transformer.ConcatCache`); everything else — every µP multiplier, RoPE,
the layers — is the native `Transformer.forward`, not a copy of it. The names are those optimum's
ORTModelForCausalLM and ONNX Runtime GenAI expect.
"""

from __future__ import annotations

import torch
from torch import nn

from slmkit.model.transformer import ConcatCache, Transformer


def io_names(n_layers: int) -> tuple[list[str], list[str]]:
    """(input names, output names) in graph order."""
    inputs = ["input_ids", "attention_mask", "position_ids"]
    outputs = ["logits"]
    for i in range(n_layers):
        inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
        outputs += [f"present.{i}.key", f"present.{i}.value"]
    return inputs, outputs


def dynamic_axes(n_layers: int) -> dict[str, dict[int, str]]:
    axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
            "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
            "position_ids": {0: "batch_size", 1: "sequence_length"},
            "logits": {0: "batch_size", 1: "sequence_length"}}
    for i in range(n_layers):
        for kind in ("key", "value"):
            axes[f"past_key_values.{i}.{kind}"] = {0: "batch_size", 2: "past_sequence_length"}
            axes[f"present.{i}.{kind}"] = {0: "batch_size", 2: "total_sequence_length"}
    return axes


class OnnxDecoder(nn.Module):
    """forward(input_ids, attention_mask, position_ids, past) -> (logits, *present); past/present are flat
    [k0, v0, k1, v1, ...] tensors of shape [batch, n_kv_heads, seq, head_dim]."""

    def __init__(self, model: Transformer) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, position_ids, past: tuple[torch.Tensor, ...]):
        cache = ConcatCache(past)
        logits = self.model(input_ids, cache=cache, attention_mask=attention_mask, position_ids=position_ids)
        return (logits, *cache.present)


def example_inputs(model: Transformer, batch: int = 2, seq: int = 3, past: int = 4):
    """Tracing inputs with every dynamic axis > 1 so no size gets specialised."""
    cfg = model.cfg
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), dtype=torch.int64)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq, dtype=torch.int64).expand(batch, seq).contiguous()
    kv = tuple(torch.randn(batch, cfg.n_kv_heads, past, cfg.hd) for _ in range(2 * cfg.n_layers))
    return ids, mask, pos, kv
