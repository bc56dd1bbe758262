"""Token-level pieces every runtime and the engine share: sampling parameters and sampling from a logits
row, and the bookkeeping of loglikelihood requests (grouping by context, shared prefixes, log-probs)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop: list[str] = field(default_factory=list)


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
