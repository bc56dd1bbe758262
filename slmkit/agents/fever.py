"""FEVER with ReAct's prompt (`webthink_simple3`): SUPPORTS / REFUTES / NOT ENOUGH INFO, EM as ReAct scores it
(normalised answer == normalised label).

Claims: SLMKIT_DATA/fever (19,998 labelled; the first 9,999 are ReAct's paper_dev in order), sampled as
ReAct does: the first N of `random.Random(233).shuffle(range(7405))` (items 0..7404).
Modes: `closed-book` (default; no Wikipedia text is available offline): only finish[] and think[] work,
and the prompt's examples are ReAct's FEVER CoT examples (`cotqa_simple3`) in the ReAct format,
`Thought 1: {thought}\\nAction 1: Finish[{label}]` — not comparable with ReAct's or Xmodel-2's numbers;
`local-corpus` (`corpus=DIR`) and `live-wikipedia` (`live_wiki=True`) use ReAct's prompt and all tools.
"""

from __future__ import annotations

import gzip
import json
import re
from functools import lru_cache

from slmkit.agents.base import Task
from slmkit.agents.hotpotqa import react_order
from slmkit.agents.local_wiki import LocalWiki, load_corpus
from slmkit.agents.metrics import normalize_answer
from slmkit.agents.qa import WebthinkFormat, WikiQAEnv
from slmkit.errors import SlmkitError
from slmkit.agents.data import data_file as data_path
from slmkit.paths import read_json

LABELS = ("SUPPORTS", "REFUTES", "NOT ENOUGH INFO")
REACT_SAMPLE_RANGE = 7405  # ReAct's notebook shuffles range(7405) over paper_dev's 9,999 lines


def score(answer: str, gold: str) -> dict[str, float]:
    em = float(normalize_answer(answer) == normalize_answer(gold))
    return {"em": em}


@lru_cache(maxsize=1)
def claims() -> list[dict]:
    path = data_path("fever", "fever_labelled_dev_19998.json.gz")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as exc:
        raise SlmkitError(f"{path}: unreadable FEVER file ({exc})") from None
    return data


def _prompts() -> dict:
    return read_json(data_path("react", "prompts", "fever.json"))


def react_prefix() -> str:
    return _prompts()["webthink_simple3"]


def closed_book_prefix() -> str:
    """ReAct's FEVER instruction with its three CoT examples written as one-step ReAct trajectories."""
    prompts = _prompts()
    instruction = prompts["webthink_simple3"].split("\nClaim:", 1)[0] + "\n"
    blocks = re.findall(r"Claim: (.*?)\nThought: (.*?)\nAnswer:\s*(.*?)\n", prompts["cotqa_simple3"])
    if len(blocks) != 3:
        raise SlmkitError("fever.json: cotqa_simple3 does not hold three Claim/Thought/Answer examples")
    return instruction + "".join(f"Claim: {c}\nThought 1: {t}\nAction 1: Finish[{a.strip()}]\n\n" for c, t, a in blocks)


def load_environment(corpus: str | None = None, live_wiki: bool = False, **_):
    if corpus and live_wiki:
        raise SlmkitError("fever: give either --corpus or --live-wiki, not both")
    data = claims()
    order = react_order(min(REACT_SAMPLE_RANGE, len(data)))
    tasks = [Task(id=f"fever-dev-{idx}", data={"claim": data[idx]["claim"], "answer": data[idx]["label"],
                                                 "fever_id": data[idx]["id"], "react_rank": r})
             for r, idx in enumerate(order)]
    if live_wiki:
        from slmkit.agents.live_wiki import LiveWiki

        source, mode, comparable, tools = LiveWiki(), "live-wikipedia", True, ("search", "lookup", "finish", "think")
        prefix = react_prefix()
    elif corpus:
        source, mode, comparable, tools = LocalWiki(load_corpus(corpus), label=str(corpus)), "local-corpus", False, \
            ("search", "lookup", "finish", "think")
        prefix = react_prefix()
    else:
        source, mode, comparable, tools = None, "closed-book", False, ("finish", "think")
        prefix = closed_book_prefix()
    env = WikiQAEnv("fever", mode, source, tasks, lambda t: f"Claim: {t.data['claim']}", score, tools=tools,
                    comparable=comparable, details={"claims": f"ReAct's sample order over {len(order)} paper_dev claims"})
    return env, WebthinkFormat(prefix)
