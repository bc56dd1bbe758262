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
from slmkit.model.transformer import KVCache, Transformer
from slmkit.serve.base import Runtime, SamplingParams, sample_token

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class TorchRuntime(Runtime):
    """Native model runtime.

    compile=True wraps the decode step in torch.compile (experimental: on CPU the 30-layer step compiled for
    over 4 minutes without finishing in our check, so it is off by default). `threads` sets torch's
    process-wide intra-op threads. For the fastest CPU decode, export ONNX --int8 (see benchmarks/decode_speed.py).
    """

    name = "torch"
    engine_executor = "torch"

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
        ids = [int(t) for t in prompt_ids] or [self.start_id()]
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

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]], batch_size: int | None = None,
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(sum log p(cont | ctx), cont is the greedy continuation) per request, in order, on the engine:
        each distinct context once (its shared prefix from the prefix cache), many contexts per forward, the
        continuations on the context's keys/values. `batch_size` is accepted for older callers and unused
        (the engine's max_batch / max_step_tokens decide). `progress(n)` is told as requests finish."""
        return self.engine().loglikelihood(requests, progress=progress)

    def _last_logits(self, ids: list[int], cache: KVCache) -> torch.Tensor:
        """Prefill `ids` into `cache`; logits of the last position only (not [T, vocab])."""
        h = self.model(torch.tensor([ids], device=self.device), cache=cache, hidden_only=True, fused=self.fused)
        return self.model.project(h[:, -1])[0]

    def _decode_step(self, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Logits [vocab] of one new token after `cache` (which takes its keys/values)."""
        return self.model(token.view(1, 1), cache=cache, fused=self.fused)[0, -1]

    def start_id(self) -> int:
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
