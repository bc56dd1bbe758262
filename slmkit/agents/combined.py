"""`slmkit agent report RUN...`: the four agent benchmarks of one or more runs in one table, beside
Xmodel-2's Table 4 rows and ReAct's (published.json), with ALFWorld per task type.

Each run folder's results.json gives one cell (its benchmark's primary score) of its model's row; a cell of
a run that is not comparable with the published numbers (offline corpus, closed-book, derived catalog) is
marked † and the reason is listed under the table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from slmkit.agents.groups import group_table
from slmkit.agents.report import LABELS, run_backend
from slmkit.agents.runner import published_rows
from slmkit.errors import SlmkitError
from slmkit.paths import read_json

BENCHMARKS = ("hotpotqa", "fever", "alfworld", "webshop")


def load_results(runs: Sequence[str | Path]) -> list[dict]:
    out = []
    for run in runs:
        path = Path(run) / "results.json"
        if not path.is_file():
            raise SlmkitError(f"{path}: not found (a run folder that `slmkit agent run` finished a session in)")
        res = read_json(path)
        if res.get("benchmark") not in BENCHMARKS:
            raise SlmkitError(f"{path}: benchmark {res.get('benchmark')!r} is not one of {', '.join(BENCHMARKS)}")
        res["_run"] = str(run)
        out.append(res)
    return out


def model_label(res: dict) -> str:
    """`SmolLM2-135M-Instruct-q4_k_m.gguf (llama.cpp)`: the artifact (a pulled model's `<name>/hf` folder by
    its name) and the backend the run used."""
    path = Path(str(res["config"]["model"]))
    name = f"{path.parent.name}/{path.name}" if path.name == "hf" else path.name
    return f"{name} ({run_backend(res)})"


def combined_rows(results: list[dict]) -> tuple[list[list[str]], list[str]]:
    """(table rows with a header, notes); ours first, one row per model, then the published rows."""
    ours: dict[str, dict[str, str]] = {}
    notes = []
    for res in results:
        label, bench = model_label(res), res["benchmark"]
        row = ours.setdefault(label, {})
        if bench in row:
            raise SlmkitError(f"{res['_run']}: a second {bench} run of {label} (give one run per benchmark and model)")
        value = res["scores"].get(res["primary_metric"], 0.0)
        mark = "" if res["comparable"] else " †"
        row[bench] = f"{value:.2f}{mark} (n={res['episodes']})"
        if not res["comparable"]:
            notes.append(f"† {label}, {bench}: {res['not_comparable_because']}")
    head = ["model", *[LABELS[b] for b in BENCHMARKS], "source"]
    rows = [head]
    for label, cells in ours.items():
        rows.append([f"**ours: {label}**", *[cells.get(b, "—") for b in BENCHMARKS], "this report"])
    for row in published_rows()["rows"]:
        rows.append([row["model"], *[f"{row[b]:.2f}" for b in BENCHMARKS], row["group"]])
    return rows, notes


def combined_markdown(results: list[dict], title: str = "Agent benchmarks: ours beside Xmodel-2's Table 4") -> str:
    rows, notes = combined_rows(results)
    published = published_rows()
    lines = [f"# {title}", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    lines += ["", "Scores in %: HotpotQA / FEVER exact match, ALFWorld / WebShop success rate. "
              f"Published rows: {published['source']}"]
    if notes:
        lines += ["", *[f"- {n}" for n in notes]]
    for res in results:
        if res.get("per_type"):
            lines += ["", f"## {model_label(res)}: {res['benchmark']} per task type ({res['mode']})", ""]
            lines += group_table(res["per_type"], res["primary_metric"])
    lines += ["", "## Runs", "", "| run | benchmark | mode | episodes | scores | invalid actions | mean steps | wall s | load |",
              "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        s, t = res["stats"], res["timing"]
        loads = [x.get("mean_load_average") for x in t.get("sessions", []) if x.get("mean_load_average") is not None]
        load = f"{min(loads):.1f}–{max(loads):.1f}" if loads else "—"
        scores = ", ".join(f"{k} {v:.2f}" for k, v in res["scores"].items())
        lines.append(f"| `{res['_run']}` | {res['benchmark']} | {res['mode']} | {res['episodes']} | {scores} | "
                     f"{100 * s['invalid_action_rate']:.1f}% | {s['mean_steps']} | {t['wall_seconds']} | {load} |")
    return "\n".join(lines) + "\n"
