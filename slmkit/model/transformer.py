"""The native µP Llama decoder, in one readable file.

Pre-norm RMSNorm, GQA attention with RoPE (torch SDPA), SwiGLU MLP, tied embeddings, KV cache.
µP (Xmodel-2, Table 6): embeddings × scale_emb; each branch × scale_depth/√L before the residual add;
logits × scale_output/m. Parameter names match Hugging Face Llama (minus the `model.` prefix) so that
export is a rename plus the multiplier fold in slmkit.model.hf.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from slmkit.model.config import ModelConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin for the half-split RoPE layout Hugging Face Llama uses (positions: [B, T])."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # [B, T, hd/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


class KVCache:
    """Preallocated keys/values per layer; `length` tokens are valid. `crop(n)` rewinds for prefix reuse."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32) -> None:
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.hd)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.max_len = max_len
        self.length = 0

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def update(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = start + k.shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: {end} tokens > max_len {self.max_len}")
        self.k[layer][:, :, start:end] = k
        self.v[layer][:, :, start:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv, self.hd = layer, cfg.n_heads, cfg.n_kv_heads, cfg.hd
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.hd, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.hd, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.hd, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, mask, cache: KVCache | None, start: int) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.hd).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(self.layer, start, k, v)
        gqa = self.n_heads != self.n_kv
        if mask is None:  # plain causal attention over exactly these T tokens
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1, enable_gqa=gqa)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.hd))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down_proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.r_attn = cfg.residual_scale("attn")
        self.r_ffn = cfg.residual_scale("ffn")

    def forward(self, h, cos, sin, mask, cache, start):
        a = self.self_attn(self.input_layernorm(h), cos, sin, mask, cache, start)
        h = h + (a if self.r_attn == 1.0 else a * self.r_attn)
        f = self.mlp(self.post_attention_layernorm(h))
        return h + (f if self.r_ffn == 1.0 else f * self.r_ffn)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """µP init: every 2-D tensor ~ N(0, init_std/√m); norm gains 1."""
        std = self.cfg.init_std / math.sqrt(self.cfg.width_mult)
        for p in self.parameters():
            if p.ndim == 2:
                p.normal_(0.0, std, generator=generator)
            else:
                p.fill_(1.0)

    @property
    def output_weight(self) -> torch.Tensor:
        return self.embed_tokens.weight if self.lm_head is None else self.lm_head.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        cache: KVCache | None = None,
        start_pos: int | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        hidden_only: bool = False,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] (fp32, µP-scaled). With a cache, tokens go at `start_pos` (default cache.length).

        attention_mask: optional [B, kv_len] 1/0 padding mask over cached + new tokens (left padding);
        position_ids default to start_pos + arange(T).
        """
        B, T = input_ids.shape
        start = (cache.length if cache is not None else 0) if start_pos is None else start_pos
        if position_ids is None:
            position_ids = torch.arange(start, start + T, device=input_ids.device).expand(B, T)
        cos, sin = rope_cos_sin(position_ids, self.cfg.hd, self.cfg.rope_theta)
        kv_len = start + T
        mask = None
        if attention_mask is not None or (cache is not None and start > 0 and T > 1):
            q_pos = torch.arange(start, kv_len, device=input_ids.device)
            mask = torch.arange(kv_len, device=input_ids.device)[None, :] <= q_pos[:, None]  # [T, kv_len]
            mask = mask[None, None]
            if attention_mask is not None:
                pad = attention_mask[:, None, None, :kv_len].bool()
                mask = mask & pad
                # rows that are entirely padding would give NaN; let them attend to themselves
                diag = torch.zeros_like(mask)
                diag[..., torch.arange(T), q_pos] = True
                mask = mask | (diag & ~mask.any(-1, keepdim=True))
        h = self.embed_tokens(input_ids)
        if self.cfg.scale_emb != 1.0:
            h = h * self.cfg.scale_emb
        for layer in self.layers:  # (one new token with a cache needs no mask: it sees everything cached)
            h = layer(h, cos, sin, mask, cache, start)
        if cache is not None:
            cache.length = kv_len
        h = self.norm(h)
        if hidden_only:
            return h
        return self.project(h)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Final-norm hidden states → µP-scaled logits."""
        logits = F.linear(h, self.output_weight)
        scale = self.cfg.logit_scale
        return logits if scale == 1.0 else logits * scale

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    @torch.no_grad()
    def generate(self, input_ids: list[int], max_new_tokens: int, eos_id: int | None = None,
                 temperature: float = 0.0, top_k: int | None = None, generator: torch.Generator | None = None):
        """Minimal token generator (greedy or sampled) with a KV cache; yields token ids."""
        device = self.embed_tokens.weight.device
        total = min(len(input_ids) + max_new_tokens, self.cfg.max_seq_len)
        cache = KVCache(self.cfg, 1, total, device=device, dtype=self.embed_tokens.weight.dtype)
        ids = torch.tensor([input_ids], device=device)
        logits = self(ids, cache=cache)[:, -1]
        for _ in range(total - len(input_ids)):
            if temperature <= 0:
                nxt = int(logits.argmax(-1))
            else:
                scaled = logits.float() / temperature
                if top_k:
                    kth = torch.topk(scaled, min(top_k, scaled.shape[-1])).values[..., -1:]
                    scaled = scaled.masked_fill(scaled < kth, float("-inf"))
                nxt = int(torch.multinomial(F.softmax(scaled, -1), 1, generator=generator))
            yield nxt
            if eos_id is not None and nxt == eos_id:
                return
            logits = self(torch.tensor([[nxt]], device=device), cache=cache)[:, -1]
