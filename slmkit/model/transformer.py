"""The native µP Llama decoder and the one forward pass every runtime uses.

Pre-norm RMSNorm, GQA attention with RoPE, SwiGLU MLP, tied embeddings. µP (Xmodel-2, Table 6):
embeddings × scale_emb; each branch × scale_depth/√L before the residual add; logits × scale_output/m.
Parameter names match Hugging Face Llama (minus the `model.` prefix) so that export is a rename plus the
multiplier fold in slmkit.model.hf.

Where keys/values live and which tokens see which is the business of the cache object given to
`forward(..., cache=...)`; the layers are the same for all of them:

  None          plain causal attention over the given tokens (training, parity checks)
  KVCache       preallocated [B, KV, max_len, hd] per layer, every row at the same positions
                (prefill, single-stream decode, the minimal `generate`)
  ConcatCache   past tensors in, presents out, no Python state between calls (the ONNX graph)
  RowCache      many independent sequences ("rows") with their own lengths, packed into one forward per
                step: decode rows, prefill chunks and read-only scoring continuations together (the engine)

Inference asks the model for fused weights (`weights = model.fuse(share=...)`, then `forward(..., fused=
weights)`): q|k|v and gate|up as one matrix each, optionally with the separate parameters re-pointed to
row views of them (no copy; the fused matrices are not parameters, so they are never saved). With them
the forward runs norm gains inside `F.rms_norm` and residual scales inside `addmm(alpha=r)`: about 14
kernels per layer for a decode step. They are ignored while autograd records, so training always runs
the separate q/k/v/gate/up Linear modules (Muon orthogonalises each; µP groups and names do not change).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

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


# ---- RoPE (half-split layout, as Hugging Face Llama) ---------------------------------------------------

def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sign-folded sin [..., hd] for `positions` [...]: rope(x) = x*cos + roll(x, hd/2)*sin.

    The sign fold (-sin on the first half, +sin on the second) turns HF's rotate_half into a roll, so
    rope is two multiplies and an add; the values are exactly HF's (a sign flip is exact)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim))
    freqs = positions.float()[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)
    half = head_dim // 2
    sign = torch.cat((-torch.ones(half, device=positions.device), torch.ones(half, device=positions.device)))
    return emb.cos(), emb.sin() * sign


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, heads, hd] with cos/sin (from rope_cos_sin) broadcastable to it."""
    return torch.addcmul(x * cos, torch.roll(x, x.shape[-1] // 2, -1), sin)


# ---- attention kernels and caches ----------------------------------------------------------------------

def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask=None, causal: bool = False) -> torch.Tensor:
    """q [B, H, T, hd], k/v [B, KV, S, hd] -> [B, H, T, hd] (grouped-query heads without copying k/v)."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=q.shape[1] != k.shape[1])


def _merge_heads(y: torch.Tensor) -> torch.Tensor:
    """[B, H, T, hd] -> [B, T, H*hd]."""
    B, H, T, hd = y.shape
    return y.transpose(1, 2).reshape(B, T, H * hd)


def causal_mask(start: int, T: int, device, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean [B|1, 1, T, start+T]: query i (at position start+i) sees keys 0..start+i, minus padding
    (attention_mask [B, kv_len] 1/0). Rows that would see nothing see themselves (no NaN from padding)."""
    kv_len = start + T
    q_pos = torch.arange(start, kv_len, device=device)
    mask = (torch.arange(kv_len, device=device)[None, :] <= q_pos[:, None])[None, None]
    if attention_mask is not None:
        mask = mask & attention_mask[:, None, None, :kv_len].bool()
        diag = torch.zeros_like(mask)
        diag[..., torch.arange(T, device=device), q_pos] = True
        mask = mask | (diag & ~mask.any(-1, keepdim=True))
    return mask


class Causal:
    """No cache: causal attention over exactly the given tokens (optionally with a padding mask)."""

    rope_tables = False  # cos/sin computed in the graph (torch.compile, tracing)

    def prepare(self, B, T, device, start_pos, attention_mask, position_ids):
        self.mask = None if attention_mask is None else causal_mask(0, T, device, attention_mask)
        return position_ids if position_ids is not None else 0

    def attend(self, layer, q, k, v):
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if self.mask is None:
            return _merge_heads(_sdpa(q, k, v, causal=q.shape[2] > 1))
        return _merge_heads(_sdpa(q, k, v, mask=self.mask))

    def commit(self, T):
        pass


class KVCache:
    """Preallocated keys/values per layer; `length` tokens are valid for every row. `crop(n)` rewinds."""

    rope_tables = True

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32) -> None:
        shape = (batch_size, cfg.n_kv_heads, max_len, cfg.hd)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(cfg.n_layers)]
        self.max_len = max_len
        self.length = 0

    def crop(self, length: int) -> None:
        self.length = min(self.length, length)

    def prepare(self, B, T, device, start_pos, attention_mask, position_ids):
        start = self.length if start_pos is None else start_pos
        if start + T > self.max_len:
            raise ValueError(f"KV cache overflow: {start + T} tokens > max_len {self.max_len}")
        self.start, self.end = start, start + T
        # one new token sees everything cached; a first chunk is plain causal; later chunks need a mask
        if attention_mask is not None or (start > 0 and T > 1):
            self.mask, self.causal = causal_mask(start, T, device, attention_mask), False
        else:
            self.mask, self.causal = None, T > 1
        return position_ids if position_ids is not None else start

    def attend(self, layer, q, k, v):
        s, e = self.start, self.end
        self.k[layer][:, :, s:e] = k.transpose(1, 2)
        self.v[layer][:, :, s:e] = v.transpose(1, 2)
        y = _sdpa(q.transpose(1, 2), self.k[layer][:, :, :e], self.v[layer][:, :, :e], self.mask, self.causal)
        return _merge_heads(y)

    def commit(self, T):
        self.length = self.end


