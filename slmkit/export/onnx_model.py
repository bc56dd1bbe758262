"""A traceable decoder around the native Transformer with explicit past tensors, for ONNX export.

The native model keeps its KV cache in a Python object and branches on shapes; an exporter needs
plain tensors in and out. This wrapper reuses the native submodules (so every µP multiplier is
applied in exactly the same place and order) and exposes the input/output names optimum's
ORTModelForCausalLM and ONNX Runtime GenAI expect.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.model.transformer import Transformer, apply_rope


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
        cfg = model.cfg
        self.n_heads, self.n_kv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.hd

    def forward(self, input_ids, attention_mask, position_ids, past: tuple[torch.Tensor, ...]):
        m, cfg = self.model, self.model.cfg
        B, T = input_ids.shape
        P = past[0].shape[2]
        # same cos/sin computation as the native forward (rope_cos_sin), kept inline for tracing
        inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, self.hd, 2, dtype=torch.int64).float() / self.hd))
        freqs = position_ids.float()[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
        # causal + padding mask as an additive bias; fully masked (padding) rows stay finite
        q_pos = torch.arange(T, device=input_ids.device) + P
        kv_pos = torch.arange(P + T, device=input_ids.device)
        allowed = (kv_pos[None, :] <= q_pos[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
        bias = torch.where(allowed, torch.zeros((), dtype=torch.float32),
                           torch.full((), torch.finfo(torch.float32).min, dtype=torch.float32))
        h = m.embed_tokens(input_ids)
        if cfg.scale_emb != 1.0:
            h = h * cfg.scale_emb
        present = []
        for i, layer in enumerate(m.layers):
            a, k, v = self._attention(layer.self_attn, layer.input_layernorm(h), cos, sin, bias, past[2 * i], past[2 * i + 1])
            present += [k, v]
            h = h + (a if layer.r_attn == 1.0 else a * layer.r_attn)
            f = layer.mlp(layer.post_attention_layernorm(h))
            h = h + (f if layer.r_ffn == 1.0 else f * layer.r_ffn)
        logits = m.project(m.norm(h))
        return (logits, *present)

    def _attention(self, attn, x, cos, sin, bias, past_k, past_v):
        B, T, _ = x.shape
        q = attn.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = attn.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = attn.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        k = torch.cat((past_k, k), dim=2)
        v = torch.cat((past_v, v), dim=2)
        kk, vv = k, v
        groups = self.n_heads // self.n_kv
        if groups > 1:  # GQA: each KV head serves `groups` query heads (same order as SDPA enable_gqa)
            S = k.shape[2]
            kk = k[:, :, None].expand(B, self.n_kv, groups, S, self.hd).reshape(B, self.n_heads, S, self.hd)
            vv = v[:, :, None].expand(B, self.n_kv, groups, S, self.hd).reshape(B, self.n_heads, S, self.hd)
        scores = torch.matmul(q, kk.transpose(-1, -2)) * (1.0 / self.hd ** 0.5) + bias
        y = torch.matmul(F.softmax(scores, dim=-1), vv)
        return attn.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd)), k, v


def example_inputs(model: Transformer, batch: int = 2, seq: int = 3, past: int = 4):
    """Tracing inputs with every dynamic axis > 1 so no size gets specialised."""
    cfg = model.cfg
    ids = torch.randint(0, cfg.vocab_size, (batch, seq), dtype=torch.int64)
    mask = torch.ones(batch, past + seq, dtype=torch.int64)
    pos = torch.arange(past, past + seq, dtype=torch.int64).expand(batch, seq).contiguous()
    kv = tuple(torch.randn(batch, cfg.n_kv_heads, past, cfg.hd) for _ in range(2 * cfg.n_layers))
    return ids, mask, pos, kv
