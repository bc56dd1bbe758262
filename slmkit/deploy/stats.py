"""Statistics for a menu of artifacts scored on the *same* documents: bootstrap CIs and paired tests.

Why paired: two artifacts of one model agree on most documents, so the noise in "q4_k_m minus fp32" is
the noise of the few documents where they disagree, much smaller than the noise of either score. We
resample documents, not scores: every bootstrap replicate draws one set of document indices per stratum
and applies it to every artifact, so a replicate's difference is a difference on identical documents.

A task's score is lm-eval's: a weighted mean of per-document values over its leaf tasks (strata), with
the weights lm-eval's group aggregation uses (`leaf_coefficients`). Resampling within each stratum keeps
the design (documents per leaf) fixed. The suite average is the mean of task scores, its replicates the
mean of the tasks' replicates (tasks are resampled independently, the artifacts jointly).

McNemar's exact test: under "no difference", each discordant document (one artifact right, the other
wrong) is a fair coin, so min(b, c) ~ Binomial(b + c, 1/2); two-sided p = min(1, 2·P[X ≤ min(b, c)]).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_ITERS = 2000
# Below this many documents a percentile bootstrap of a 0/1 metric is degenerate (n = 1 gives [x, x]) or badly
# under-covers, so no CI is given: the score stands alone and nothing can be shipped on it.
MIN_CI_DOCS = 20


# ---- a task's documents ------------------------------------------------------------------------

@dataclass
class TaskDocs:
    """One artifact's per-document values for one task: stratum (leaf task) -> {doc key: value}."""

    strata: dict[str, dict[str, float]]
    coefficients: dict[str, float]  # stratum weight in the task score (sums to 1)
    hashes: dict[str, dict[str, str]] = field(default_factory=dict)  # stratum -> doc key -> document hash

    def score(self, keys: dict[str, list[str]] | None = None) -> float:
        """100 × Σ_s coef_s · mean_s / Σ_s coef_s over `keys` (default: all documents)."""
        keys = keys or {s: list(d) for s, d in self.strata.items()}
        kept = sum(self.coefficients[s] for s, ks in keys.items() if ks)
        return 100.0 * sum(self.coefficients[s] * float(np.mean([self.strata[s][k] for k in ks]))
                           for s, ks in keys.items() if ks) / kept


def common_documents(docs: dict[str, TaskDocs]) -> tuple[dict[str, list[str]], int]:
    """Documents every artifact has, per stratum, in a fixed order; and how many were dropped.

    Documents must be the same ones (same hash) to be paired; a key whose hash differs is dropped."""
    names = list(docs)
    strata = sorted(set.intersection(*(set(d.strata) for d in docs.values()))) if docs else []
    out: dict[str, list[str]] = {}
    dropped = 0
    for s in strata:
        keys = set.intersection(*(set(docs[n].strata[s]) for n in names))
        union = set.union(*(set(docs[n].strata[s]) for n in names))
        good = []
        for k in keys:
            seen = {docs[n].hashes.get(s, {}).get(k) for n in names}
            if len(seen - {None}) <= 1:
                good.append(k)
        dropped += len(union) - len(good)
        out[s] = sorted(good, key=_doc_order)
    for n in names:
        dropped += sum(len(v) for s, v in docs[n].strata.items() if s not in out)
    return out, dropped


def _doc_order(key: str):
    return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)


def leaf_coefficients(root: str, children: dict[str, list[str]], sizes: dict[str, int],
                      by_size: dict[str, bool]) -> dict[str, float]:
    """Weight of each leaf in `root`'s score under lm-eval's group aggregation.

    A group's value is Σ_c w_c v_c / Σ_c w_c with w_c = documents under child c (weight_by_size) or 1.
    `children`: group -> its subtasks (leaves are absent); `sizes`: leaf -> documents scored."""
    def docs_under(node: str) -> int:
        return sum(docs_under(c) for c in children[node]) if node in children else sizes.get(node, 0)

    def walk(node: str, weight: float, out: dict[str, float]) -> None:
        if node not in children:
            out[node] = out.get(node, 0.0) + weight
            return
        kids = [c for c in children[node] if docs_under(c) > 0]
        w = [docs_under(c) if by_size.get(node, True) else 1 for c in kids]
        total = sum(w)
        for c, wc in zip(kids, w):
            walk(c, weight * wc / total, out)

    out: dict[str, float] = {}
    walk(root, 1.0, out)
    return out


def infer_by_size(root: str, children: dict[str, list[str]], leaf_means: dict[str, float], sizes: dict[str, int],
                  reported: dict[str, float], tol: float = 1e-6) -> dict[str, bool] | None:
    """Each group's aggregation (by size or plain mean), read off the group values lm-eval reported.

    Bottom-up: the mode whose value matches lm-eval's for that group; None when neither does (the task's
    score is then not a weighted mean of its documents and gets no CI)."""
    modes: dict[str, bool] = {}

    def value(node: str) -> tuple[float, int]:
        if node not in children:
            return leaf_means[node], sizes.get(node, 0)
        parts = [value(c) for c in children[node]]
        parts = [(v, n) for v, n in parts if n > 0]
        total = sum(n for _, n in parts)
        by = sum(v * n for v, n in parts) / total
        flat = sum(v for v, _ in parts) / len(parts)
        want = reported.get(node)
        if want is None or abs(by - want) <= tol:
            modes[node] = True
            return by, total
        if abs(flat - want) <= tol:
            modes[node] = False
            return flat, total
        raise _Mismatch(node)

    try:
        value(root)
    except _Mismatch:
        return None
    return modes