class ConcatCache:
    """Explicit past tensors (flat [k0, v0, k1, v1, ...], each [B, KV, P, hd]); after a forward `present`
    holds past + new per layer. Everything is a traceable tensor op: the ONNX decoder graph uses it.
    The attention is written out (matmul, additive bias, softmax; KV heads expanded) because that is what
    exporters and ONNX Runtime handle everywhere."""

    rope_tables = False

    def __init__(self, past: Sequence[torch.Tensor]) -> None:
        self.past = list(past)
        self.present: list[torch.Tensor] = []

    def prepare(self, B, T, device, start_pos, attention_mask, position_ids):
        P = self.past[0].shape[2]
        q_pos = torch.arange(T, device=device) + P
        kv_pos = torch.arange(P + T, device=device)
        allowed = (kv_pos[None, :] <= q_pos[:, None])[None, None] & (attention_mask[:, None, None, :] > 0)
        self.bias = torch.where(allowed, torch.zeros((), dtype=torch.float32),
                                torch.full((), torch.finfo(torch.float32).min, dtype=torch.float32))
        return position_ids

    def attend(self, layer, q, k, v):
        k = torch.cat((self.past[2 * layer], k.transpose(1, 2)), dim=2)
        v = torch.cat((self.past[2 * layer + 1], v.transpose(1, 2)), dim=2)
        self.present += [k, v]
        q = q.transpose(1, 2)
        B, H, T, hd = q.shape
        KV, S = k.shape[1], k.shape[2]
        groups = H // KV
        if groups > 1:  # each KV head serves `groups` query heads (the order SDPA's enable_gqa uses)
            k = k[:, :, None].expand(B, KV, groups, S, hd).reshape(B, H, S, hd)
            v = v[:, :, None].expand(B, KV, groups, S, hd).reshape(B, H, S, hd)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / hd ** 0.5) + self.bias
        return _merge_heads(torch.matmul(F.softmax(scores, dim=-1), v))

    def commit(self, T):
        pass


@dataclass
class Segment:
    """A run of `n` new tokens of one row in a packed RowCache forward, at positions start..start+n-1.

    store=True: the row's keys/values at those positions are written (prefill chunk or decode token).
    store=False: a read-only child of the row (a scoring continuation): it attends to the row's first
    `start` cached tokens and to itself, and keeps nothing, so many children share one context's KV."""

    row: int
    start: int
    n: int
    store: bool = True


