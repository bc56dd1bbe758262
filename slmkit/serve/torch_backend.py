"""Native torch backend: any slmkit checkpoint or HF Llama folder through `load_any`.

`logits` is the reference forward (parity gates compare against it). Generation prefills with the
native model into a preallocated `KVCache`, then decodes with `FastDecoder`: the same weights fused
(q|k|v, gate|up) and norm gains / residual / attention scales riding inside the fused kernels
(rms_norm weight, addmm alpha, baddbmm alpha), so one token costs ~14 kernel launches per layer and no
per-step mask or tensor building. At small-model sizes the
per-step Python/dispatch overhead, not FLOPs, is what makes HF `generate` slow on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from slmkit.errors import SlmkitError
from slmkit.model.transformer import KVCache, Transformer
from slmkit.serve.base import Runtime, SamplingParams, common_prefix, group_by_context, sample_token, score_rows

MIN_PREFIX_REUSE = 64  # cached prefix tokens below which a context is recomputed from scratch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class FastDecoder:
    """Single-token decode (B = 1) over the model's own weights, with q|k|v and gate|up fused.

    Norm gains ride in `F.rms_norm`, residual scales in `addmm(alpha=r)`, the attention scale in
    `baddbmm(alpha=1/sqrt(hd))`, so only the two fused matrices are new. share=True re-points the model's
    q/k/v and gate/up parameters to views of those fused buffers (same names, shapes and values; no
    extra memory) — only for a model the runtime owns, since views sharing storage cannot be saved
    with safetensors. share=False copies them (about 2/3 of the layer weights extra).
    """

    def __init__(self, model: Transformer, share: bool = False) -> None:
        cfg = model.cfg
        self.cfg, self.model = cfg, model
        self.H, self.KV, self.hd, self.eps = cfg.n_heads, cfg.n_kv_heads, cfg.hd, cfg.norm_eps
        self.layers = []
        with torch.no_grad():
            for block in model.layers:
                att, mlp = block.self_attn, block.mlp
                wqkv = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight], 0).detach()
                wgu = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0).detach()
                if share:
                    _rebind([att.q_proj, att.k_proj, att.v_proj], wqkv)
                    _rebind([mlp.gate_proj, mlp.up_proj], wgu)
                self.layers.append((block.input_layernorm.weight.detach(), wqkv, att.o_proj.weight.detach().t(),
                                    block.r_attn, block.post_attention_layernorm.weight.detach(), wgu,
                                    mlp.down_proj.weight.detach().t(), block.r_ffn))
        self.emb = model.embed_tokens.weight.detach()
        self.out_w = model.output_weight.detach()
        self.final_gain = model.norm.weight.detach()
        self.zero = torch.zeros((), dtype=self.emb.dtype, device=self.emb.device)
        self._tables(cfg.max_seq_len)

    def _tables(self, n: int) -> None:
        """cos and sign-folded sin per position: rope(x) = x*cos + roll(x, hd/2)*sin_signed."""
        from slmkit.model.transformer import rope_cos_sin

        device = self.emb.device
        cos, sin = rope_cos_sin(torch.arange(n, device=device)[None], self.hd, self.cfg.rope_theta)
        half = self.hd // 2
        sign = torch.cat([-torch.ones(half, device=device), torch.ones(half, device=device)])
        self.cos, self.sin = cos[0].to(self.emb.dtype), (sin[0] * sign).to(self.emb.dtype)

    def step(self, token: int | torch.Tensor, pos: int, cache: KVCache) -> torch.Tensor:
        """Logits [vocab] for `token` at position `pos`; writes its K/V into `cache` (cache.length = pos + 1).

        Weights are detached, so no autograd graph is built even outside no_grad/inference_mode.
        """
        if pos >= self.cos.shape[0]:
            self._tables(max(pos + 1, 2 * self.cos.shape[0]))
        H, KV, hd, d, eps = self.H, self.KV, self.hd, self.cfg.d_model, self.eps
        half, nqk, scale = hd // 2, (H + KV) * hd, 1.0 / hd ** 0.5
        tok = token.view(1) if isinstance(token, torch.Tensor) else torch.tensor([token], device=self.emb.device)
        x = F.embedding(tok, self.emb)
        if self.cfg.scale_emb != 1.0:
            x = x * self.cfg.scale_emb
        cos, sin = self.cos[pos], self.sin[pos]
        L = pos + 1
        for i, (g1, wqkv, wo_t, r_attn, g2, wgu, wd_t, r_ffn) in enumerate(self.layers):
            qkv = F.linear(F.rms_norm(x, (d,), g1, eps), wqkv)
            qk = qkv[0, :nqk].view(H + KV, hd)
            qk = torch.addcmul(qk * cos, torch.roll(qk, half, -1), sin)  # RoPE on q and k at once
            kc, vc = cache.k[i][0], cache.v[i][0]  # [KV, max_len, hd]
            kc[:, pos] = qk[H:]
            vc[:, pos] = qkv[0, nqk:].view(KV, hd)
            q = qk[:H].view(KV, H // KV, hd)  # GQA: query heads grouped under their KV head
            att = torch.softmax(torch.baddbmm(self.zero, q, kc[:, :L].transpose(1, 2), beta=0, alpha=scale), -1)
            y = torch.bmm(att, vc[:, :L]).view(1, H * hd)
            x = torch.addmm(x, y, wo_t, alpha=r_attn)
            gate, up = F.linear(F.rms_norm(x, (d,), g2, eps), wgu).chunk(2, -1)
            x = torch.addmm(x, F.silu(gate).mul_(up), wd_t, alpha=r_ffn)
        cache.length = L
        logits = F.linear(F.rms_norm(x, (d,), self.final_gain, eps), self.out_w)[0]
        return logits if self.cfg.logit_scale == 1.0 else logits * self.cfg.logit_scale


    def step_batch(self, tokens: torch.Tensor, pos: torch.Tensor, slot: int, cache: KVCache,
                   bias: torch.Tensor) -> torch.Tensor:
        """Logits [B, vocab] for one new token per row; B rows share the weights' memory traffic.

        Row b's token sits at RoPE position `pos[b]` and is written to cache slot `slot` (the same for
        every row: prompts are left-padded); `bias` [B, 1, 1, slot + 1] is 0 where a row may attend and
        -inf on its padding. Decoding is memory-bound on CPU, so B rows cost little more than one.
        """
        need = int(pos.max()) + 1
        if need > self.cos.shape[0]:
            self._tables(max(need, 2 * self.cos.shape[0]))
        H, KV, hd, d, eps = self.H, self.KV, self.hd, self.cfg.d_model, self.eps
        B, half, nqk, scale = tokens.shape[0], hd // 2, (H + KV) * hd, 1.0 / hd ** 0.5
        x = F.embedding(tokens, self.emb)
        if self.cfg.scale_emb != 1.0:
            x = x * self.cfg.scale_emb
        cos, sin = self.cos[pos][:, None], self.sin[pos][:, None]  # [B, 1, hd]
        L = slot + 1
        for i, (g1, wqkv, wo_t, r_attn, g2, wgu, wd_t, r_ffn) in enumerate(self.layers):
            qkv = F.linear(F.rms_norm(x, (d,), g1, eps), wqkv)
            qk = qkv[:, :nqk].view(B, H + KV, hd)
            qk = torch.addcmul(qk * cos, torch.roll(qk, half, -1), sin)
            kc, vc = cache.k[i], cache.v[i]  # [B, KV, max_len, hd]
            kc[:, :, slot] = qk[:, H:]
            vc[:, :, slot] = qkv[:, nqk:].view(B, KV, hd)
            q = qk[:, :H].view(B, KV, H // KV, hd)
            att = torch.softmax(torch.matmul(q, kc[:, :, :L].transpose(-1, -2)).mul_(scale).add_(bias), -1)
            y = torch.matmul(att, vc[:, :, :L]).view(B, H * hd)
            x = torch.addmm(x, y, wo_t, alpha=r_attn)
            gate, up = F.linear(F.rms_norm(x, (d,), g2, eps), wgu).chunk(2, -1)
            x = torch.addmm(x, F.silu(gate).mul_(up), wd_t, alpha=r_ffn)
        cache.length = L
        logits = F.linear(F.rms_norm(x, (d,), self.final_gain, eps), self.out_w)
        return logits if self.cfg.logit_scale == 1.0 else logits * self.cfg.logit_scale


def _rebind(linears, fused: torch.Tensor) -> None:
    """Make each Linear's weight a row-slice view of `fused` (values unchanged)."""
    start = 0
    for lin in linears:
        rows = lin.weight.shape[0]
        lin.weight.data = fused[start:start + rows]
        start += rows


