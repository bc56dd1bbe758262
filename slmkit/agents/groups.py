"""Scores per group of episodes (ALFWorld: per task type), from run records.

A record's group is `record["task"][key]` (the task data the runner saves with every episode). Groups
are reported beside the benchmark scores, never as extra per-episode metrics: the benchmark scores stay
means over all episodes.
"""

from __future__ import annotations

from typing import Sequence


def group_scores(records: Sequence[dict], key: str = "type", order: Sequence[str] = ()) -> dict[str, dict]:
    """{group: {"episodes": n, metric: mean ×100 for every metric}}; groups in `order`, then as they
    first appear. {} when no record's task has `key`."""
    groups: dict[str, list[dict]] = {}
    for rec in records:
        value = (rec.get("task") or {}).get(key)
        if value is not None:
            groups.setdefault(str(value), []).append(rec.get("metrics") or {})
    if not groups:
        return {}
    rank = {g: i for i, g in enumerate(order)}
    names = sorted(groups, key=lambda g: rank.get(g, len(rank)))  # stable: unlisted groups keep appearance order
    out = {}
    for name in names:
        rows = groups[name]
        metrics = sorted({m for r in rows for m in r})
        out[name] = {"episodes": len(rows),
                     **{m: round(100 * sum(float(r.get(m, 0.0)) for r in rows) / len(rows), 2) for m in metrics}}
    return out


def group_table(groups: dict[str, dict], metric: str, key: str = "type") -> list[str]:
    """Markdown rows: one column per group, `metric` (x100) with won/episodes counts for 0/1 metrics."""
    if not groups:
        return []
    head = f"| {key} | " + " | ".join(groups) + " |"
    sep = "|---|" + "---|" * len(groups)
    cells = []
    for row in groups.values():
        value = row.get(metric, 0.0)
        hits = value * row["episodes"] / 100  # value is rounded to 2 decimals: a whole count is within that
        whole = abs(hits - round(hits)) <= 0.005 * row["episodes"] / 100 + 1e-9
        count = f" ({round(hits)}/{row['episodes']})" if whole else f" (n={row['episodes']})"
        cells.append(f"{value:.2f}{count}")
    return [head, sep, f"| {metric} | " + " | ".join(cells) + " |"]