class RowCache:
    """Keys/values of up to `rows` independent sequences, each with its own length (the engine's cache).

    k/v are [n_layers, rows, KV, max_len, hd]; `grow` adds rows or positions (keeping what is stored). A forward
    over a packed step (`step(segments)`: input_ids [1, N], the segments tiling N) writes every stored
    token's keys/values in one indexed copy per layer, then attends: all one-token rows together (one
    SDPA over their span of rows, with a per-row length mask), each prefill chunk on its own row, and
    each row's children over the row's cache plus themselves (no copy of the shared context).
    """

    def __init__(self, cfg: ModelConfig, rows: int, max_len: int, device=None, dtype=torch.float32) -> None:
        self.cfg, self.device, self.dtype = cfg, device, dtype
        self.rows = self.max_len = 0
        self.k = self.v = None
        self.grow(max_len, rows)

    def grow(self, max_len: int | None = None, rows: int | None = None) -> None:
        """Make room for `max_len` positions per row and `rows` rows (keeps what is stored)."""
        new_len, new_rows = max(max_len or 0, self.max_len), max(rows or 0, self.rows)
        if self.k is not None and (new_len, new_rows) == (self.max_len, self.rows):
            return
        cfg = self.cfg
        shape = (cfg.n_layers, new_rows, cfg.n_kv_heads, new_len, cfg.hd)
        k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        if self.k is not None:
            k[:, :self.rows, :, :self.max_len] = self.k
            v[:, :self.rows, :, :self.max_len] = self.v
        self.k, self.v, self.max_len, self.rows = k, v, new_len, new_rows

    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def copy_row(self, src: int, dst: int, length: int) -> None:
        """Row `dst` takes row `src`'s first `length` positions (compaction, prefix sharing)."""
        if src != dst and length:
            self.k[:, dst, :, :length] = self.k[:, src, :, :length]
            self.v[:, dst, :, :length] = self.v[:, src, :, :length]

    def step(self, segments: Sequence[Segment]) -> "RowStep":
        return RowStep(self, list(segments))


