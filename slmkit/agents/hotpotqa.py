"""HotpotQA with ReAct's prompt (instruction + `webthink_simple6`), EM/F1 with the official normalisation.

Modes (written into every result):
- `offline-distractor` (default): the HotpotQA dev questions whose distractor-setting paragraphs are in
  SLMKIT_DATA/hotpotqa (198 distinct); the union of their paragraphs (1,963 pages) is the local corpus.
  Ordered by ReAct's sample (`random.Random(233).shuffle(range(7405))`), so `--limit N` takes the
  first N of ReAct's order among them. Not comparable with published numbers (other questions; a corpus
  of 10 paragraphs per question makes search easier than all of Wikipedia).
- `local-corpus` (`corpus=DIR`): ReAct's 500-question sample of the full dev set (SLMKIT_DATA/react/data),
  tools over the user's pages. Comparable only if the corpus is Wikipedia's.
- `live-wikipedia` (`live_wiki=True`): ReAct's sample on the live site, as ReAct ran it.
"""

from __future__ import annotations

import gzip
import json
import random
from functools import lru_cache
from pathlib import Path

from slmkit.agents.base import Task
from slmkit.agents.local_wiki import LocalWiki, join_sentences, load_corpus
from slmkit.agents.metrics import exact_match, f1
from slmkit.agents.qa import WebthinkFormat, WikiQAEnv
from slmkit.errors import SlmkitError
from slmkit.agents.data import data_file as data_path
from slmkit.paths import read_json

REACT_DEV_SIZE = 7405
REACT_SEED = 233
INSTRUCTION = """Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can reason about the current situation, and Action can be three types: 
(1) Search[entity], which searches the exact entity on Wikipedia and returns the first paragraph if it exists. If not, it will return some similar entities to search.
(2) Lookup[keyword], which returns the next sentence containing keyword in the current passage.
(3) Finish[answer], which returns the answer and finishes the task.
Here are some examples.
"""  # noqa: W291 - the trailing space after "types:" is ReAct's


def react_order(n: int = REACT_DEV_SIZE, seed: int = REACT_SEED) -> list[int]:
    """ReAct's evaluation order: `idxs = list(range(7405)); random.Random(233).shuffle(idxs)`."""
    idxs = list(range(n))
    random.Random(seed).shuffle(idxs)
    return idxs


def score(answer: str, gold: str) -> dict[str, float]:
    return {"em": exact_match(answer, gold), "f1": f1(answer, gold)}


def prompt_prefix() -> str:
    examples = read_json(data_path("react", "prompts", "prompts_naive.json"))
    if "webthink_simple6" not in examples:
        raise SlmkitError(f"{data_path('react', 'prompts', 'prompts_naive.json')}: no 'webthink_simple6' prompt")
    return INSTRUCTION + examples["webthink_simple6"]


@lru_cache(maxsize=2)
def react_dev(path: str | None = None) -> list[dict]:
    """ReAct's simplified dev set (question, answer, type), 7,405 records in the official order."""
    file = Path(path) if path else data_path("react", "data", "hotpot_dev_v1_simplified.json.gz")
    try:
        with (gzip.open(file, "rt", encoding="utf-8") if file.suffix == ".gz" else open(file, encoding="utf-8")) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise SlmkitError(f"{file}: unreadable HotpotQA dev file ({exc})") from None
    return data


def distractor_questions() -> list[dict]:
    """The distractor-setting questions with paragraphs in SLMKIT_DATA/hotpotqa, deduplicated by question,
    each with its index in ReAct's dev set."""
    folder = data_path("hotpotqa")
    files = sorted(p for p in folder.glob("*.json"))
    if not files:
        raise SlmkitError(f"{folder}: no HotpotQA distractor .json files")
    dev_index = {d["question"]: i for i, d in enumerate(react_dev())}
    seen, out = set(), []
    for file in files:
        for rec in read_json(file):
            q = rec.get("question")
            if not q or q in seen:
                continue
            if q not in dev_index:
                raise SlmkitError(f"{file}: question not in ReAct's dev set: {q[:60]!r}")
            seen.add(q)
            out.append({**rec, "dev_index": dev_index[q], "source_file": file.name})
    return out


def distractor_pages(questions: list[dict]) -> dict[str, str]:
    pages: dict[str, str] = {}
    for rec in questions:
        ctx = rec["context"]
        for title, sentences in zip(ctx["title"], ctx["sentences"]):
            pages.setdefault(title, join_sentences(sentences))
    return pages


def _task(idx: int, rec: dict, rank: int, **extra) -> Task:
    data = {"question": rec["question"], "answer": rec["answer"], "type": rec.get("type"), "dev_index": idx,
            "react_rank": rank, **extra}
    return Task(id=f"hotpotqa-dev-{idx}", data=data)


def load_environment(corpus: str | None = None, live_wiki: bool = False, questions: str | None = None, **_):
    """(env, format) for `slmkit agent run hotpotqa`; see the module docstring for the modes."""
    if corpus and live_wiki:
        raise SlmkitError("hotpotqa: give either --corpus or --live-wiki, not both")
    fmt = WebthinkFormat(prompt_prefix())
    order = react_order()
    rank = {idx: r for r, idx in enumerate(order)}
    if corpus or live_wiki or questions:
        dev = react_dev(questions)
        if len(dev) != REACT_DEV_SIZE:
            order = react_order(len(dev))
        tasks = [_task(idx, dev[idx], r) for r, idx in enumerate(order)]
        if live_wiki:
            from slmkit.agents.live_wiki import LiveWiki

            source, mode, comparable = LiveWiki(), "live-wikipedia", True
        else:
            if not corpus:
                raise SlmkitError("hotpotqa --questions needs --corpus DIR or --live-wiki (the file has no paragraphs)")
            source, mode, comparable = LocalWiki(load_corpus(corpus), label=str(corpus)), "local-corpus", False
        details = {"questions": f"ReAct dev sample ({len(dev)} questions, random.Random(233) order)"}
    else:
        recs = sorted(distractor_questions(), key=lambda r: rank[r["dev_index"]])
        tasks = [_task(r["dev_index"], r, rank[r["dev_index"]], supporting_titles=sorted(set(r["supporting_facts"]["title"])),
                       level=r.get("level")) for r in recs]
        pages = distractor_pages(recs)
        source, mode, comparable = LocalWiki(pages, label="hotpotqa distractor paragraphs"), "offline-distractor", False
        details = {"questions": f"{len(recs)} dev questions with distractor paragraphs, in ReAct's order",
                   "corpus_pages": len(pages)}
    env = WikiQAEnv("hotpotqa", mode, source, tasks, lambda t: f"Question: {t.data['question']}", score,
                    comparable=comparable, details=details)
    return env, fmt
