"""`--budget-minutes`: choose each task's --limit so the whole run fits, from a measured pilot.

The pilot runs every (artifact, task) at a small limit (its documents stay in lm-eval's request cache,
so they are not paid twice). Per task it gives seconds per document summed over artifacts (c_t) and the
fixed cost of a rerun (o_t: building the task's requests). The headline is the suite average, whose
variance is Σ_t σ_t²/n_t / T²; for a cost Σ_t c_t n_t that is smallest when n_t ∝ σ_t/√c_t (Lagrange),
and with σ_t unknown before the run we take the worst case σ = ½ for every 0/1 metric, so n_t ∝ 1/√c_t:
cheap tasks get more documents. The scale is the largest that fits the budget left after exports,
latency and the pilot. The precision this buys is stated as the worst-case 95% half-width
1.96·100·√(¼/n) of each task's score and of the average.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

Z95 = 1.959963984540054


@dataclass
class TaskCost:
    name: str
    leaf_sizes: list[int]  # documents available in each leaf (sub)task
    per_doc_s: float  # seconds per document, summed over the artifacts that ran the pilot
    overhead_s: float  # seconds a rerun costs beyond its documents (request building, model calls setup)
    pilot_limit: int

    def docs(self, limit: int) -> int:
        return sum(min(limit, n) for n in self.leaf_sizes)

    @property
    def max_limit(self) -> int:
        return max(self.leaf_sizes) if self.leaf_sizes else self.pilot_limit

    def cost(self, limit: int) -> float:
        """Seconds to go from the pilot to `limit` (the pilot's documents are cached)."""
        if limit <= self.pilot_limit:
            return 0.0
        return self.overhead_s + self.per_doc_s * (self.docs(limit) - self.docs(self.pilot_limit))

    def limit_for(self, docs_wanted: float) -> int:
        """The smallest limit giving at least `docs_wanted` documents (within [pilot, max])."""
        lo, hi = self.pilot_limit, self.max_limit
        if self.docs(hi) <= docs_wanted:
            return hi
        while lo < hi:
            mid = (lo + hi) // 2
            if self.docs(mid) >= docs_wanted:
                hi = mid
            else:
                lo = mid + 1
        return max(lo, self.pilot_limit)


def allocate(costs: list[TaskCost], seconds: float, floor_docs: int = 0) -> dict[str, int]:
    """Per-task limits with Σ cost ≤ seconds and documents ∝ 1/√(seconds per document).

    floor_docs: every task first gets this many documents (the fewest a CI is given for) when that fits."""
    if not costs:
        return {}

    def total(limits: dict[str, int]) -> float:
        return sum(c.cost(limits[c.name]) for c in costs)

    floor = {c.name: c.limit_for(floor_docs) for c in costs}
    if total(floor) > seconds:
        floor = {c.name: c.pilot_limit for c in costs}

    def plan(scale: float) -> dict[str, int]:
        return {c.name: max(floor[c.name], c.limit_for(scale / math.sqrt(max(c.per_doc_s, 1e-9)))) for c in costs}

    full = {c.name: c.max_limit for c in costs}
    if total(full) <= seconds:
        return full
    if total(plan(0.0)) > seconds:
        return plan(0.0)
    lo, hi = 0.0, 1.0
    while total(plan(hi)) <= seconds:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if total(plan(mid)) <= seconds:
            lo = mid
        else:
            hi = mid
    return plan(lo)


def half_width(n_docs: int) -> float | None:
    """Worst-case (p = ½) 95% half-width, in points, of a mean of n 0/1 values."""
    return None if n_docs <= 0 else 100 * Z95 * math.sqrt(0.25 / n_docs)


def average_half_width(n_docs: list[int]) -> float | None:
    """Worst-case 95% half-width of the mean of independent task scores with these document counts."""
    if not n_docs or any(n <= 0 for n in n_docs):
        return None
    return 100 * Z95 * math.sqrt(sum(0.25 / n for n in n_docs)) / len(n_docs)


def precision(costs: list[TaskCost], limits: dict[str, int]) -> dict:
    tasks = {c.name: {"limit": limits[c.name], "documents": c.docs(limits[c.name]),
                      "half_width": round(half_width(c.docs(limits[c.name])) or 0, 2),
                      "full": limits[c.name] >= c.max_limit,
                      "planned_seconds": round(c.cost(limits[c.name]), 1)} for c in costs}
    avg = average_half_width([t["documents"] for t in tasks.values()])
    return {"tasks": tasks, "average_half_width": None if avg is None else round(avg, 2),
            "planned_seconds": round(sum(t["planned_seconds"] for t in tasks.values()), 1)}
