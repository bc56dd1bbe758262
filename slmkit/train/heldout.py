"""Held-out exact-match accuracy on the synthetic corpus (greedy decoding, prompt after an EOS,
as documents follow an end-of-text token in the packed training stream)."""

from __future__ import annotations

import torch


@torch.no_grad()
def evaluate_synthetic(model, tokenizer, n: int = 100, max_new_tokens: int = 48) -> dict:
    from slmkit.corpus.synthetic import heldout_problems, score_exact_match, trivial_baseline

    problems = heldout_problems(n)
    was_training = model.training
    model.eval()
    eos = tokenizer.eos_token_id
    completions = []
    for p in problems:
        ids = [eos] + tokenizer.encode(p.prompt(), add_special_tokens=False)
        out = list(model.generate(ids, max_new_tokens=max_new_tokens, eos_id=eos))
        completions.append(tokenizer.decode([t for t in out if t != eos]))
    model.train(was_training)
    score = score_exact_match(problems, completions)
    base = trivial_baseline(problems)
    return {"accuracy": score["accuracy"], "n": score["n"], "parsed": score["parsed"],
            "per_level": score["per_level"], "baseline": base["accuracy"], "baseline_rule": base["best"],
            "examples": [{"prompt": p.prompt(), "completion": c, "answer": p.answer}
                         for p, c in zip(problems[:3], completions[:3])]}
