"""HotpotQA's answer normalisation, exact match and F1 (the rules of the official hotpot_evaluate_v1.py).

Written from the official script's behaviour: lower-case, drop ASCII punctuation (string.punctuation),
drop the articles a/an/the as whole words, collapse whitespace; F1 over whitespace tokens of the
normalised strings, with the special rule that when either side normalises to 'yes', 'no' or 'noanswer'
and the two differ, F1 is 0. ReAct's wrappers score HotpotQA and FEVER with the same normalisation.
"""

from __future__ import annotations

import re
import string
from collections import Counter

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = frozenset(string.punctuation)
SPECIAL_ANSWERS = ("yes", "no", "noanswer")


def normalize_answer(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_precision_recall(prediction: str, gold: str) -> tuple[float, float, float]:
    pred, ref = normalize_answer(prediction), normalize_answer(gold)
    if (pred in SPECIAL_ANSWERS or ref in SPECIAL_ANSWERS) and pred != ref:
        return 0.0, 0.0, 0.0
    pred_tokens, ref_tokens = pred.split(), ref.split()
    same = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
    if same == 0:
        return 0.0, 0.0, 0.0
    precision, recall = same / len(pred_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall), precision, recall


def f1(prediction: str, gold: str) -> float:
    return f1_precision_recall(prediction, gold)[0]
