"""Native torch backend: any slmkit checkpoint or HF Llama folder through `load_any`.

`logits` is the reference forward (parity gates compare against it). Generation runs the same native
forward (slmkit.model.transformer) with the model's fused inference weights (`Transformer.fuse`:
q|k|v and gate|up as one matrix each, norm gains and residual scales riding inside the kernels), so one
decode token costs ~14 kernel launches per layer and no per-step mask or tensor building. At
small-model sizes the per-step Python/dispatch overhead, not FLOPs, is what makes HF `generate` slow on CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from slmkit.errors import SlmkitError
from slmkit.model.transformer import KVCache, RowCache, Segment, Transformer
from slmkit.serve.base import Runtime, SamplingParams, common_prefix, group_by_context, sample_token, score_rows

MIN_PREFIX_REUSE = 64  # cached prefix tokens below which a context is recomputed from scratch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


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
        # a runtime that owns its model shares the fused buffers (no copy); a lent model gets a copy
        self.fused = self.model.fuse(share=owns_model)
        self.dtype = self.model.embed_tokens.weight.dtype
        self._step = self._decode_step
        # dynamo cannot trace under inference_mode here (internal assert), so compiled decode runs under no_grad
        self._mode = torch.no_grad if compile else torch.inference_mode
        if compile:
            self._step = torch.compile(self._decode_step, dynamic=True)

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
        cache = KVCache(self.cfg, 1, len(ids) + budget, device=self.device, dtype=self.dtype)
        with self._mode():
            logits = self._last_logits(ids, cache)
        eos = self.eos_ids
        rng = np.random.default_rng(params.seed)
        greedy = params.temperature is None or params.temperature <= 0
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
                logits = self._step(nxt_t, cache)

    @torch.inference_mode()
    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       done: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
        """Greedy continuations of several prompts decoded together (what evaluation needs).

        Each prompt is prefilled into its own row of a RowCache, reusing the keys/values of the prefix it
        shares with the previous prompt in sorted order (few-shot exemplars: BBH, MATH, MBPP); then every
        live row decodes one token per step in one forward. A row stops at EOS, at `max_new_tokens`, or when
        `done(row, ids)` says so (stop strings).
        """
        prompts = [[int(t) for t in p] or [self._start_id()] for p in prompts]
        out: list[list[int]] = [[] for _ in prompts]
        if not prompts or max_new_tokens <= 0:
            return out
        P = max(len(p) for p in prompts)
        budget = min(max_new_tokens, self.cfg.max_seq_len - P)
        if budget <= 0:
            return out
        dev, eos = self.device, self.eos_ids
        B = len(prompts)
        cache = RowCache(self.cfg, B, P + budget, device=dev, dtype=self.dtype)
        first: list[torch.Tensor | None] = [None] * B
        prev = None
        for b in sorted(range(B), key=prompts.__getitem__):  # sorted: few-shot prompts sharing exemplars adjoin
            ids = prompts[b]
            keep = min(common_prefix(prompts[prev], ids), len(ids) - 1) if prev is not None else 0
            cache.copy_row(prev if prev is not None else b, b, keep)
            h = self.model(torch.tensor([ids[keep:]], device=dev), cache=cache.step([Segment(b, keep, len(ids) - keep)]),
                           hidden_only=True, fused=self.fused)
            first[b] = self.model.project(h[0, -1])
            prev = b
        logits = torch.stack(first)  # type: ignore[arg-type]
        live = list(range(B))
        pos = [len(p) for p in prompts]
        for step in range(budget):
            nxt = logits.argmax(-1).tolist()
            keep_rows = []
            for r, b in enumerate(live):
                t = nxt[r]
                out[b].append(t)
                if not (t in eos or (done is not None and done(b, out[b]))):
                    keep_rows.append(r)
            if not keep_rows or step + 1 == budget:
                break
            live = [live[r] for r in keep_rows]
            toks = torch.tensor([[nxt[r] for r in keep_rows]], device=dev)
            h = self.model(toks, cache=cache.step([Segment(b, pos[b], 1) for b in live]), hidden_only=True, fused=self.fused)
            logits = self.model.project(h[0])
            for b in live:
                pos[b] += 1
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
        cache = KVCache(self.cfg, 1, longest, device=self.device, dtype=self.dtype)
        cached: tuple[int, ...] = ()
        for ctx in contexts:
            keep = min(common_prefix(cached, ctx), len(ctx) - 1)
            if keep < MIN_PREFIX_REUSE:  # a short shared prefix is not worth the masked (slower) attention path
                keep = 0
            cache.crop(keep)
            h = self.model(torch.tensor([ctx[keep:]], device=self.device), cache=cache, start_pos=keep, hidden_only=True,
                           fused=self.fused)
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
        cache = KVCache(self.cfg, B, ctx_len + width, device=self.device, dtype=self.dtype)
        for layer in range(self.cfg.n_layers):
            cache.k[layer][:, :, :ctx_len] = ctx_cache.k[layer][:, :, :ctx_len]
            cache.v[layer][:, :, :ctx_len] = ctx_cache.v[layer][:, :, :ctx_len]
        cache.length = ctx_len
        ids = torch.zeros((B, width), dtype=torch.long, device=self.device)
        for b, c in enumerate(conts):  # right padding: causal attention keeps real rows exact
            ids[b, :len(c) - 1] = torch.tensor(c[:-1])
        out = self.model(ids, cache=cache, fused=self.fused).float()
        return [torch.cat([last, out[b, :len(c) - 1]], 0).cpu().numpy() for b, c in enumerate(conts)]

    def _last_logits(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        """Prefill `ids` into `cache`; logits of the last position only (not [T, vocab])."""
        h = self.model(torch.tensor([ids], device=self.device), cache=cache, hidden_only=True, fused=self.fused)
        return self.model.project(h[:, -1])[0]

    def _decode_step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [vocab] of one new token after `cache` (which takes its keys/values)."""
        return self.model(token.view(1, 1), cache=cache, fused=self.fused)[0, -1]

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