class TorchRuntime(Runtime):
    """Native model runtime.

    compile=True wraps the decode step in torch.compile (experimental: on CPU the 30-layer step compiled for
    over 4 minutes without finishing in our check, so it is off by default). `threads` sets torch's
    process-wide intra-op threads. For the fastest CPU decode, export ONNX --int8 (see benchmarks/decode_speed.py).
    """

    name = "torch"

    def __init__(self, path: str | Path | None = None, device: str = "cpu", dtype=torch.float32,
                 compile: bool = False, threads: int | None = None,
                 model: Transformer | None = None, tokenizer=None) -> None:
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise SlmkitError(f"torch backend: dtype '{dtype}' unknown (known: {', '.join(DTYPES)})")
            dtype = DTYPES[dtype]
        owns_model = model is None
        if model is None:
            if path is None:
                raise SlmkitError("torch backend: give a model path")
            from slmkit.model.hf import load_any

            model = load_any(path)
        self.path = Path(path) if path is not None else None
        self.device = torch.device(device)
        self.model = model.to(self.device, dtype).eval()
        self.cfg = model.cfg
        self.tokenizer = tokenizer
        if tokenizer is None and self.path is not None and (
                (self.path / "tokenizer.json").exists() or (self.path / "tokenizer.json.gz").exists()):
            from slmkit.model.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(self.path)
        if threads:
            torch.set_num_threads(int(threads))
        self.decoder = FastDecoder(self.model, share=owns_model)
        self._step = self.decoder.step
        # dynamo cannot trace under inference_mode here (internal assert), so compiled decode runs under no_grad
        self._mode = torch.no_grad if compile else torch.inference_mode
        if compile:
            self._step = torch.compile(self.decoder.step, dynamic=True)

    @classmethod
    def from_model(cls, model: Transformer, tokenizer=None, **kw) -> "TorchRuntime":
        """Wrap an in-memory model (tests, benchmarks, training-time evaluation)."""
        return cls(None, model=model, tokenizer=tokenizer, **kw)

    # ---- Runtime interface ----------------------------------------------------------------------------
    @torch.inference_mode()
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        if len(token_ids) == 0:
            raise SlmkitError(f"{self.path}: logits() needs at least one token id")
        ids = torch.tensor([list(token_ids)], dtype=torch.long, device=self.device)
        return self.model(ids)[0].float().cpu().numpy()

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        ids = [int(t) for t in prompt_ids] or [self._start_id()]
        budget = min(params.max_new_tokens, self.cfg.max_seq_len - len(ids))
        if budget <= 0:
            return
        cache = KVCache(self.cfg, 1, len(ids) + budget, device=self.device, dtype=self.decoder.emb.dtype)
        with self._mode():
            logits = self._last_logits(ids, cache)
        eos = self.eos_ids
        rng = np.random.default_rng(params.seed)
        greedy = params.temperature is None or params.temperature <= 0
        pos = len(ids)
        for i in range(budget):
            if greedy:
                nxt_t = torch.argmax(logits)
                nxt = int(nxt_t)
            else:
                nxt = sample_token(logits.float().cpu().numpy(), params, rng)
                nxt_t = torch.tensor(nxt, device=self.device)
            yield nxt
            if nxt in eos or i + 1 == budget:
                return
            with self._mode():
                logits = self._step(nxt_t, pos, cache)
            pos += 1

    @torch.inference_mode()
    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       done: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
        """Greedy continuations of several prompts decoded together (what evaluation needs).

        Each prompt is prefilled alone (no padding mask, the fast path), reusing the keys/values of the
        prefix it shares with the previous prompt in sorted order (few-shot exemplars: BBH, MATH, MBPP),
        then copied into a left-padded batch cache; all rows decode one token per step through `step_batch`. A row
        stops at EOS, at `max_new_tokens`, or when `done(row, ids)` says so (stop strings); finished rows
        leave the batch so the rest decode at their own width. Tokens equal `generate_ids` run per prompt
        up to float rounding in near-tied logits.
        """
        prompts = [[int(t) for t in p] or [self._start_id()] for p in prompts]
        out: list[list[int]] = [[] for _ in prompts]
        if not prompts or max_new_tokens <= 0:
            return out
        P = max(len(p) for p in prompts)
        budget = min(max_new_tokens, self.cfg.max_seq_len - P)
        if budget <= 0:
            return out
        dtype, dev, eos = self.decoder.emb.dtype, self.device, self.eos_ids
        B, total = len(prompts), P + budget
        cache = KVCache(self.cfg, B, total, device=dev, dtype=dtype)
        bias = torch.zeros((B, 1, 1, total), dtype=dtype, device=dev)
        first: list[torch.Tensor | None] = [None] * B
        work = KVCache(self.cfg, 1, P, device=dev, dtype=dtype)
        prev: list[int] = []
        for b in sorted(range(B), key=prompts.__getitem__):  # sorted: few-shot prompts sharing exemplars adjoin
            ids, pad = prompts[b], P - len(prompts[b])
            keep = min(common_prefix(prev, ids), len(ids) - 1)
            if keep < MIN_PREFIX_REUSE:
                keep = 0
            work.crop(keep)  # the shared prefix's keys/values stay; only the rest is computed
            h = self.model(torch.tensor([ids[keep:]], device=dev), cache=work, start_pos=keep, hidden_only=True)
            first[b] = self.model.project(h[:, -1])[0]
            for layer in range(self.cfg.n_layers):
                cache.k[layer][b, :, pad:P] = work.k[layer][0, :, :len(ids)]
                cache.v[layer][b, :, pad:P] = work.v[layer][0, :, :len(ids)]
            bias[b, ..., :pad] = float("-inf")
            prev = ids
        logits = torch.stack(first)  # type: ignore[arg-type]
        rows = list(range(B))  # batch row -> prompt index
        pos = torch.tensor([len(p) for p in prompts], device=dev)
        for step in range(budget):
            nxt = logits.argmax(-1)
            keep = []
            for r, b in enumerate(rows):
                t = int(nxt[r])
                out[b].append(t)
                if not (t in eos or (done is not None and done(b, out[b]))):
                    keep.append(r)
            if not keep or step + 1 == budget:
                break
            if len(keep) < len(rows):  # drop finished rows from the batch
                idx = torch.tensor(keep, device=dev)
                for layer in range(self.cfg.n_layers):
                    cache.k[layer] = cache.k[layer].index_select(0, idx)
                    cache.v[layer] = cache.v[layer].index_select(0, idx)
                bias, nxt, pos = bias.index_select(0, idx), nxt.index_select(0, idx), pos.index_select(0, idx)
                rows = [rows[r] for r in keep]
            logits = self.decoder.step_batch(nxt, pos, P + step, cache, bias[..., :P + step + 1])
            pos = pos + 1
        return out

    @torch.inference_mode()
    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int = 16,
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(sum log p(cont | ctx), cont is the greedy continuation) per request, in order.

        Multiple-choice requests share one long context and differ in a short continuation. Distinct
        contexts run once each, in sorted order, so a context reuses the KV cache of the common prefix
        it shares with the previous one (MMLU's 5-shot prefix, for one); only the last position gets
        logits; the continuations then run batched on copies of that cache. Scores equal a full
        forward pass up to float rounding. `progress(n)` is told as requests finish.
        """
        results, groups = group_by_context(requests, self._start_id())
        if progress and len(groups) < len(requests):
            progress(len(requests) - sum(len(v) for v in groups.values()))
        contexts = sorted(groups)
        longest = max((len(c) for c in contexts), default=1)
        cache = KVCache(self.cfg, 1, longest, device=self.device, dtype=self.decoder.emb.dtype)
        cached: tuple[int, ...] = ()
        for ctx in contexts:
            keep = min(common_prefix(cached, ctx), len(ctx) - 1)
            if keep < MIN_PREFIX_REUSE:  # a short shared prefix is not worth the masked (slower) attention path
                keep = 0
            cache.crop(keep)
            h = self.model(torch.tensor([ctx[keep:]], device=self.device), cache=cache, start_pos=keep, hidden_only=True)
            cached = ctx
            last = self.model.project(h[:, -1]).float()  # [1, vocab]: predicts each continuation's first token
            idxs = groups[ctx]
            for start in range(0, len(idxs), batch_size):
                chunk = idxs[start:start + batch_size]
                conts = [[int(t) for t in requests[i][1]] for i in chunk]
                rows = self._continuation_logits(cache, len(ctx), conts, last)
                for i, cont, lg in zip(chunk, conts, rows):
                    results[i] = score_rows(lg, cont)
            if progress:
                progress(len(idxs))
        return results  # type: ignore[return-value]

    def _continuation_logits(self, ctx_cache: KVCache, ctx_len: int, conts: list[list[int]], last):
        """Logits [len(cont), vocab] per continuation: `last` for its first token, the rest batched on the cache."""
        width = max(len(c) for c in conts) - 1
        if width == 0:
            return [last.cpu().numpy() for _ in conts]
        B = len(conts)
        cache = KVCache(self.cfg, B, ctx_len + width, device=self.device, dtype=self.decoder.emb.dtype)
        for layer in range(self.cfg.n_layers):
            cache.k[layer][:, :, :ctx_len] = ctx_cache.k[layer][:, :, :ctx_len]
            cache.v[layer][:, :, :ctx_len] = ctx_cache.v[layer][:, :, :ctx_len]
        cache.length = ctx_len
        ids = torch.zeros((B, width), dtype=torch.long, device=self.device)
        for b, c in enumerate(conts):  # right padding: causal attention keeps real rows exact
            ids[b, :len(c) - 1] = torch.tensor(c[:-1])
        out = self.model(ids, cache=cache).float()
        return [torch.cat([last, out[b, :len(c) - 1]], 0).cpu().numpy() for b, c in enumerate(conts)]

    def _last_logits(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        """Prefill `ids` into `cache`; logits of the last position only (not [T, vocab])."""
        h = self.model(torch.tensor([ids], device=self.device), cache=cache, hidden_only=True)
        return self.model.project(h[:, -1])[0]

    def _start_id(self) -> int:
        tok = self.tokenizer
        for t in (getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None), self.cfg.bos_token_id,
                  self.cfg.eos_token_id):
            if t is not None:
                return int(t)
        return 0

    @property
    def eos_ids(self) -> set[int]:
        ids = super().eos_ids if self.tokenizer is not None else set()
        if self.cfg.eos_token_id is not None:
            ids.add(int(self.cfg.eos_token_id))
        return ids
