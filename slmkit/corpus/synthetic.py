"""Seeded synthetic arithmetic word problems: the built-in demo corpus of slmkit.

``slmkit demo`` trains a tiny model on these texts for a few minutes and then scores it on a
fixed held-out set by exact match of the final answer.  The format is deliberately regular so
that a ~1-3M parameter model can pick it up quickly.

Document format
===============
One training document (``Problem.text()``) is the prompt followed by the target::

    Question: Mia buys 4 pens for 7 dollars each and pays with a 50 dollar bill. How many dollars of change does Mia get?
    Solution:
    4 * 7 = 28
    50 - 28 = 22
    Answer: 22

* ``Problem.prompt()`` is ``"Question: <question>\\nSolution:"`` -- what the model is given.
* ``Problem.target()`` is ``"\\n" + <solution> + "\\nAnswer: <integer>"`` -- what it must write.
  The solution has one line per arithmetic step, always of the form ``a op b = c`` with
  non-negative integers ``a``, ``b``, ``c``, single spaces, and ``op`` one of ``+ - * /``
  (``/`` is always an exact division).  Every operand is a number from the question or the
  result of an earlier step; the answer is the result of the last step.
* The last line is exactly ``Answer: <integer>`` (no trailing newline; the trainer appends
  its own end-of-document token).

Templates and levels
====================
Six templates (``TEMPLATES``): ``shopping`` (prices and change), ``ages``, ``travel``
(distance = speed * time), ``sharing`` (equal division), ``stock`` (items in and out over
days) and ``savings`` (weekly saving and spending).  ``level`` is the number of steps:
1 = one step, 2 = two steps, 3 = three or four steps; numbers grow with the level (level 1
uses two-digit sums/differences and small products/quotients).

Train / held-out split
======================
Every question is put in a bucket by a hash of *the integers it contains* (in order).  One
bucket in ``HELDOUT_BUCKETS`` is reserved for evaluation: the training stream
(``generate_problems``/``training_texts``/``iter_training_texts``, any seed) skips those
questions, and ``heldout_problems`` draws only from them, from its own seed stream.  So no
held-out question string -- indeed no held-out combination of numbers, whatever the wording
-- ever occurs in training data.

Scoring
=======
``extract_answer`` reads the first line of a completion that starts with ``Answer:``;
``score_exact_match`` compares it with ``Problem.answer``; ``trivial_baseline`` scores the
simple guesses we print beside a model (most frequent training answer, first/last number of
the question, sum of the question's numbers).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from slmkit.errors import SlmkitError

__all__ = [
    "LEVELS",
    "TEMPLATES",
    "Problem",
    "generate_problems",
    "iter_problems",
    "training_texts",
    "iter_training_texts",
    "heldout_problems",
    "is_heldout_question",
    "extract_answer",
    "score_exact_match",
    "trivial_baseline",
    "write_jsonl",
    "read_jsonl",
]

LEVELS: tuple[int, ...] = (1, 2, 3)

# Split: questions whose number-hash falls in one of these buckets (out of _N_BUCKETS) are
# reserved for evaluation and never produced by the training stream.
_N_BUCKETS = 8
HELDOUT_BUCKETS = frozenset({0})
_TRAIN_NS = "slmkit.corpus.synthetic/train/v1"
_HELDOUT_NS = "slmkit.corpus.synthetic/heldout/v1"
# seed of the training sample that defines the "most frequent training answer" baseline
_BASELINE_TRAIN_SEED = 0
_BASELINE_TRAIN_N = 20_000


@dataclass(frozen=True)
class Problem:
    """One word problem with its worked solution (see the module docstring for the format)."""

    question: str
    solution: str  # worked steps, one ``a op b = c`` per line
    answer: int
    template: str
    level: int

    def prompt(self) -> str:
        """The text the model is given."""
        return f"Question: {self.question}\nSolution:"

    def target(self) -> str:
        """What the model should write after the prompt: the steps and the answer line."""
        return f"\n{self.solution}\nAnswer: {self.answer}"

    def text(self) -> str:
        """One training document: prompt followed by target."""
        return self.prompt() + self.target()


# --------------------------------------------------------------------------- building blocks

_NAMES = (
    "Ana", "Ben", "Cara", "Dan", "Eva", "Finn", "Gia", "Hugo", "Ivy", "Jack",
    "Kim", "Leo", "Mia", "Nora", "Omar", "Pia", "Ravi", "Sara", "Tom", "Zoe",
)
_SHOP_ITEMS = ("pens", "books", "apples", "cups", "hats", "toys", "shirts", "plates")
_VEHICLES = ("car", "bus", "train", "boat", "truck", "bike")
_SHARE_ITEMS = ("candies", "stickers", "marbles", "cookies", "cards", "shells")
_STORES = (("shop", "boxes"), ("bakery", "cakes"), ("farm", "eggs"), ("store", "bottles"),
           ("market", "melons"))
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday")
_THINGS = ("game", "lamp", "book", "watch", "ball", "kite")


class _Steps:
    """Collects the ``a op b = c`` lines of a worked solution, computing each result."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def _emit(self, a: int, op: str, b: int, c: int) -> int:
        if min(a, b, c) < 0:
            raise AssertionError(f"negative number in step {a} {op} {b} = {c}")
        self.lines.append(f"{a} {op} {b} = {c}")
        return c

    def add(self, a: int, b: int) -> int:
        return self._emit(a, "+", b, a + b)

    def sub(self, a: int, b: int) -> int:
        return self._emit(a, "-", b, a - b)

    def mul(self, a: int, b: int) -> int:
        return self._emit(a, "*", b, a * b)

    def div(self, a: int, b: int) -> int:
        if b == 0 or a % b:
            raise AssertionError(f"inexact division {a} / {b}")
        return self._emit(a, "/", b, a // b)

    def text(self) -> str:
        return "\n".join(self.lines)


_Result = tuple[str, _Steps, int]  # question, steps, answer


def _shopping(rng: random.Random, level: int) -> _Result:
    name = rng.choice(_NAMES)
    item, item2 = rng.sample(_SHOP_ITEMS, 2)
    s = _Steps()
    if level == 1:
        a, p = rng.randint(2, 12), rng.randint(2, 9)
        q = f"{name} buys {a} {item} for {p} dollars each. How many dollars does {name} spend?"
        ans = s.mul(a, p)
    elif level == 2:
        a, p = rng.randint(2, 12), rng.randint(2, 15)
        cost = a * p
        bill = rng.choice([b for b in (20, 50, 100, 200) if b > cost])
        q = (f"{name} buys {a} {item} for {p} dollars each and pays with a {bill} dollar bill. "
             f"How many dollars of change does {name} get?")
        ans = s.sub(bill, s.mul(a, p))
    else:
        a, p = rng.randint(2, 12), rng.randint(2, 20)
        b, r = rng.randint(2, 12), rng.randint(2, 20)
        total = a * p + b * r
        bill = rng.choice([x for x in (50, 100, 200, 500) if x > total])
        q = (f"{name} buys {a} {item} for {p} dollars each and {b} {item2} for {r} dollars each. "
             f"{name} pays with a {bill} dollar bill. How many dollars of change does {name} get?")
        x = s.mul(a, p)
        y = s.mul(b, r)
        ans = s.sub(bill, s.add(x, y))
    return q, s, ans


def _ages(rng: random.Random, level: int) -> _Result:
    a_name, b_name, c_name = rng.sample(_NAMES, 3)
    s = _Steps()
    if level == 1:
        a, d = rng.randint(10, 60), rng.randint(2, 30)
        older = rng.random() < 0.5 or d >= a
        rel = "older" if older else "younger"
        q = f"{a_name} is {a} years old. {b_name} is {d} years {rel} than {a_name}. How old is {b_name}?"
        ans = s.add(a, d) if older else s.sub(a, d)
    elif level == 2:
        a, d = rng.randint(10, 80), rng.randint(2, 40)
        older = rng.random() < 0.5 or d >= a
        rel = "older" if older else "younger"
        q = (f"{a_name} is {a} years old. {b_name} is {d} years {rel} than {a_name}. "
             f"What is the sum of the ages of {a_name} and {b_name}?")
        b = s.add(a, d) if older else s.sub(a, d)
        ans = s.add(a, b)
    else:
        a, d = rng.randint(10, 80), rng.randint(2, 40)
        e = rng.randint(1, a + d - 1)
        q = (f"{a_name} is {a} years old. {b_name} is {d} years older than {a_name}. "
             f"{c_name} is {e} years younger than {b_name}. "
             f"What is the sum of the ages of {a_name}, {b_name} and {c_name}?")
        b = s.add(a, d)
        c = s.sub(b, e)
        ans = s.add(s.add(a, b), c)
    return q, s, ans


def _travel(rng: random.Random, level: int) -> _Result:
    v = rng.choice(_VEHICLES)
    s = _Steps()
    if level == 1:
        speed, hours = rng.randint(4, 20), rng.randint(2, 9)
        if rng.random() < 0.5:
            q = f"A {v} travels at {speed} km per hour for {hours} hours. How many km does the {v} travel?"
            ans = s.mul(speed, hours)
        else:
            dist = speed * hours
            q = (f"A {v} travels {dist} km in {hours} hours at a steady speed. "
                 f"How many km per hour does the {v} travel?")
            ans = s.div(dist, hours)
    elif level == 2:
        speed, hours = rng.randint(5, 30), rng.randint(2, 9)
        trip = speed * hours + rng.randint(5, 150)
        q = (f"A {v} travels at {speed} km per hour for {hours} hours. The whole trip is {trip} km. "
             f"How many km are left?")
        ans = s.sub(trip, s.mul(speed, hours))
    else:
        s1, h1 = rng.randint(5, 40), rng.randint(2, 9)
        s2, h2 = rng.randint(5, 40), rng.randint(2, 9)
        start = (f"A {v} travels at {s1} km per hour for {h1} hours "
                 f"and then at {s2} km per hour for {h2} hours.")
        if rng.random() < 0.5:
            q = f"{start} How many km does the {v} travel in total?"
            ans = s.add(s.mul(s1, h1), s.mul(s2, h2))
        else:
            trip = s1 * h1 + s2 * h2 + rng.randint(5, 200)
            q = f"{start} The whole trip is {trip} km. How many km are left?"
            x = s.mul(s1, h1)
            y = s.mul(s2, h2)
            ans = s.sub(trip, s.add(x, y))
    return q, s, ans


def _sharing(rng: random.Random, level: int) -> _Result:
    name = rng.choice(_NAMES)
    item = rng.choice(_SHARE_ITEMS)
    s = _Steps()
    ask = f"How many {item} does each friend get?"
    if level == 1:
        k, each = rng.randint(2, 9), rng.randint(2, 12)
        q = f"{name} shares {k * each} {item} equally among {k} friends. {ask}"
        ans = s.div(k * each, k)
    elif level == 2:
        k, each = rng.randint(2, 9), rng.randint(3, 20)
        total = k * each
        a = rng.randint(2, total - 2)
        q = f"{name} has {a} {item} and gets {total - a} more. {name} shares them equally among {k} friends. {ask}"
        ans = s.div(s.add(a, total - a), k)
    else:
        while True:
            bags, per_bag, k = rng.randint(2, 9), rng.randint(3, 20), rng.randint(2, 9)
            total = bags * per_bag
            hi = (total - 1) // k  # leave at least one item to eat
            if hi >= 2:
                break
        each = rng.randint(max(2, (hi + 1) // 2), hi)  # eat a few, share most
        eaten = total - k * each
        q = (f"{name} has {bags} bags with {per_bag} {item} in each bag. {name} eats {eaten} {item} "
             f"and shares the rest equally among {k} friends. {ask}")
        ans = s.div(s.sub(s.mul(bags, per_bag), eaten), k)
    return q, s, ans


def _stock(rng: random.Random, level: int) -> _Result:
    store, goods = rng.choice(_STORES)
    s = _Steps()
    n_days, start_range, amount_range = {
        1: (1, (20, 99), (10, 99)),
        2: (2, (50, 199), (10, 99)),
        3: (rng.randint(3, 4), (100, 499), (10, 199)),
    }[level]
    stock = rng.randint(*start_range)
    parts = [f"A {store} has {stock} {goods}."]
    for day in _DAYS[:n_days]:
        lo, hi = amount_range
        if stock > lo and rng.random() < 0.5:
            amount = rng.randint(lo, min(hi, stock - 1))
            parts.append(f"On {day} it sells {amount} {goods}.")
            stock = s.sub(stock, amount)
        else:
            amount = rng.randint(lo, hi)
            parts.append(f"On {day} it gets {amount} new {goods}.")
            stock = s.add(stock, amount)
    parts.append(f"How many {goods} does the {store} have at the end of {_DAYS[n_days - 1]}?")
    return " ".join(parts), s, stock


def _savings(rng: random.Random, level: int) -> _Result:
    name = rng.choice(_NAMES)
    s = _Steps()
    if level == 1:
        per_week, weeks = rng.randint(2, 12), rng.randint(2, 9)
        q = f"{name} saves {per_week} dollars every week for {weeks} weeks. How many dollars does {name} save?"
        ans = s.mul(per_week, weeks)
    elif level == 2:
        have, per_week, weeks = rng.randint(10, 99), rng.randint(2, 15), rng.randint(2, 12)
        q = (f"{name} has {have} dollars and saves {per_week} dollars every week for {weeks} weeks. "
             f"How many dollars does {name} have now?")
        ans = s.add(have, s.mul(per_week, weeks))
    else:
        have, per_week, weeks = rng.randint(10, 199), rng.randint(2, 20), rng.randint(2, 12)
        thing = rng.choice(_THINGS)
        price = rng.randint(5, have + per_week * weeks - 1)
        q = (f"{name} has {have} dollars and saves {per_week} dollars every week for {weeks} weeks. "
             f"Then {name} buys a {thing} for {price} dollars. How many dollars does {name} have left?")
        ans = s.sub(s.add(have, s.mul(per_week, weeks)), price)
    return q, s, ans


_TEMPLATE_FNS: dict[str, Callable[[random.Random, int], _Result]] = {
    "shopping": _shopping,
    "ages": _ages,
    "travel": _travel,
    "sharing": _sharing,
    "stock": _stock,
    "savings": _savings,
}
TEMPLATES: tuple[str, ...] = tuple(_TEMPLATE_FNS)


# --------------------------------------------------------------------------- split + streams

_INT_RE = re.compile(r"\d+")


def _bucket(question: str) -> int:
    """Split bucket of a question: a stable hash of the integers it contains, in order."""
    key = ",".join(_INT_RE.findall(question)).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % _N_BUCKETS


def is_heldout_question(question: str) -> bool:
    """True if ``question`` belongs to the evaluation split (never produced for training)."""
    return _bucket(question) in HELDOUT_BUCKETS


def _check_choice(levels: Iterable[int], templates: Iterable[str] | None) -> tuple[tuple[int, ...], tuple[str, ...]]:
    levels = tuple(levels)
    templates = TEMPLATES if templates is None else tuple(templates)
    if not levels:
        raise SlmkitError("synthetic corpus: 'levels' is empty; choose from 1, 2, 3")
    for lv in levels:
        if isinstance(lv, bool) or lv not in LEVELS:
            raise SlmkitError(f"synthetic corpus: level={lv!r} is not one of 1, 2, 3")
    if not templates:
        raise SlmkitError(f"synthetic corpus: 'templates' is empty; choose from {', '.join(TEMPLATES)}")
    for t in templates:
        if t not in _TEMPLATE_FNS:
            raise SlmkitError(f"synthetic corpus: template={t!r} is unknown; choose from {', '.join(TEMPLATES)}")
    return levels, templates


def _stream(namespace: str, seed: int | str, levels: Sequence[int], templates: Sequence[str],
            heldout: bool) -> Iterator[Problem]:
    rng = random.Random(f"{namespace}/{seed}")  # str seeds hash with sha512: stable across runs
    while True:
        template = rng.choice(templates)
        level = rng.choice(levels)
        question, steps, answer = _TEMPLATE_FNS[template](rng, level)
        if is_heldout_question(question) != heldout:
            continue
        yield Problem(question, steps.text(), answer, template, level)


def iter_problems(seed: int | str, levels: Iterable[int] = LEVELS,
                  templates: Iterable[str] | None = None) -> Iterator[Problem]:
    """Infinite, deterministic stream of training problems for ``seed``."""
    lv, tp = _check_choice(levels, templates)
    return _stream(_TRAIN_NS, seed, lv, tp, heldout=False)


def generate_problems(n: int, seed: int | str, levels: Iterable[int] = LEVELS,
                      templates: Iterable[str] | None = None) -> list[Problem]:
    """The first ``n`` training problems of ``seed`` (deterministic; never held-out questions).

    Templates and levels are drawn uniformly from ``templates`` (default: all) and ``levels``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SlmkitError(f"synthetic corpus: n={n!r} must be a non-negative integer")
    return list(itertools.islice(iter_problems(seed, levels, templates), n))


def training_texts(n: int, seed: int | str) -> list[str]:
    """``n`` training documents (``Problem.text()``) for ``seed``."""
    return [p.text() for p in generate_problems(n, seed)]


def iter_training_texts(seed: int | str) -> Iterator[str]:
    """Infinite stream of training documents; its first ``n`` equal ``training_texts(n, seed)``."""
    return (p.text() for p in iter_problems(seed))


def heldout_problems(n: int = 200, level: int | None = None) -> list[Problem]:
    """The fixed evaluation set: ``n`` distinct held-out problems (all levels, or one ``level``).

    Drawn from its own seed stream and only from the held-out split, so it is disjoint from every
    training stream.  ``heldout_problems(m)`` is a prefix of ``heldout_problems(n)`` for m < n.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise SlmkitError(f"synthetic corpus: n={n!r} must be a non-negative integer")
    levels = LEVELS if level is None else (level,)
    levels, templates = _check_choice(levels, None)
    out: list[Problem] = []
    seen: set[str] = set()
    budget = 200 * n + 1000  # distinct questions run out only for absurd n at a single level
    for p in itertools.islice(_stream(_HELDOUT_NS, "all" if level is None else level, levels,
                                      templates, heldout=True), budget):
        if len(out) == n:
            break
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    if len(out) < n:
        raise SlmkitError(f"synthetic corpus: n={n} is more distinct held-out problems than level={level} offers")
    return out


# --------------------------------------------------------------------------- scoring

_ANSWER_LINE_RE = re.compile(r"^[ \t]*Answer[ \t]*:(.*)$", re.MULTILINE | re.IGNORECASE)
_ANSWER_VALUE_RE = re.compile(r"^\s*([+-]?)\s*(\d+)(?![\d.,]\d|\d)")


def extract_answer(text: str) -> int | None:
    """The integer on the first line of ``text`` that starts with ``Answer:``, else ``None``.

    Tolerates spaces around the colon and number, a ``+``/``-`` sign, any letter case and
    trailing text after the number (``Answer: 12.`` or ``Answer: 12 dollars`` give 12).  Only the
    first ``Answer:`` line counts: if its value is not an integer (``Answer: 1.5``,
    ``Answer: 1,200``, ``Answer: ten``) the result is ``None``, even if a later line has one.
    """
    if not isinstance(text, str):
        return None
    m = _ANSWER_LINE_RE.search(text)
    if m is None:
        return None
    v = _ANSWER_VALUE_RE.match(m.group(1))
    if v is None:
        return None
    value = int(v.group(2))
    return -value if v.group(1) == "-" else value


def score_exact_match(problems: Sequence[Problem], completions: Sequence[str]) -> dict:
    """Exact-match accuracy of ``extract_answer(completion)`` against each problem's answer.

    Returns ``{"accuracy", "n", "correct", "parsed", "per_level": {level: accuracy},
    "per_template": {template: accuracy}}`` (accuracy 0.0 when there are no problems).
    """
    problems, completions = list(problems), list(completions)
    if len(problems) != len(completions):
        raise SlmkitError(f"score_exact_match: {len(problems)} problems but {len(completions)} completions")
    by_level: dict[int, list[bool]] = {}
    by_template: dict[str, list[bool]] = {}
    correct = parsed = 0
    for p, c in zip(problems, completions):
        got = extract_answer(c)
        ok = got is not None and got == p.answer
        parsed += got is not None
        correct += ok
        by_level.setdefault(p.level, []).append(ok)
        by_template.setdefault(p.template, []).append(ok)

    def acc(xs: list[bool]) -> float:
        return sum(xs) / len(xs) if xs else 0.0

    n = len(problems)
    return {
        "accuracy": correct / n if n else 0.0,
        "n": n,
        "correct": correct,
        "parsed": parsed,
        "per_level": {k: acc(v) for k, v in sorted(by_level.items())},
        "per_template": {k: acc(v) for k, v in sorted(by_template.items())},
    }


@lru_cache(maxsize=1)
def _most_frequent_training_answer() -> int:
    counts = Counter(p.answer for p in generate_problems(_BASELINE_TRAIN_N, _BASELINE_TRAIN_SEED))
    best = max(counts.values())
    return min(a for a, c in counts.items() if c == best)  # deterministic tie-break


def _question_ints(p: Problem) -> list[int]:
    return [int(x) for x in _INT_RE.findall(p.question)]


def trivial_baseline(problems: Sequence[Problem]) -> dict:
    """Scores of simple answer-guessing rules, to print beside a model's accuracy.

    Rules: ``most_frequent_answer`` (the commonest answer of a fixed 20k-problem training
    sample, seed 0), ``first_number`` / ``last_number`` (of the question) and ``sum_of_numbers``
    (of the question).  Returns ``{"best": rule, "accuracy": its accuracy, "n",
    "most_frequent_training_answer", "baselines": {rule: score_exact_match result}}``.
    """
    problems = list(problems)
    mode = _most_frequent_training_answer()
    rules: dict[str, Callable[[Problem], int | None]] = {
        "most_frequent_answer": lambda p: mode,
        "first_number": lambda p: (_question_ints(p) or [None])[0],
        "last_number": lambda p: (_question_ints(p) or [None])[-1],
        "sum_of_numbers": lambda p: sum(_question_ints(p)),
    }
    results = {}
    for name, rule in rules.items():
        guesses = [rule(p) for p in problems]
        completions = ["" if g is None else f"Answer: {g}" for g in guesses]
        results[name] = score_exact_match(problems, completions)
    best = max(results, key=lambda k: results[k]["accuracy"])  # first listed wins ties
    return {
        "best": best,
        "accuracy": results[best]["accuracy"],
        "n": len(problems),
        "most_frequent_training_answer": mode,
        "baselines": results,
    }


# --------------------------------------------------------------------------- files

def write_jsonl(path: str | os.PathLike, problems: Iterable[Problem]) -> Path:
    """Write problems as JSON lines (fields + ``prompt``/``target``), atomically; returns the path."""
    path = Path(path)
    lines = []
    for p in problems:
        row = asdict(p)
        row["prompt"] = p.prompt()
        row["target"] = p.target()
        lines.append(json.dumps(row, ensure_ascii=False))
    from slmkit.paths import atomic_write_text

    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return path


def read_jsonl(path: str | os.PathLike) -> list[Problem]:
    """Read problems written by ``write_jsonl`` (extra keys such as ``prompt`` are ignored)."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SlmkitError(f"{path}: cannot read ({e.strerror})") from None
    out = []
    for i, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.append(Problem(question=str(row["question"]), solution=str(row["solution"]),
                               answer=int(row["answer"]), template=str(row["template"]),
                               level=int(row["level"])))
        except (ValueError, KeyError, TypeError) as e:
            raise SlmkitError(f"{path}: line {i} is not a problem record ({type(e).__name__}: {e})") from None
    return out
