"""The one held-out scorer for the synthetic corpus: every caller (trainer, merge sweep, demo) gets the
same prompts, the same decoding and the same exact-match rule, so their numbers compare.

A prompt is an end-of-text token followed by the problem's prompt text: in the packed training stream
every document follows an end-of-text token, so that is the context the model learned to start from.
Callers only supply how to continue token ids (`generate(prompts, max_new_tokens) -> continuations`):
the native model (`model_generator`), stock transformers, or any runtime.
"""

from __future__ import annotations

from typing import Callable, Sequence

from slmkit.corpus.synthetic import heldout_problems, score_exact_match, trivial_baseline

Generate = Callable[[list[list[int]], int], list[list[int]]]


def prompt_ids(tokenizer, prompt_text: str) -> list[int]:
    """[end-of-text] + the prompt's tokens (no other special tokens)."""
    return [int(tokenizer.eos_token_id)] + list(tokenizer.encode(prompt_text, add_special_tokens=False))


def completion_text(tokenizer, ids: Sequence[int]) -> str:
    """Decoded continuation, cut at the first end-of-text token."""
    eos = tokenizer.eos_token_id
    ids = list(ids)
    if eos in ids:
        ids = ids[:ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def evaluate(generate: Generate, tokenizer, n: int = 200, max_new_tokens: int = 96) -> dict:
    """Exact match on the first `n` held-out problems (greedy continuations from `generate`), with the best
    trivial baseline beside it and every sample (question, answer, completion)."""
    problems = heldout_problems(n)
    outs = generate([prompt_ids(tokenizer, p.prompt()) for p in problems], max_new_tokens)
    completions = [completion_text(tokenizer, o) for o in outs]
    score = score_exact_match(problems, completions)
    base = trivial_baseline(problems)
    return {"accuracy": score["accuracy"], "n": score["n"], "parsed": score["parsed"], "per_level": score["per_level"],
            "baseline_accuracy": base["accuracy"], "baseline_rule": base["best"],
            "samples": [{"question": p.question, "answer": p.answer, "completion": c}
                        for p, c in zip(problems, completions)]}


def model_generator(model, eos_id: int | None) -> Generate:
    """Greedy continuations from a native Transformer (its own KV-cache generate), one prompt at a time."""
    import torch

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return [list(model.generate(p, max_new_tokens=max_new_tokens, eos_id=eos_id)) for p in prompts]
        finally:
            model.train(was_training)
    return generate
