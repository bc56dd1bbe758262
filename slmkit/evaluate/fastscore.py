"""Fast log-likelihood and batched greedy generation for the native torch model.

Multiple-choice requests share one long context and differ in a short continuation. Requests are
sorted by context tokens, so identical contexts are scored once and neighbouring contexts reuse the
KV cache of their common prefix (MMLU's 5-shot prefix, for one); all continuations of a context then
run as one batch on a copy of that cache. Only the positions that are scored get logits. Scores
equal a full forward pass up to float rounding (tests/test_eval_backends.py checks it against
stock lm-eval's `hf` model).

TODO(lead): move into TorchRuntime.loglikelihood once slmkit.serve.torch_backend exists.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from slmkit.model.transformer import KVCache, Transformer

MIN_REUSE = 64  # tokens of cached prefix below which the context is recomputed from scratch


def _lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@torch.no_grad()
def loglikelihood(model: Transformer, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                  max_length: int | None = None, progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(sum log p(cont | ctx), cont is the greedy continuation) per (ctx, cont) token-id pair, in order."""
    cfg = model.cfg
    max_length = max_length or cfg.max_seq_len
    device = model.embed_tokens.weight.device
    items = []
    for ctx, cont in requests:
        ctx, cont = list(ctx), list(cont)
        total = len(ctx) + len(cont)
        if total > max_length + 1:  # lm-eval's hf model keeps the last max_length+1 tokens
            ctx = ctx[total - (max_length + 1):]
        items.append((tuple(ctx), tuple(cont)))
    order = sorted(range(len(items)), key=lambda i: items[i])
    results: list[tuple[float, bool] | None] = [None] * len(items)
    longest = max((len(c) for c, _ in items), default=1)
    cache = KVCache(cfg, 1, max(longest, 1), device=device)
    cached: tuple[int, ...] = ()
    i = 0
    while i < len(order):
        ctx = items[order[i]][0]
        j = i
        while j < len(order) and items[order[j]][0] == ctx:
            j += 1
        group = order[i:j]
        keep = min(_lcp(cached, ctx), len(ctx) - 1)
        if keep < MIN_REUSE:  # a short shared prefix is not worth the masked (slower) attention path
            keep = 0
        cache.crop(keep)
        ids = torch.tensor([ctx[keep:]], device=device)
        h = model(ids, cache=cache, start_pos=keep, hidden_only=True)
        cached = ctx
        last = torch.log_softmax(model.project(h[:, -1]).float(), -1)[0]  # predicts each continuation's 1st token
        conts = [items[k][1] for k in group]
        tails = [c for c in conts if len(c) > 1]
        tail_logp = _score_tails(model, cache, len(ctx), tails) if tails else {}
        for k, cont in zip(group, conts):
            lp = float(last[cont[0]])
            greedy = int(last.argmax()) == cont[0]
            if len(cont) > 1:
                rest_lp, rest_greedy = tail_logp[cont]
                lp += rest_lp
                greedy = greedy and rest_greedy
            results[k] = (lp, greedy)
        if progress:
            progress(len(group))
        i = j
    return results  # type: ignore[return-value]


def _score_tails(model: Transformer, cache: KVCache, ctx_len: int, tails: list[tuple[int, ...]]):
    """Tokens 2..n of each continuation, batched on copies of the context's KV cache."""
    uniq = sorted(set(tails))
    B, L = len(uniq), max(len(c) for c in uniq) - 1
    device = cache.k[0].device
    batch = KVCache(model.cfg, B, ctx_len + L, device=device)
    for layer in range(len(cache.k)):
        batch.k[layer][:, :, :ctx_len] = cache.k[layer][:, :, :ctx_len]
        batch.v[layer][:, :, :ctx_len] = cache.v[layer][:, :, :ctx_len]
    batch.length = ctx_len
    inp = torch.zeros(B, L, dtype=torch.long, device=device)
    for b, c in enumerate(uniq):
        inp[b, :len(c) - 1] = torch.tensor(c[:-1])
    logp = torch.log_softmax(model(inp, cache=batch, start_pos=ctx_len).float(), -1)  # right padding is causal-safe
    out = {}
    for b, c in enumerate(uniq):
        target = torch.tensor(c[1:], device=device)
        rows = logp[b, :len(c) - 1]
        out[c] = (float(rows.gather(1, target[:, None]).sum()), bool((rows.argmax(-1) == target).all()))
    return out


@torch.no_grad()
def generate_greedy(model: Transformer, prompts: Sequence[Sequence[int]], max_new_tokens: int,
                    done: Callable[[int, list[int]], bool], eos_ids: set[int]) -> list[list[int]]:
    """Greedy decode a batch of prompts together (left padding); `done(row, ids)` stops a row early."""
    device = model.embed_tokens.weight.device
    B = len(prompts)
    P = max(len(p) for p in prompts)
    total = P + max_new_tokens
    ids = torch.zeros(B, P, dtype=torch.long, device=device)
    mask = torch.zeros(B, total, dtype=torch.long, device=device)
    for b, p in enumerate(prompts):
        ids[b, P - len(p):] = torch.tensor(list(p))
        mask[b, P - len(p):P] = 1
    pos = (mask[:, :P].cumsum(-1) - 1).clamp(min=0)
    cache = KVCache(model.cfg, B, total, device=device)
    h = model(ids, cache=cache, start_pos=0, attention_mask=mask[:, :P], position_ids=pos, hidden_only=True)
    logits = model.project(h[:, -1])
    next_pos = pos[:, -1] + 1
    out: list[list[int]] = [[] for _ in range(B)]
    active = [True] * B
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1)
        for b in range(B):
            if active[b]:
                t = int(nxt[b])
                out[b].append(t)
                if t in eos_ids or done(b, out[b]):
                    active[b] = False
        if not any(active) or step == max_new_tokens - 1:
            break
        mask[:, P + step] = 1
        h = model(nxt[:, None], cache=cache, start_pos=P + step, attention_mask=mask[:, :P + step + 1],
                  position_ids=next_pos[:, None], hidden_only=True)
        logits = model.project(h[:, -1])
        next_pos = next_pos + 1
    return out
