"""Per-document values from an eval run folder (samples.jsonl) and an agent run (trajectories.jsonl).

The paired statistics need, for every artifact, the value of the suite's metric on each document, keyed
so that the same document lines up across artifacts: (leaf task, doc_id), checked by lm-eval's doc_hash.
We also check that these values reproduce lm-eval's own score (leaf means and each group's aggregate):
a score whose documents do not reproduce it gets no CI rather than a wrong one.
"""

from __future__ import annotations

import json
from pathlib import Path

from slmkit.deploy.stats import TaskDocs, infer_by_size, leaf_coefficients
from slmkit.paths import read_json

TOL = 1e-6


def _table(record: dict) -> dict[str, dict]:
    lm = record.get("lm_eval") or {}
    return {**(lm.get("results") or {}), **(lm.get("groups") or {})}


def eval_docs(run_dir: str | Path) -> dict:
    """{"metric", "filter", "strata", "hashes", "coefficients", "lm_eval_value", "problem"} for a one-task run."""
    run_dir = Path(run_dir)
    record = read_json(run_dir / "results.json")
    row = record["scores"][0]
    metric, _, filt = (row.get("metric") or "").partition(",")
    root = row["task"]
    lm = record.get("lm_eval") or {}
    children = {g: list(c) for g, c in (lm.get("group_subtasks") or {}).items() if c}
    leaves = _leaves(root, children)
    strata: dict[str, dict[str, float]] = {leaf: {} for leaf in leaves}
    hashes: dict[str, dict[str, str]] = {leaf: {} for leaf in leaves}
    samples = run_dir / "samples.jsonl"
    with open(samples, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            s = json.loads(line)
            if s.get("task") not in strata or (s.get("filter") or "none") != (filt or "none"):
                continue
            value = s.get(metric)
            if isinstance(value, bool):
                value = float(value)
            if not isinstance(value, (int, float)):
                continue
            key = str(s["doc_id"])
            strata[s["task"]][key] = float(value)
            if s.get("doc_hash"):
                hashes[s["task"]][key] = s["doc_hash"]
    out = {"task": row["name"], "metric": metric, "filter": filt or "none", "strata": strata, "hashes": hashes,
           "lm_eval_value": row.get("value"), "coefficients": None, "problem": None}
    key = row.get("metric") or ""
    table = _table(record)
    reported = {name: float(r[key]) for name, r in table.items() if isinstance(r.get(key), (int, float))}
    sizes = {leaf: len(v) for leaf, v in strata.items()}
    means = {leaf: sum(v.values()) / len(v) for leaf, v in strata.items() if v}
    for leaf, mean in means.items():
        if leaf in reported and abs(mean - reported[leaf]) > TOL:
            out["problem"] = (f"{leaf}: the per-document {metric} values average {mean:.6f}, lm-eval reports "
                              f"{reported[leaf]:.6f} (not a per-document mean)")
            return out
    if not means:
        out["problem"] = f"no per-document '{metric}' values ({filt or 'none'} filter) in {samples}"
        return out
    by_size = infer_by_size(root, children, means, sizes, reported) if root in children else {}
    if by_size is None:
        out["problem"] = f"{root}: the group score is neither the size-weighted nor the plain mean of its subtasks"
        return out
    coef = leaf_coefficients(root, children, sizes, by_size) if root in children else {root: 1.0}
    out["coefficients"] = {leaf: c for leaf, c in coef.items() if c > 0}
    return out


def _leaves(root: str, children: dict[str, list[str]]) -> list[str]:
    if root not in children:
        return [root]
    return [leaf for c in children[root] for leaf in _leaves(c, children)]


def agent_docs(run_dir: str | Path) -> dict:
    """Per-episode values of the benchmark's primary metric (one stratum: the episodes)."""
    run_dir = Path(run_dir)
    results = read_json(run_dir / "results.json")
    metric = results.get("primary_metric")
    values: dict[str, float] = {}
    path = run_dir / "trajectories.jsonl"
    episodes = int(results.get("episodes") or 0)
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rec = json.loads(line)
                if isinstance(rec.get("index"), int) and rec["index"] >= episodes:
                    continue  # an episode beyond this run's --limit (from an earlier, longer run)
                value = (rec.get("metrics") or {}).get(metric)
                if isinstance(value, (int, float)):
                    values[str(rec["task_id"])] = float(value)
    bench = results.get("benchmark", "agent")
    reported = (results.get("scores") or {}).get(metric)
    out = {"task": bench, "metric": metric, "filter": "none", "strata": {bench: values}, "hashes": {bench: {}},
           "lm_eval_value": reported, "coefficients": {bench: 1.0}, "problem": None}
    if not values:
        out["problem"] = f"{path}: no episode has a '{metric}' value"
    elif reported is not None and abs(100 * sum(values.values()) / len(values) - reported) > 0.01:
        out["problem"] = f"{path}: episode values do not reproduce the reported {metric} {reported}"
    return out


def to_task_docs(record: dict) -> TaskDocs | None:
    if record.get("problem") or not record.get("coefficients"):
        return None
    strata = {s: v for s, v in record["strata"].items() if s in record["coefficients"] and v}
    return TaskDocs(strata=strata, coefficients={s: record["coefficients"][s] for s in strata},
                    hashes=record.get("hashes") or {})