class _Mismatch(Exception):
    pass


# ---- bootstrap -----------------------------------------------------------------------------------

def task_replicates(docs: dict[str, TaskDocs], keys: dict[str, list[str]], iters: int = BOOTSTRAP_ITERS,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Bootstrap replicates (iters,) of every artifact's task score, on shared document draws (paired)."""
    rng = np.random.default_rng(seed)
    names = list(docs)
    reps = {n: np.zeros(iters) for n in names}
    for s, ks in keys.items():
        if not ks:
            continue
        idx = rng.integers(0, len(ks), size=(iters, len(ks)))
        for n in names:
            values = np.array([docs[n].strata[s][k] for k in ks], dtype=np.float64)
            reps[n] += 100.0 * docs[n].coefficients[s] * values[idx].mean(axis=1)
    # coefficients of strata that lost all documents are renormalised away
    for n in names:
        kept = sum(docs[n].coefficients[s] for s, ks in keys.items() if ks)
        if kept > 0:
            reps[n] /= kept
    return reps


def percentile_ci(replicates: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    lo, hi = np.quantile(np.asarray(replicates, dtype=np.float64), [alpha, 1 - alpha])
    return float(lo), float(hi)


# ---- McNemar -------------------------------------------------------------------------------------

def discordant(ref: list[float], other: list[float]) -> tuple[int, int] | None:
    """(b, c): documents right for the reference only, right for `other` only; None unless both are 0/1."""
    values = set(ref) | set(other)
    if not values <= {0.0, 1.0}:
        return None
    b = sum(1 for r, o in zip(ref, other) if r == 1.0 and o == 0.0)
    c = sum(1 for r, o in zip(ref, other) if r == 0.0 and o == 1.0)
    return b, c


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts (binomial test of b vs c at 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2.0 * tail)


# ---- summaries -----------------------------------------------------------------------------------

def compare_task(docs: dict[str, TaskDocs], reference: str | None, iters: int = BOOTSTRAP_ITERS, seed: int = 0,
                 confidence: float = CONFIDENCE, min_docs: int = MIN_CI_DOCS) -> dict:
    """Scores with CIs and paired differences to `reference` for one task; replicates kept for averaging.
    With fewer than `min_docs` documents: scores, differences and McNemar only (no CI, no replicates)."""
    keys, dropped = common_documents(docs)
    n_docs = sum(len(v) for v in keys.values())
    out: dict = {"documents": n_docs, "dropped_documents": dropped, "artifacts": {}, "replicates": {},
                 "ci": n_docs >= min_docs}
    if n_docs == 0:
        return out
    reps = task_replicates(docs, keys, iters, seed) if out["ci"] else None
    equal_weights = _equal_doc_weights(next(iter(docs.values())), keys)
    for name, d in docs.items():
        point = d.score(keys)
        ci = [round(v, 4) for v in percentile_ci(reps[name], confidence)] if reps else None
        row = {"score": round(point, 4), "ci": ci, "n": n_docs}
        if reference in docs and name != reference:
            row["diff"] = round(point - docs[reference].score(keys), 4)
            row["diff_ci"] = [round(v, 4) for v in percentile_ci(reps[name] - reps[reference], confidence)] if reps else None
            ref_vals = [docs[reference].strata[s][k] for s, ks in keys.items() for k in ks]
            our_vals = [d.strata[s][k] for s, ks in keys.items() for k in ks]
            bc = discordant(ref_vals, our_vals)
            if bc is not None:
                row["discordant"] = {"reference_only": bc[0], "artifact_only": bc[1]}
                row["mcnemar_p"] = mcnemar_exact(*bc) if equal_weights else None
        out["artifacts"][name] = row
        if reps:
            out["replicates"][name] = reps[name]
    return out


def _equal_doc_weights(d: TaskDocs, keys: dict[str, list[str]]) -> bool:
    """McNemar pools documents; that is the task's own comparison only when every document weighs the same."""
    per_doc = [d.coefficients[s] / len(ks) for s, ks in keys.items() if ks]
    return bool(per_doc) and max(per_doc) - min(per_doc) <= 1e-9 * max(per_doc)


def compare_average(tasks: dict[str, dict], names: list[str], reference: str | None,
                    confidence: float = CONFIDENCE) -> dict:
    """The mean of task scores per artifact (over the tasks it has) with a CI, and its paired difference to
    the reference over the tasks both have."""
    out: dict = {}
    for name in names:
        have = [t for t, r in tasks.items() if name in r.get("artifacts", {})]
        if not have:
            continue
        point = float(np.mean([tasks[t]["artifacts"][name]["score"] for t in have]))
        reps = np.mean([tasks[t]["replicates"][name] for t in have], axis=0)
        lo, hi = percentile_ci(reps, confidence)
        row = {"score": round(point, 4), "ci": [round(lo, 4), round(hi, 4)], "tasks": have}
        if reference is not None and name != reference:
            both = [t for t in have if reference in tasks[t].get("artifacts", {})]
            if both:
                d_point = float(np.mean([tasks[t]["artifacts"][name]["score"] - tasks[t]["artifacts"][reference]["score"]
                                         for t in both]))
                d_reps = np.mean([tasks[t]["replicates"][name] - tasks[t]["replicates"][reference] for t in both], axis=0)
                dlo, dhi = percentile_ci(d_reps, confidence)
                row.update(diff=round(d_point, 4), diff_ci=[round(dlo, 4), round(dhi, 4)], diff_tasks=both)
        out[name] = row
    return out
