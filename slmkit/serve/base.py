"""One runtime interface for every backend (torch, llama.cpp, ONNX Runtime, vLLM).

A backend implements `logits` (full-sequence float32 logits: parity gates and scoring) and `generate_ids`
(its own fast decode loop); `generate_batch` and `loglikelihood` have serial defaults here that a backend
overrides with a batched path (torch: a batch KV cache; llama.cpp: parallel sequences), so callers never
probe for them.
Everything text-level — chat templates, stop strings, streaming detokenisation — lives here once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from slmkit.errors import SlmkitError


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)


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
        pass

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
        stops = list(stop) + list(params.stop)
        ids = self.encode_prompt(prompt)
        out_ids: list[int] = []
        emitted = ""
        hold = max((len(s) for s in stops), default=0)
        for tid in self.generate_ids(ids, params):
            out_ids.append(tid)
            text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
            if text.endswith("\ufffd"):
                continue  # wait for the rest of a multi-byte character
            cut = _first_stop(text, stops)
            if cut is not None:
                if cut > len(emitted):
                    yield text[len(emitted):cut]
                return
            safe = len(text) - hold if hold else len(text)
            if safe > len(emitted):
                yield text[len(emitted):safe]
                emitted = text[:safe]
        text = self.tokenizer.decode(out_ids, skip_special_tokens=True)
        cut = _first_stop(text, stops)
        text = text if cut is None else text[:cut]
        if len(text) > len(emitted):
            yield text[len(emitted):]

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
        """Greedy continuations of several prompts (token ids). A row ends at EOS, at `max_new_tokens`, or when
        `done(row, ids)` says so. This default runs them one at a time; batched backends override it."""
        out = []
        eos = self.eos_ids
        for row, ids in enumerate(prompts):
            toks: list[int] = []
            for t in self.generate_ids(list(ids), SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0)):
                toks.append(int(t))
                if t in eos or (done is not None and done(row, toks)):
                    break
            out.append(toks)
        return out

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


def sample_token(logits: np.ndarray, params: SamplingParams, rng: np.random.Generator) -> int:
    """Greedy when temperature <= 0, else temperature / top-k / top-p sampling from one logits row."""
    if params.temperature is None or params.temperature <= 0:
        return int(np.argmax(logits))
    x = np.asarray(logits, dtype=np.float64) / params.temperature
    if params.top_k and 0 < params.top_k < x.size:
        kth = np.partition(x, -params.top_k)[-params.top_k]
        x = np.where(x < kth, -np.inf, x)
    p = np.exp(x - x.max())
    p /= p.sum()
    if params.top_p is not None and params.top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        sorted_p = p[order]
        keep = (np.cumsum(sorted_p) - sorted_p) < params.top_p  # the smallest prefix reaching top_p
        p = np.zeros_like(p)
        p[order[keep]] = sorted_p[keep]
        p /= p.sum()
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), p.size - 1))


def group_by_context(requests, start_id: int) -> tuple[list, dict[tuple[int, ...], list[int]]]:
    """Loglikelihood requests grouped by context (empty continuations pre-scored as (0.0, True)),
    so a backend runs each distinct context once and its continuations on top of its KV cache."""
    from collections import defaultdict

    results: list = [None] * len(requests)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, (ctx, cont) in enumerate(requests):
        if not cont:
            results[i] = (0.0, True)
        else:
            groups[tuple(int(t) for t in ctx) or (start_id,)].append(i)
    return results, groups


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Number of leading tokens `a` and `b` share (how much of a KV cache one can lend the other)."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def score_rows(logits: np.ndarray, cont: Sequence[int]) -> tuple[float, bool]:
    """(sum of log p(cont[i]) under logits[i], every cont token is the argmax)."""
    logp = log_softmax(np.asarray(logits))
    idx = np.arange(len(cont))
    cont_arr = np.asarray(cont, dtype=np.int64)
    return float(logp[idx, cont_arr].sum()), bool((np.argmax(logits, -1) == cont_arr).all())


def log_softmax(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float64)
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None