class RowStep:
    """One packed forward over a RowCache (see RowCache); built by `RowCache.step(segments)`."""

    rope_tables = True

    def __init__(self, cache: RowCache, segments: list[Segment]) -> None:
        self.cache, self.segments = cache, segments
        dev = cache.device
        offsets, pos, need = [], [], 0
        at = 0
        for s in segments:
            offsets.append(at)
            pos.append(torch.arange(s.start, s.start + s.n))
            at += s.n
            need = max(need, s.start + s.n)
        if need > cache.max_len:
            raise ValueError(f"row cache overflow: position {need} > max_len {cache.max_len} (grow it first)")
        self.n_tokens, self.offsets = at, offsets
        self.positions = torch.cat(pos)[None].to(dev) if pos else torch.zeros((1, 0), dtype=torch.long, device=dev)
        stored = [(s, o) for s, o in zip(segments, offsets) if s.store]
        tok_idx = [o + i for s, o in stored for i in range(s.n)]
        self.write_tok = torch.tensor(tok_idx, dtype=torch.long, device=dev)
        self.write_row = torch.tensor([s.row for s, _ in stored for _ in range(s.n)], dtype=torch.long, device=dev)
        self.write_pos = torch.cat([torch.arange(s.start, s.start + s.n) for s, _ in stored]).to(dev) if stored else self.write_tok
        # one-token stored segments attend together over their span of rows
        single = [(s, o) for s, o in stored if s.n == 1]
        self.single = None
        if single:
            rows = [s.row for s, _ in single]
            lo, hi = min(rows), max(rows) + 1
            length = max(s.start for s, _ in single) + 1
            contiguous = rows == list(range(lo, hi))
            lens = torch.ones(hi - lo, dtype=torch.long)  # rows in the span that are not decoding see position 0
            for s, _ in single:
                lens[s.row - lo] = s.start + 1
            bias = torch.zeros((hi - lo, 1, 1, length), dtype=cache.dtype)
            bias.masked_fill_((torch.arange(length)[None, :] >= lens[:, None])[:, None, None], float("-inf"))
            self.single = dict(lo=lo, hi=hi, length=length, contiguous=contiguous, bias=bias.to(dev),
                               tok=torch.tensor([o for _, o in single], device=dev),
                               row=torch.tensor([s.row - lo for s, _ in single], device=dev))
        self.chunks = []  # (token offset, segment, mask or None)
        for s, o in stored:
            if s.n > 1:
                self.chunks.append((o, s, None if s.start == 0 else causal_mask(s.start, s.n, dev)))
        self.children = self._group_children(dev)

    def _group_children(self, dev):
        """Children per parent row, right-padded to one width: (row, ctx_len, offsets, lengths, width, own_bias)."""
        by_row: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for s, o in zip(self.segments, self.offsets):
            if not s.store and s.n:
                by_row.setdefault((s.row, s.start), []).append((o, s.n))
        groups = []
        for (row, ctx_len), kids in by_row.items():
            width = max(n for _, n in kids)
            idx = torch.tensor([o + min(i, n - 1) for o, n in kids for i in range(width)], device=dev)
            valid = torch.tensor([[i < n for i in range(width)] for _, n in kids], device=dev)  # [C, width]
            own = torch.ones(width, width, dtype=torch.bool, device=dev).tril()[None] & valid[:, None, :]
            bias = torch.zeros(own.shape, dtype=self.cache.dtype, device=dev).masked_fill_(~own, float("-inf"))
            keep = valid.reshape(-1).nonzero()[:, 0]  # padded slots are computed, then dropped
            groups.append(dict(row=row, ctx=ctx_len, kids=kids, width=width, idx=idx, bias=bias[:, None],
                               keep=keep, dst=idx.index_select(0, keep)))
        return groups

    def prepare(self, B, T, device, start_pos, attention_mask, position_ids):
        if B != 1 or T != self.n_tokens or start_pos is not None or attention_mask is not None or position_ids is not None:
            raise ValueError(f"a RowCache step takes input_ids [1, {self.n_tokens}] and nothing else")
        return self.positions

    def attend(self, layer, q, k, v):
        c = self.cache
        K, V = c.k[layer], c.v[layer]  # [rows, KV, max_len, hd]
        q, k, v = q[0], k[0], v[0]  # [N, heads, hd]
        if self.write_tok.numel():
            K[self.write_row, :, self.write_pos] = k.index_select(0, self.write_tok)
            V[self.write_row, :, self.write_pos] = v.index_select(0, self.write_tok)
        N, H, hd = q.shape
        out = q.new_empty((N, H, hd))
        sg = self.single
        if sg is not None:
            lo, hi, L = sg["lo"], sg["hi"], sg["length"]
            qs = q.index_select(0, sg["tok"])  # [m, H, hd]
            if not sg["contiguous"]:
                full = q.new_zeros((hi - lo, H, hd))
                full.index_copy_(0, sg["row"], qs)
                qs = full
            y = _sdpa(qs[:, :, None], K[lo:hi, :, :L], V[lo:hi, :, :L], mask=sg["bias"])[:, :, 0]  # [rows, H, hd]
            if not sg["contiguous"]:
                y = y.index_select(0, sg["row"])
            out.index_copy_(0, sg["tok"], y)
        for o, s, mask in self.chunks:
            end = s.start + s.n
            qc = q[o:o + s.n].transpose(0, 1)[None]  # [1, H, n, hd]
            y = _sdpa(qc, K[s.row:s.row + 1, :, :end], V[s.row:s.row + 1, :, :end], mask=mask, causal=mask is None)
            out[o:o + s.n] = y[0].transpose(0, 1)
        for g in self.children:
            out.index_copy_(0, g["dst"], self._child_attention(g, q, k, v, K, V).index_select(0, g["keep"]))
        return out.view(1, N, H * hd)

    def _child_attention(self, g, q, k, v, K, V):
        """Children of one row: softmax over [row's ctx keys ; own keys], the context shared (no copy).
        Returns [C*width, H, hd], padded slots included."""
        C, W = len(g["kids"]), g["width"]
        Hq, hd = q.shape[1], q.shape[2]
        KV = K.shape[1]
        G = Hq // KV
        scale = 1.0 / math.sqrt(hd)
        qc = q.index_select(0, g["idx"]).view(C, W, KV, G, hd)
        kc = k.index_select(0, g["idx"]).view(C, W, KV, hd).permute(0, 2, 3, 1)  # [C, KV, hd, W]
        vc = v.index_select(0, g["idx"]).view(C, W, KV, hd).transpose(1, 2)  # [C, KV, W, hd]
        kp, vp = K[g["row"], :, :g["ctx"]], V[g["row"], :, :g["ctx"]]  # [KV, ctx, hd]
        qg = qc.permute(2, 0, 3, 1, 4).reshape(KV, C * G * W, hd)  # every child's query rows under its KV head
        s_ctx = torch.matmul(qg, kp.transpose(-1, -2)).view(KV, C, G * W, -1).transpose(0, 1)  # [C, KV, G*W, ctx]
        s_own = torch.matmul(qc.permute(0, 2, 3, 1, 4).reshape(C, KV, G * W, hd), kc)  # [C, KV, G*W, W]
        s_own = s_own.view(C, KV, G, W, W).add_(g["bias"][:, :, None]).view(C, KV, G * W, W)
        p = torch.softmax(torch.cat((s_ctx, s_own), -1).mul_(scale), -1)
        n_ctx = s_ctx.shape[-1]
        y_ctx = torch.matmul(p[..., :n_ctx].transpose(0, 1).reshape(KV, C * G * W, n_ctx), vp).view(KV, C, G * W, hd)
        y = y_ctx.transpose(0, 1) + torch.matmul(p[..., n_ctx:], vc)  # [C, KV, G*W, hd]
        return y.reshape(C, KV, G, W, hd).permute(0, 3, 1, 2, 4).reshape(C * W, Hq, hd)

    def commit(self, T):
        pass


