"""Held-out exact match during and after training, through the one scorer (slmkit.corpus.heldout)."""

from __future__ import annotations


def evaluate_synthetic(model, tokenizer, n: int = 100, max_new_tokens: int = 48) -> dict:
    from slmkit.corpus.heldout import evaluate, model_generator

    result = evaluate(model_generator(model, tokenizer.eos_token_id), tokenizer, n, max_new_tokens)
    return {"accuracy": result["accuracy"], "n": result["n"], "parsed": result["parsed"],
            "per_level": result["per_level"], "baseline": result["baseline_accuracy"],
            "baseline_rule": result["baseline_rule"], "examples": result["samples"][:3]}
