"""One runtime interface for every backend (torch, llama.cpp, ONNX Runtime, vLLM).

A backend implements `logits` (full-sequence float32 logits: parity gates and scoring) and `generate_ids`
(its own fast decode loop); `generate_batch` and `loglikelihood` have serial defaults here that a backend
overrides with a batched path (torch: a batch KV cache; llama.cpp: parallel sequences), so callers never
probe for them.
Everything text-level — chat templates, stop strings, streaming detokenisation — lives once: here and in
serve.text (`TextStream`) and serve.sampling (SamplingParams, sampling, scoring helpers; re-exported
here). `Runtime.engine()` gives the runtime's generation engine (slmkit.serve.engine), through which
`generate_batch` runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.serve.sampling import (SamplingParams, common_prefix, group_by_context, log_softmax, sample_token,  # noqa: F401
                                   score_rows)
from slmkit.serve.text import TextStream, first_stop  # noqa: F401


class Runtime:
    """Base class: subclasses set `name`, `tokenizer`, `path` and implement logits / generate_ids."""

    name = "base"
    tokenizer = None
    path: Path | None = None

    # ---- to implement -------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """Float32 logits [len(token_ids), vocab] for every position."""
        raise NotImplementedError

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        """Yield new token ids until max_new_tokens or EOS (the base handles stop strings)."""
        raise NotImplementedError

    def close(self) -> None:  # free native resources
        self.close_engine()

    def close_engine(self) -> None:
        """Close every engine made on this runtime (before the runtime frees what they run on)."""
        for engine in list(getattr(self, "_engines", ())):
            engine.close()
        self._engine = None

    # ---- shared behaviour ---------------------------------------------------------------------
    @property
    def eos_ids(self) -> set[int]:
        ids = set()
        tok = self.tokenizer
        for t in (getattr(tok, "eos_token_id", None),):
            if t is not None:
                ids.add(int(t))
        for name in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = tok.convert_tokens_to_ids(name) if tok is not None else None
            if isinstance(tid, int) and tid != getattr(tok, "unk_token_id", None) and tid >= 0:
                ids.add(tid)
        return ids

    def encode_prompt(self, prompt) -> list[int]:
        """Text → ids; chat messages go through the tokenizer's own chat template."""
        if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
            if not getattr(self.tokenizer, "chat_template", None):
                raise SlmkitError(f"{self.path}: the tokenizer has no chat template; pass plain text instead of messages")
            out = self.tokenizer.apply_chat_template(list(prompt), add_generation_prompt=True, tokenize=True)
            if hasattr(out, "keys") and "input_ids" in out:
                out = out["input_ids"]
            return [int(t) for t in out]
        if isinstance(prompt, (list, tuple)):
            return [int(t) for t in prompt]
        return self.tokenizer.encode(prompt, add_special_tokens=False)

    def generate(self, prompt, params: SamplingParams | None = None, stop: Sequence[str] = ()) -> Iterator[str]:
        """Stream text pieces; stops at EOS, max_new_tokens or the first stop string (not included)."""
        params = params or SamplingParams()
        stream = TextStream(self.tokenizer, list(stop) + list(params.stop))
        for tid in self.generate_ids(self.encode_prompt(prompt), params):
            piece = stream.push(int(tid))
            if piece:
                yield piece
            if stream.stopped:
                break
        piece = stream.finish()
        if piece:
            yield piece

    def complete(self, prompt, params: SamplingParams | None = None, stop: Sequence[str] = ()) -> str:
        return "".join(self.generate(prompt, params, stop))

    def score(self, context, continuation) -> list[float]:
        """Per-token log-probabilities of `continuation` given `context` (text or ids)."""
        ctx = self.encode_prompt(context) if not isinstance(context, (list, tuple)) else list(context)
        cont = self.tokenizer.encode(continuation, add_special_tokens=False) if isinstance(continuation, str) else list(continuation)
        if not cont:
            return []
        if not ctx:
            bos = getattr(self.tokenizer, "bos_token_id", None)
            ctx = [bos if bos is not None else self.eos_ids and min(self.eos_ids) or 0]
        logits = self.logits(ctx + cont)[len(ctx) - 1: len(ctx) - 1 + len(cont)]
        logp = log_softmax(logits)
        return [float(logp[i, t]) for i, t in enumerate(cont)]

    def generate_batch(self, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                       done: Callable[[int, list[int]], bool] | None = None) -> list[list[int]]:
        """Greedy continuations of several prompts (token ids), through this runtime's engine. A row ends at
        EOS (included), at `max_new_tokens`, or when `done(row, ids)` says so."""
        from slmkit.serve.engine import Request

        requests = []
        for row, ids in enumerate(prompts):
            seen: list[int] = []

            def on_token(tid, _piece, row=row, seen=seen):
                seen.append(tid)
                return done is not None and done(row, seen)
            requests.append(Request(list(ids), SamplingParams(max_new_tokens=max_new_tokens), on_token=on_token))
        return [r.token_ids for r in self.engine().generate_many(requests)]

    def engine(self, **options):
        """This runtime's generation engine (slmkit.serve.engine.Engine): continuous batching and a prefix
        cache on torch and llama.cpp, the runtime's own loop elsewhere. Without options the runtime's shared
        engine (kept, so its prefix cache lives across calls); with options a shared engine made with them
        (replacing one made with other options)."""
        from slmkit.serve.engine import Engine

        have = getattr(self, "_engine", None)
        if have is not None and not have.closed and (not options or have.options == options):
            return have
        if have is not None:
            have.close()
        self._engine = Engine.for_runtime(self, **options)
        return self._engine

    def start_id(self) -> int:
        """The token an empty prompt starts from (BOS, else EOS, else 0)."""
        tok = self.tokenizer
        for t in (getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)):
            if t is not None:
                return int(t)
        return 0

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is greedy) per request; backends may batch/reuse."""
        results = []
        for ctx, cont in requests:
            logits = self.logits(list(ctx) + list(cont))[len(ctx) - 1: len(ctx) - 1 + len(cont)]
            logp = log_softmax(logits)
            total = float(sum(logp[i, t] for i, t in enumerate(cont)))
            greedy = bool(all(int(np.argmax(logits[i])) == t for i, t in enumerate(cont)))
            results.append((total, greedy))
        return results

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