# ---- the model -------------------------------------------------------------------------------------------

class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv, self.hd = layer, cfg.n_heads, cfg.n_kv_heads, cfg.hd
        self.q_proj = nn.Linear(cfg.d_model, cfg.n_heads * cfg.hd, bias=False)
        self.k_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.hd, bias=False)
        self.v_proj = nn.Linear(cfg.d_model, cfg.n_kv_heads * cfg.hd, bias=False)
        self.o_proj = nn.Linear(cfg.n_heads * cfg.hd, cfg.d_model, bias=False)

    def forward(self, x, cos, sin, cache) -> torch.Tensor:
        """Attention output before o_proj, [B, T, H*hd]."""
        B, T, _ = x.shape
        H, KV, hd = self.n_heads, self.n_kv, self.hd
        q = apply_rope(self.q_proj(x).view(B, T, H, hd), cos, sin)
        k = apply_rope(self.k_proj(x).view(B, T, KV, hd), cos, sin)
        v = self.v_proj(x).view(B, T, KV, hd)
        return cache.attend(self.layer, q, k, v)


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
        self.layer, self.eps, self.d = layer, cfg.norm_eps, cfg.d_model
        self.heads = (cfg.n_heads, cfg.n_kv_heads, cfg.hd)

    def forward(self, h, cos, sin, cache):
        a = self.self_attn.o_proj(self.self_attn(self.input_layernorm(h), cos, sin, cache))
        h = h + (a if self.r_attn == 1.0 else a * self.r_attn)
        f = self.mlp(self.post_attention_layernorm(h))
        return h + (f if self.r_ffn == 1.0 else f * self.r_ffn)

    def fused_forward(self, h, cos, sin, cache, w):
        """The same sums with fused weights `w` (see Transformer.fuse): norm gains inside rms_norm, one q|k|v
        matmul with RoPE on q and k at once, o/down projection + residual scale in one addmm each."""
        g1, wqkv, wo_t, g2, wgu, wd_t = w
        (H, KV, hd), d, eps = self.heads, self.d, self.eps
        B, T, _ = h.shape
        qkv = F.linear(F.rms_norm(h, (d,), g1, eps), wqkv)
        nqk = (H + KV) * hd
        qk = apply_rope(qkv[..., :nqk].view(B, T, H + KV, hd), cos, sin)
        y = cache.attend(self.layer, qk[:, :, :H], qk[:, :, H:], qkv[..., nqk:].view(B, T, KV, hd))
        x = torch.addmm(h.view(-1, d), y.view(-1, H * hd), wo_t, alpha=self.r_attn)
        gate, up = F.linear(F.rms_norm(x, (d,), g2, eps), wgu).chunk(2, -1)
        return torch.addmm(x, F.silu(gate).mul_(up), wd_t, alpha=self.r_ffn).view(B, T, d)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self._rope: dict = {}  # cos/sin tables per device (plain attribute: never in state_dict)
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

    # ---- inference helpers -------------------------------------------------------------------------
    def fuse(self, share: bool = False) -> "FusedWeights":
        """Fused inference weights for `forward(..., fused=...)`: q|k|v and gate|up per layer.

        share=True re-points each q/k/v and gate/up parameter to a row view of its fused matrix (same names,
        shapes and values, no extra memory; in-place updates keep both in step): for a model that only
        inference holds, since views sharing storage cannot be saved with safetensors. share=False copies
        (about 2/3 of the layer weights extra) and is a snapshot of the weights at this call."""
        with torch.inference_mode(False), torch.no_grad():  # ordinary tensors: training may resume later
            layers = []
            for block in self.layers:
                att, mlp = block.self_attn, block.mlp
                wqkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight], 0).detach()
                wgu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0).detach()
                if share:
                    _rebind([att.q_proj, att.k_proj, att.v_proj], wqkv)
                    _rebind([mlp.gate_proj, mlp.up_proj], wgu)
                layers.append((block.input_layernorm.weight.detach(), wqkv, att.o_proj.weight.detach().t(),
                               block.post_attention_layernorm.weight.detach(), wgu, mlp.down_proj.weight.detach().t()))
        return FusedWeights(layers, shared=share)

    def _rope_table(self, n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin rows for positions 0..n-1 (at least max_seq_len), computed once per device."""
        have = self._rope.get(device)
        if have is None or have[0].shape[0] < n:
            size = max(n, self.cfg.max_seq_len, 2 * have[0].shape[0] if have is not None else 0)
            with torch.inference_mode(False), torch.no_grad():
                have = rope_cos_sin(torch.arange(size, device=device), self.cfg.hd, self.cfg.rope_theta)
            self._rope[device] = have
        return have

    def _rope_for(self, positions, T: int, cache, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B|1, T, 1, hd] for the new tokens; `positions` is a start offset (int) or [B, T]."""
        if isinstance(positions, int):
            if not cache.rope_tables:
                positions = torch.arange(positions, positions + T, device=device)[None]
            else:
                cos, sin = self._rope_table(positions + T, device)
                return cos[positions:positions + T][None, :, None], sin[positions:positions + T][None, :, None]
        if not cache.rope_tables:
            cos, sin = rope_cos_sin(positions, self.cfg.hd, self.cfg.rope_theta)
            return cos[:, :, None], sin[:, :, None]
        n = int(positions.max()) + 1 if positions.numel() else 1
        cos, sin = self._rope_table(n, device)
        return cos[positions][:, :, None], sin[positions][:, :, None]

    # ---- forward ---------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor,
        cache=None,
        start_pos: int | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        hidden_only: bool = False,
        fused: "FusedWeights | None" = None,
    ) -> torch.Tensor:
        """Logits [B, T, vocab] (fp32, µP-scaled), or final-norm hidden states with hidden_only.

        cache: None, KVCache (tokens go at `start_pos`, default cache.length), ConcatCache or a RowCache
        step (see the module docstring). attention_mask: optional [B, kv_len] 1/0 padding mask over cached +
        new tokens (left padding); position_ids default to start_pos + arange(T).
        fused: weights from `fuse()`; used only where no gradient is recorded and the cache keeps
        tables (not while tracing), so passing them never changes what training computes.
        """
        B, T = input_ids.shape
        att = Causal() if cache is None else cache
        positions = att.prepare(B, T, input_ids.device, start_pos, attention_mask, position_ids)
        cos, sin = self._rope_for(positions, T, att, input_ids.device)
        if fused is not None and (torch.is_grad_enabled() or not att.rope_tables):
            fused = None
        h = self.embed_tokens(input_ids) if fused is None else F.embedding(input_ids, self.embed_tokens.weight)
        if self.cfg.scale_emb != 1.0:
            h = h * self.cfg.scale_emb
        if fused is None:
            for layer in self.layers:
                h = layer(h, cos, sin, att)
        else:  # plain method calls: inference has no module hooks to run
            for layer, w in zip(self.layers, fused.layers):
                h = layer.fused_forward(h, cos, sin, att, w)
        att.commit(T)
        h = self.norm(h) if fused is None else F.rms_norm(h, (h.shape[-1],), self.norm.weight, self.norm.eps)
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


@dataclass
class FusedWeights:
    """Per layer (input norm gain, w_qkv, w_o^T, post-attention norm gain, w_gate_up, w_down^T), from
    `Transformer.fuse`."""

    layers: list
    shared: bool


def _rebind(linears, fused: torch.Tensor) -> None:
    """Make each Linear's weight a row-slice view of `fused` (values unchanged)."""
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[start:start + rows]
        start += rows
