"""Reference numbers for ALFWorld: the oracle planner and a random policy on both evaluation splits, and the
replay of ReAct's few-shot trajectories in their games.

    python -m slmkit.agents.alfworld.baselines --out docs/results [--splits ood,id] [--policies planner,random]

Writes alfworld-oracle.json / .md / .png. Episodes are appended to JSONL files under --work (default
SLMKIT_CACHE/alfworld/baselines) as they end, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

from slmkit.paths import atomic_write_json, atomic_write_text, cache_dir, read_json

from . import TYPES, load_environment, per_type
from .data import resolve_split
from .fewshot import find_game, react_fewshots
from .policies import PlannerPolicy, RandomPolicy, play
from .react_format import load_prompts

RANDOM_SEED = 0


def _load_jsonl(path: Path) -> dict[str, dict]:
    done = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break
            done[rec["task_id"]] = rec
    return done


def _round_robin(tasks: list) -> list:
    """One game of each type in turn, so a run stopped early still covers every type."""
    groups: dict[str, list] = {}
    for t in tasks:
        groups.setdefault(t.data["type"], []).append(t)
    out = []
    while any(groups.values()):
        for kind in TYPES:
            if groups.get(kind):
                out.append(groups[kind].pop(0))
    return out


def run_policy(split: str, policy_name: str, work: Path, progress: bool = True, run: bool = True) -> tuple[list[dict], int]:
    """(records in task order, number of tasks); with run=False only the episodes already saved."""
    env, _ = load_environment(split)
    tasks = env.tasks()
    path = work / f"{split}-{policy_name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    done = _load_jsonl(path)
    todo = _round_robin([t for t in tasks if t.id not in done]) if run else []
    policy = PlannerPolicy() if policy_name == "planner" else RandomPolicy(RANDOM_SEED)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), initial=len(tasks) - len(todo), desc=f"{policy_name} {split}", unit="game")

    def save(rec: dict) -> None:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
            f.flush()
            os.fsync(f.fileno())
        done[rec["task_id"]] = rec
        if bar is not None:
            wins = sum(r["metrics"]["success"] for r in done.values())
            bar.set_postfix({"won": f"{int(wins)}/{len(done)}"}, refresh=False)
            bar.update(1)

    play(env, policy, todo, on_done=save)
    if bar is not None:
        bar.close()
    return [done[t.id] for t in tasks if t.id in done], len(tasks)


def summarize(records: list[dict], total: int | None = None) -> dict:
    n = len(records)
    return {
        "episodes": n,
        "games_in_split": total if total is not None else n,
        "success_rate": round(100 * sum(r["metrics"]["success"] for r in records) / max(n, 1), 2),
        "won": int(sum(r["metrics"]["success"] for r in records)),
        "per_type": per_type(records),
        "mean_actions": round(statistics.fmean(r["steps"] for r in records), 2) if records else 0.0,
        "seconds": round(sum(r["seconds"] for r in records), 1),
        "seconds_per_game": round(statistics.fmean(r["seconds"] for r in records), 2) if records else 0.0,
        "errors": [{"id": r["task_id"], "error": r["error"]} for r in records if r.get("error")],
        "not_won": [{"id": r["task_id"], "why": r.get("problem") or r.get("error") or "not won"}
                    for r in records if not r["metrics"]["success"]],
    }


def fewshot_results() -> dict:
    env, _ = load_environment("train")  # any split: candidates are searched in every folder here
    rows = [find_game(env, shot) for shot in react_fewshots(load_prompts())]
    env.close()
    return {"prompts": len(rows), "same_start": sum(1 for r in rows if r["same_start"]),
            "found": sum(1 for r in rows if r["game"]), "rows": rows}


def _plot(results: dict, path: Path) -> None:
    from slmkit.plots import pyplot, save_png

    plt = pyplot()
    splits = [s for s in results["splits"]]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 3.6), squeeze=False)
    for ax, split in zip(axes[0], splits):
        policies = results["splits"][split]
        width = 0.8 / max(len(policies), 1)
        labels = list(TYPES) + ["all"]
        for k, (name, res) in enumerate(policies.items()):
            values = [res["per_type"].get(t, {}).get("success", 0.0) for t in TYPES] + [res["success_rate"]]
            xs = [i + (k - (len(policies) - 1) / 2) * width for i in range(len(labels))]
            ax.bar(xs, values, width, label=f"{name}: {res['success_rate']:.1f}% of {res['episodes']}/{res['games_in_split']} games")
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylim(0, 105)
        ax.set_ylabel("success rate (%)")
        ax.set_title(f"ALFWorld {split}")
        ax.legend(loc="center right", fontsize=8)
    save_png(fig, path)


def _markdown(results: dict) -> str:
    lines = ["# ALFWorld: oracle planner and random policy", "",
             "Every episode is played through `slmkit.agents.alfworld` — the same `AlfworldEnv` (alfworld 0.4.2's "
             "`AlfredTWEnv` with ReAct's base config, TextWorld 1.7.0), the same observations and the same scorer "
             "(`info['won']`) that a model's ReAct run uses, with ReAct's budget of 49 actions.", "",
             "- **planner**: Fast Downward's plan for each game's PDDL problem (TextWorld's PDDL planner, in the game's "
             "own command grammar), every command checked against the env's admissible commands before it is played;",
             f"- **random**: uniformly one admissible command per step (`random.Random(f\"{RANDOM_SEED}:{{game id}}\")`).",
             "", f"Measured {results['measured']} on {results['machine']}; wall times are sums of per-game seconds, "
             f"taken while other jobs shared the machine (load average {results.get('load_average', '?')} when this "
             "report was written), so they are loose: alfworld.md gives idle-machine timings.", ""]
    for split, policies in results["splits"].items():
        first = next(iter(policies.values()))
        lines += [f"## {split} ({first['games_in_split']} games)", "",
                  "| policy | all | " + " | ".join(TYPES) + " | mean actions | wall (s) | s/game |",
                  "|---|---|" + "---|" * len(TYPES) + "---|---|---|"]
        for name, res in policies.items():
            cells = []
            for t in TYPES:
                row = res["per_type"].get(t)
                cells.append(f"{row['success']:.1f} ({round(row['success'] * row['episodes'] / 100)}/{row['episodes']})" if row else "—")
            lines.append(f"| {name} | **{res['success_rate']:.2f}** ({res['won']}/{res['episodes']}) | " + " | ".join(cells)
                         + f" | {res['mean_actions']} | {res['seconds']:.0f} | {res['seconds_per_game']} |")
        for name, res in policies.items():
            if res["episodes"] < res["games_in_split"]:
                lines += ["", f"**{name}: {res['episodes']} of the {res['games_in_split']} games played so far** "
                          "(the rates above are over those)."]
            if name == "planner" and res["not_won"]:
                lines += ["", f"Planner did not win {len(res['not_won'])} game(s):"]
                lines += [f"- `{r['id']}`: {r['why']}" for r in res["not_won"]]
            if res["errors"]:
                lines += ["", f"{name}: {len(res['errors'])} episode error(s):"] + [f"- `{r['id']}`: {r['error']}" for r in res["errors"]]
        lines.append("")
    fs = results.get("fewshot")
    if fs:
        lines += ["## ReAct's few-shot trajectories replayed", "",
                  f"Of the {fs['prompts']} `react_*` trajectories in `alfworld_3prompts.json`, {fs['found']} were recorded on a "
                  f"game that is here (same first observation and every recorded answer replays). {fs['same_start']} have a "
                  "game here with the identical first observation (same room, same goal): another trial of that task, whose "
                  "objects lie elsewhere, so the replay differs where the trajectory finds things. ReAct recorded its "
                  "trajectories on ALFWorld's train split, of which only ExpeL's 200-game subset is here.", "",
                  "| prompt | task candidates | same start | recorded game here | answers equal / compared |",
                  "|---|---|---|---|---|"]
        for r in fs["rows"]:
            rep = r.get("replay")
            equal = f"{rep['answers'] - len([m for m in rep['mismatches'] if 'answer' in m])} / {rep['answers']}" if rep else ""
            lines.append(f"| {r['key']} | {r['candidates']} | {len(r['same_start'])} | "
                         f"{('`' + r['game'] + '`') if r['game'] else 'no'} | {equal} |")
        lines.append("")
    lines += ["Reproduce: `python -m slmkit.agents.alfworld.baselines --out docs/results` (resumes from "
              "SLMKIT_CACHE/alfworld/baselines).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="docs/results")
    ap.add_argument("--splits", default="eval_out_of_distribution,eval_in_distribution")
    ap.add_argument("--policies", default="planner,random")
    ap.add_argument("--work", default=None)
    ap.add_argument("--no-fewshot", action="store_true")
    ap.add_argument("--report-only", action="store_true", help="write the report from the episodes saved so far")
    args = ap.parse_args(argv)
    work = Path(args.work) if args.work else cache_dir() / "alfworld" / "baselines"
    results: dict = {"measured": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                     "load_average": round(os.getloadavg()[0], 1), "splits": {}}
    policies = [p.strip() for p in args.policies.split(",") if p.strip() and p.strip() != "none"]
    for split in [resolve_split(s.strip()) for s in args.splits.split(",")]:
        results["splits"][split] = {}
        for name in policies:
            records, total = run_policy(split, name, work, run=not args.report_only)
            if records:
                results["splits"][split][name] = summarize(records, total)
    results["splits"] = {k: v for k, v in results["splits"].items() if v}
    if not args.no_fewshot:
        saved = work / "fewshot.json"
        if args.report_only and saved.is_file():
            results["fewshot"] = read_json(saved)
        else:
            results["fewshot"] = fewshot_results()
            atomic_write_json(saved, results["fewshot"])
    out = Path(args.out)
    atomic_write_json(out / "alfworld-oracle.json", results)
    atomic_write_text(out / "alfworld-oracle.md", _markdown(results))
    if results["splits"]:
        _plot(results, out / "alfworld-oracle.png")
    print(f"wrote {out}/alfworld-oracle.json, .md, .png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
