"""The model seam of the agent loop: generate for many episodes at once, as token ids in and out.

The loop never calls a runtime directly. Every model turn of every live episode becomes a `GenRequest`
(the episode's whole trajectory as token ids, sampling, stop strings, budget) and the loop hands all of
them to one `AgentLLM.generate_many` call per round. Today that call runs on the runtime interface
(`slmkit.serve`): greedy requests go through `Runtime.generate_batch` (torch and llama.cpp decode the rows
together, one weight pass per step, and prompts sharing the few-shot prefix compute it once per call; other
backends run them one by one), sampled requests one at a time through `generate_ids`. The generation engine (continuous batching + prefix cache)
replaces the body of `generate_many` and nothing else: a request's `key` names its episode, so an engine
can keep that sequence's KV between rounds (each request of a key extends the previous one's ids).

`NaiveLLM` is the reference: one request at a time, every prompt prefilled from scratch.
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
    key: str = ""  # the episode this request continues (engines keep its KV between requests)


@dataclass
class GenResult:
    ids: list[int]  # every generated id, including those that completed a stop string (not EOS-stripped)
    text: str  # decoded (special tokens skipped) up to, not including, the first stop string
    finish: str  # "stop" | "eos" | "length" | "context" (the prompt leaves no room to generate)
    seconds: float = 0.0  # wall time of the call that produced it, shared equally by its batch
    info: dict = field(default_factory=dict)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


class AgentLLM:
    """Batch-oriented generation for the agent loop on a `slmkit.serve` runtime."""

    def __init__(self, runtime: Runtime, batched: bool = True, max_batch: int = 16) -> None:
        self.runtime = runtime
        self.tokenizer = runtime.tokenizer
        self.batched = batched
        self.max_batch = max(1, int(max_batch))
        self.eos = runtime.eos_ids
        self.calls = 0
        self.generated_tokens = 0
        self.prompt_tokens = 0

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

    def release(self, key: str) -> None:
        """The episode `key` is over (an engine frees its KV); nothing to do on the plain runtime."""

    # ---- generation ------------------------------------------------------------------------------
    def generate_many(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        """One result per request, in order. Greedy results do not depend on how requests are grouped
        (up to float rounding of batched kernels: fp32 agrees; quantized llama.cpp may differ in near-ties)."""
        results: list[GenResult | None] = [None] * len(requests)
        todo = []
        for i, req in enumerate(requests):
            if len(req.prompt_ids) + 1 > self.context_limit:
                results[i] = GenResult([], "", FINISH_CONTEXT)
            else:
                todo.append(i)
        greedy = [i for i in todo if self.batched and not (requests[i].params.temperature or 0) > 0]
        greedy.sort(key=lambda i: len(requests[i].prompt_ids))
        for start in range(0, len(greedy), self.max_batch):
            chunk = greedy[start:start + self.max_batch]
            # a batch decodes at most (context - its longest prompt) tokens; rows that may need more run alone
            room = self.context_limit - max(len(requests[i].prompt_ids) for i in chunk)
            chunk = [i for i in chunk if self._budget(requests[i]) <= room]
            if len(chunk) > 1:
                for i, res in zip(chunk, self._batch([requests[i] for i in chunk])):
                    results[i] = res
        for i in todo:
            if results[i] is None:
                results[i] = self._single(requests[i])
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

    def _batch(self, reqs: list[GenRequest]) -> list[GenResult]:
        t0 = time.perf_counter()
        max_new = max(r.params.max_new_tokens for r in reqs)
        budgets = [self._budget(r) for r in reqs]

        def done(row: int, ids: list[int]) -> bool:
            return len(ids) >= budgets[row] or self._stopped(ids, reqs[row].params.stop)

        outs = self.runtime.generate_batch([r.prompt_ids for r in reqs], max_new, done=done)
        seconds = (time.perf_counter() - t0) / len(reqs)
        results = []
        for r, ids, budget in zip(reqs, outs, budgets):
            ids = [int(t) for t in ids][:budget]
            self._count(r.prompt_ids, ids)
            res = self._finish(ids, r.params, budget)
            res.seconds = seconds
            results.append(res)
        return results

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
