"""Built-in corpora.  ``slmkit.corpus.synthetic`` is the seeded arithmetic word-problem corpus
that ``slmkit demo`` trains on and scores by exact match of the final answer."""

from slmkit.corpus.synthetic import (
    LEVELS,
    TEMPLATES,
    Problem,
    extract_answer,
    generate_problems,
    heldout_problems,
    iter_training_texts,
    score_exact_match,
    training_texts,
    trivial_baseline,
    write_jsonl,
)

__all__ = [
    "LEVELS",
    "TEMPLATES",
    "Problem",
    "extract_answer",
    "generate_problems",
    "heldout_problems",
    "iter_training_texts",
    "score_exact_match",
    "training_texts",
    "trivial_baseline",
    "write_jsonl",
]
