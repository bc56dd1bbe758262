"""The model seam of the agent loop: generate for many episodes at once, as token ids in and out.

The loop never calls a runtime directly. Every model turn of every live episode becomes a `GenRequest`
(the episode's whole trajectory as token ids, sampling, stop strings, budget) and the loop hands all of
them to one `AgentLLM.generate_many` call per round. That call submits them, greedy and sampled alike,
to the runtime's generation engine (`slmkit.serve.engine`: continuous batching + prefix cache) in one
`Engine.generate_many`. An episode's next request extends its last one (trajectory + kept output +
observation + next turn), so the engine's prefix cache serves everything it computed before and only the
new tokens are prefilled; the few-shot prefix all episodes share is computed once per run.

`NaiveLLM` is the reference: one request at a time through `Runtime.generate_ids`, every prompt prefilled
from scratch. `AgentLLM(batched=False)` runs requests the same way (without resetting caches) for
callers that watch `generate_ids` token by token (the app's streaming view of a runtime).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

from slmkit.serve.base import Runtime, SamplingParams

FINISH_STOP, FINISH_EOS, FINISH_LENGTH, FINISH_CONTEXT = "stop", "eos", "length", "context"


@dataclass
class GenRequest:
    prompt_ids: list[int]
    params: SamplingParams  # max_new_tokens, temperature/top_k/top_p/seed and `stop` strings
    key: str = ""  # the episode this request continues (its next request extends this one's ids)


@dataclass
class GenResult:
    ids: list[int]  # every generated id, including those that completed a stop string (not EOS-stripped)
    text: str  # decoded (special tokens skipped) up to, not including, the first stop string
    finish: str  # "stop" | "eos" | "length" | "context" (the prompt leaves no room to generate)
    seconds: float = 0.0  # submit -> finished for this request (engine), or the call's wall time
    # engine facts about the call: prompt_tokens, cached_tokens (served by the prefix cache)
    info: dict = field(default_factory=dict)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


class AgentLLM:
    """Batch-oriented generation for the agent loop on a `slmkit.serve` runtime's engine.

    max_batch: sequences the engine decodes together; engine_options: other `Runtime.engine` options
    (prefix_cache_mb, block_tokens, max_step_tokens)."""

    def __init__(self, runtime: Runtime, batched: bool = True, max_batch: int = 16,
                 engine_options: dict | None = None) -> None:
        self.runtime = runtime
        self.tokenizer = runtime.tokenizer
        self.batched = batched
        self.max_batch = max(1, int(max_batch))
        self.engine_options = {"max_batch": self.max_batch, **(engine_options or {})}
        self.eos = runtime.eos_ids
        self.calls = 0
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self._engine = None

    # ---- text <-> ids (the loop tokenizes every piece it appends through these) -------------------
    def encode(self, text: str) -> list[int]:
        return [int(t) for t in self.tokenizer.encode(text, add_special_tokens=False)] if text else []

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special)

    @property
    def context_limit(self) -> int:
        """Tokens a sequence may hold (prompt + generated) on this runtime."""
        rt = self.runtime
        if getattr(rt, "n_ctx", None):
            return int(rt.n_ctx)
        cfg = getattr(rt, "cfg", None)
        return int(getattr(cfg, "max_seq_len", 0) or 1 << 30)

    @property
    def engine(self):
        """The runtime's shared engine with this loop's options (its prefix cache lives across calls)."""
        self._engine = self.runtime.engine(**self.engine_options)
        return self._engine

    def engine_stats(self) -> dict:
        """The engine's counters (prefill/cached/generated tokens, prefix-cache hit rate); {} when unused."""
        engine = self._engine
        return engine.stats() if engine is not None and not engine.closed else {}

    def release(self, key: str) -> None:
        """The episode `key` is over. Nothing to free: its keys/values age out of the prefix cache (LRU)."""

    # ---- generation ------------------------------------------------------------------------------
    def generate_many(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """One result per request, in order. Greedy results do not depend on how requests are grouped
        or what the prefix cache holds (the engine's guarantee: fp32 identical; quantized llama.cpp may
        differ where its multi-row kernels round differently from its one-row kernel)."""
        results: list[GenResult | None] = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            if len(req.prompt_ids) + 1 > self.context_limit:
                results[i] = GenResult([], "", FINISH_CONTEXT)
            else:
                todo.append(i)
        if not self.batched:
            for i in todo:
                results[i] = self._single(requests[i])
            return results  # type: ignore[return-value]
        if todo:
            from slmkit.serve.engine import Request

            outs = self.engine.generate_many([Request(list(requests[i].prompt_ids), requests[i].params) for i in todo])
            for i, out in zip(todo, outs):
                req = requests[i]
                ids = [int(t) for t in out.token_ids]
                self._count(req.prompt_ids, ids)
                self.cached_tokens += out.cached_tokens
                res = self._finish(ids, req.params, self._budget(req))
                res.seconds = out.total_s
                res.info = {"prompt_tokens": out.prompt_tokens, "cached_tokens": out.cached_tokens}
                results[i] = res
        return results  # type: ignore[return-value]

    def _finish(self, ids: list[int], params: SamplingParams, budget: int) -> GenResult:
        text = self.decode(ids, skip_special=True)
        cut = first_stop(text, params.stop)
        if cut is not None:
            return GenResult(ids, text[:cut], FINISH_STOP)
        if ids and ids[-1] in self.eos:
            return GenResult(ids, text, FINISH_EOS)
        return GenResult(ids, text, FINISH_LENGTH if len(ids) >= budget else FINISH_EOS)

    def _budget(self, req: GenRequest) -> int:
        return max(0, min(req.params.max_new_tokens, self.context_limit - len(req.prompt_ids)))

    def _stopped(self, ids: list[int], stops: Sequence[str]) -> bool:
        return bool(stops) and first_stop(self.decode(ids, skip_special=True), stops) is not None

    def _single(self, req: GenRequest) -> GenResult:
        """One request through the runtime's own decode loop (`generate_ids`), stop strings checked here."""
        t0 = time.perf_counter()
        self.before_call()
        ids: list[int] = []
        for tid in self.runtime.generate_ids(req.prompt_ids, req.params):
            ids.append(int(tid))
            if tid in self.eos or self._stopped(ids, req.params.stop):
                break
        self._count(req.prompt_ids, ids)
        res = self._finish(ids, req.params, self._budget(req))
        res.seconds = time.perf_counter() - t0
        return res

    def _count(self, prompt: Sequence[int], ids: Sequence[int]) -> None:
        self.calls += 1
        self.prompt_tokens += len(prompt)
        self.generated_tokens += len(ids)

    def before_call(self) -> None:
        """Hook run before each single-request call (the naive reference drops runtime caches here)."""


class NaiveLLM(AgentLLM):
    """The reference loop's model: one request at a time, each prompt prefilled from scratch
    (llama.cpp's own prompt cache is reset before every call)."""

    def __init__(self, runtime: Runtime) -> None:
        super().__init__(runtime, batched=False, max_batch=1)

    def before_call(self) -> None:
        llama = getattr(self.runtime, "llama", None)  # llama_cpp.Llama reuses the previous call's prefix
        if llama is not None and hasattr(llama, "reset"):
            llama.reset()
