"""`slmkit eval compare RUN...`: runs side by side (e.g. fp32 vs q8_0 vs q4_k_m).

Each column is one run folder (its results.json); rows are the suite tasks, the average, the model
file size and the evaluation wall time (and tokens/s when a benchmark recorded it).
"""

from __future__ import annotations

from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.paths import atomic_write_text, read_json


def load_run(path: str | Path) -> dict:
    path = Path(path)
    file = path / "results.json" if path.is_dir() else path
    return read_json(file, missing="missing (not an eval run folder)")


def _size(run: dict) -> int | None:
    files = run.get("manifest", {}).get("model", {}).get("files", {})
    return sum(f["bytes"] for f in files.values()) if files else None


def compare_markdown(runs: list[dict]) -> str:
    names: list[str] = []
    for r in runs:
        for s in r["scores"]:
            if s["name"] not in names:
                names.append(s["name"])
    header = ["task"] + [r.get("label", f"run {i}") for i, r in enumerate(runs)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in names:
        cells = []
        for r in runs:
            s = next((s for s in r["scores"] if s["name"] == name), None)
            v = None if s is None else s["value"]
            cells.append("—" if v is None else f"{v:.2f}" + (" †" if s.get("fallback") else ""))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    avg = [r["average"]["value"] for r in runs]
    lines.append("| **Average** | " + " | ".join("—" if a is None else f"**{a:.2f}**" for a in avg) + " |")
    sizes = [_size(r) for r in runs]
    lines.append("| model size (MB) | " + " | ".join("—" if s is None else f"{s / 1e6:.1f}" for s in sizes) + " |")
    lines.append("| eval wall time (s) | " + " | ".join(str(r.get("wall_seconds", "—")) for r in runs) + " |")
    limits = {str(r["manifest"].get("limit")) for r in runs}
    backends = [r["manifest"]["backend"] for r in runs]
    notes = [f"backends: {', '.join(backends)}; limit per (sub)task: {', '.join(sorted(limits))}",
             "† few-shot fallback used (see each run's report)"]
    if len(limits) > 1:
        notes.append("WARNING: runs used different --limit values; scores are not comparable")
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes) + "\n"


def compare(paths: list[str | Path], out: str | Path | None = None) -> str:
    if not paths:
        raise SlmkitError("eval compare: give at least one run folder")
    text = compare_markdown([load_run(p) for p in paths])
    if out:
        atomic_write_text(out, text)
    return text
