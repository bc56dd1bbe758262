"""The deploy statistics against independent references: scipy's binomial test and bootstrap, the analytic
standard error of a stratified mean, lm-eval's own group aggregation; the budget plan and the pick rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from slmkit.deploy import budget
from slmkit.deploy import stats as st


def _docs(values_by_stratum: dict[str, list[float]], coef: dict[str, float] | None = None) -> st.TaskDocs:
    strata = {s: {str(i): float(v) for i, v in enumerate(vals)} for s, vals in values_by_stratum.items()}
    total = sum(len(v) for v in values_by_stratum.values())
    coef = coef or {s: len(v) / total for s, v in values_by_stratum.items()}
    return st.TaskDocs(strata=strata, coefficients=coef)


@pytest.mark.parametrize("b,c", [(0, 0), (0, 1), (1, 0), (3, 3), (5, 1), (1, 9), (12, 4), (40, 25), (0, 30), (100, 70)])
def test_mcnemar_exact_matches_scipy_binomtest(b, c):
    expected = 1.0 if b + c == 0 else sps.binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue
    assert st.mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_discordant_counts_and_non_binary_metrics():
    ref = [1, 1, 0, 0, 1, 0]
    other = [1, 0, 1, 0, 0, 0]
    assert st.discordant([float(x) for x in ref], [float(x) for x in other]) == (2, 1)
    assert st.discordant([0.5, 1.0], [1.0, 0.0]) is None  # not a 0/1 metric: no McNemar


def test_bootstrap_ci_matches_scipy_percentile_bootstrap():
    rng = np.random.default_rng(7)
    x = (rng.random(300) < 0.62).astype(float)
    docs = {"a": _docs({"t": list(x)})}
    keys, dropped = st.common_documents(docs)
    assert dropped == 0
    reps = st.task_replicates(docs, keys, iters=20000, seed=3)["a"]
    ours = st.percentile_ci(reps)
    ref = sps.bootstrap((x,), np.mean, n_resamples=20000, method="percentile", confidence_level=0.95,
                        random_state=np.random.default_rng(11)).confidence_interval
    # two independent Monte Carlo estimates of the same percentiles (in points): ~0.3 apart at most
    assert ours[0] == pytest.approx(100 * ref.low, abs=0.8)
    assert ours[1] == pytest.approx(100 * ref.high, abs=0.8)


def test_paired_difference_ci_matches_scipy_paired_bootstrap_and_is_tighter():
    rng = np.random.default_rng(5)
    ref = (rng.random(400) < 0.55).astype(float)
    flip = rng.random(400) < 0.06  # the quantized artifact disagrees on ~6% of documents, slightly more often wrong
    other = np.where(flip, np.where(rng.random(400) < 0.65, 0.0, 1.0), ref)
    docs = {"ref": _docs({"t": list(ref)}), "q": _docs({"t": list(other)})}
    out = st.compare_task(docs, "ref", iters=20000, seed=1)
    row = out["artifacts"]["q"]
    assert row["diff"] == pytest.approx(100 * (other.mean() - ref.mean()))
    sci = sps.bootstrap((other, ref), lambda a, b: np.mean(a) - np.mean(b), paired=True, vectorized=False,
                        n_resamples=5000, method="percentile", random_state=np.random.default_rng(2)).confidence_interval
    assert row["diff_ci"][0] == pytest.approx(100 * sci.low, abs=0.5)
    assert row["diff_ci"][1] == pytest.approx(100 * sci.high, abs=0.5)
    # pairing matters: the paired CI is far narrower than the unpaired (independent resampling) one
    unpaired = sps.bootstrap((other, ref), lambda a, b: np.mean(a) - np.mean(b), paired=False, vectorized=False,
                             n_resamples=3000, method="percentile", random_state=np.random.default_rng(4)).confidence_interval
    assert (row["diff_ci"][1] - row["diff_ci"][0]) < 0.5 * 100 * (unpaired.high - unpaired.low)
    b, c = row["discordant"]["reference_only"], row["discordant"]["artifact_only"]
    assert b == int(((ref == 1) & (other == 0)).sum()) and c == int(((ref == 0) & (other == 1)).sum())
    assert row["mcnemar_p"] == pytest.approx(sps.binomtest(min(b, c), b + c, 0.5).pvalue)


def test_stratified_bootstrap_spread_is_the_analytic_standard_error():
    rng = np.random.default_rng(0)
    strata = {"s1": list((rng.random(40) < 0.2).astype(float)), "s2": list((rng.random(120) < 0.7).astype(float)),
              "s3": list((rng.random(15) < 0.5).astype(float))}
    coef = {"s1": 0.5, "s2": 0.3, "s3": 0.2}  # not by size: the estimator must use these weights
    docs = {"a": _docs(strata, coef)}
    keys, _ = st.common_documents(docs)
    reps = st.task_replicates(docs, keys, iters=40000, seed=9)["a"]
    point = docs["a"].score(keys)
    assert point == pytest.approx(100 * sum(coef[s] * np.mean(v) for s, v in strata.items()))
    # bootstrap variance of a stratified mean = Σ w² · (plug-in variance)/n per stratum
    se = 100 * math.sqrt(sum(coef[s] ** 2 * np.var(v) / len(v) for s, v in strata.items()))
    assert reps.std() == pytest.approx(se, rel=0.03)
    assert reps.mean() == pytest.approx(point, abs=0.1)


def test_group_weights_reproduce_lm_eval_aggregation():
    """Nested groups, unequal sizes, one group not weighted by size: our leaf coefficients give the number
    lm-eval's own aggregate_subtask_metrics gives, and the modes are read back from reported values."""
    from lm_eval.api.metrics import aggregate_subtask_metrics

    children = {"root": ["g1", "g2", "leaf5"], "g1": ["leaf1", "leaf2"], "g2": ["leaf3", "leaf4"]}
    sizes = {"leaf1": 10, "leaf2": 30, "leaf3": 5, "leaf4": 7, "leaf5": 20}
    means = {"leaf1": 0.1, "leaf2": 0.6, "leaf3": 0.2, "leaf4": 0.9, "leaf5": 0.45}
    g1 = aggregate_subtask_metrics([means["leaf1"], means["leaf2"]], [10, 30], weight_by_size=True)
    g2 = aggregate_subtask_metrics([means["leaf3"], means["leaf4"]], [5, 7], weight_by_size=False)
    root = aggregate_subtask_metrics([g1, g2, means["leaf5"]], [40, 12, 20], weight_by_size=True)
    reported = {"g1": g1, "g2": g2, "root": root, **means}
    modes = st.infer_by_size("root", children, means, sizes, reported)
    assert modes == {"g1": True, "g2": False, "root": True}
    coef = st.leaf_coefficients("root", children, sizes, modes)
    assert sum(coef.values()) == pytest.approx(1.0)
    assert sum(coef[k] * means[k] for k in coef) == pytest.approx(root, rel=1e-12)
    # a reported value no aggregation reproduces is caught
    assert st.infer_by_size("root", children, means, sizes, {**reported, "root": root + 0.01}) is None


def test_average_pairs_tasks_and_skips_missing_ones():
    rng = np.random.default_rng(1)
    tasks = {}
    for t in ("A", "B"):
        ref = (rng.random(200) < 0.5).astype(float)
        q = ref.copy()
        q[:6] = 1 - q[:6]
        tasks[t] = st.compare_task({"ref": _docs({t: list(ref)}), "q": _docs({t: list(q)})}, "ref", iters=3000, seed=0)
    only_ref = (rng.random(50) < 0.5).astype(float)
    tasks["C"] = st.compare_task({"ref": _docs({"C": list(only_ref)})}, "ref", iters=3000, seed=0)
    avg = st.compare_average(tasks, ["ref", "q"], "ref")
    assert avg["ref"]["tasks"] == ["A", "B", "C"] and avg["q"]["tasks"] == ["A", "B"]
    expected = np.mean([tasks[t]["artifacts"]["q"]["score"] - tasks[t]["artifacts"]["ref"]["score"] for t in ("A", "B")])
    assert avg["q"]["diff"] == pytest.approx(expected, abs=1e-3) and avg["q"]["diff_tasks"] == ["A", "B"]
    lo, hi = avg["q"]["diff_ci"]
    assert lo <= avg["q"]["diff"] <= hi


def test_common_documents_drops_documents_that_differ():
    a = _docs({"t": [1, 0, 1]})
    b = _docs({"t": [1, 1, 1, 0]})
    a.hashes = {"t": {"0": "x", "1": "y", "2": "z"}}
    b.hashes = {"t": {"0": "x", "1": "DIFFERENT", "2": "z", "3": "w"}}
    keys, dropped = st.common_documents({"a": a, "b": b})
    assert keys == {"t": ["0", "2"]} and dropped == 2  # doc 1 differs between the two, doc 3 is only in b


# ---- budget --------------------------------------------------------------------------------------

def _costs():
    return [budget.TaskCost("cheap", [500], per_doc_s=0.5, overhead_s=5, pilot_limit=1),
            budget.TaskCost("group", [100] * 20, per_doc_s=2.0, overhead_s=30, pilot_limit=1),
            budget.TaskCost("slow", [1000], per_doc_s=20.0, overhead_s=10, pilot_limit=1)]


def test_budget_plan_fits_and_beats_equal_limits():
    costs = _costs()
    for seconds in (200, 1000, 5000):
        limits = budget.allocate(costs, seconds)
        spent = sum(c.cost(limits[c.name]) for c in costs)
        assert spent <= seconds
        # the best common limit within the same budget (what a user would pick by hand)
        common = max((L for L in range(1, 1001) if sum(c.cost(L) for c in costs) <= seconds), default=1)

        def var(lims):
            return sum(0.25 / c.docs(lims[c.name]) for c in costs)

        assert var(limits) <= var({c.name: common for c in costs}) * 1.0001
        # n ∝ 1/√(s/doc): the cheap task gets more documents than the slow one
        assert costs[0].docs(limits["cheap"]) >= costs[2].docs(limits["slow"])


def test_budget_plan_is_full_when_everything_fits_and_pilot_when_nothing_does():
    costs = _costs()
    full_cost = sum(c.cost(c.max_limit) for c in costs)
    assert budget.allocate(costs, full_cost + 1) == {c.name: c.max_limit for c in costs}
    assert budget.allocate(costs, 0.0) == {c.name: 1 for c in costs}


def test_worst_case_half_width_matches_a_measured_ci_at_one_half():
    rng = np.random.default_rng(3)
    x = (rng.random(400) < 0.5).astype(float)
    lo, hi = sps.bootstrap((x,), np.mean, n_resamples=10000, method="percentile",
                           random_state=np.random.default_rng(0)).confidence_interval
    assert budget.half_width(400) == pytest.approx(100 * (hi - lo) / 2, rel=0.1)
    assert budget.average_half_width([400, 400]) == pytest.approx(budget.half_width(800), rel=1e-9)


# ---- the pick ------------------------------------------------------------------------------------

def test_pareto_front_and_pick_rule():
    from slmkit.deploy.report import pareto_front, pick

    pts = {"f32": (10.0, 30.0), "q8": (20.0, 30.5), "q4": (35.0, 29.0), "bad": (15.0, 20.0)}
    assert pareto_front(pts) == ["q8", "q4"]
    tasks = ["A", "B"]

    def row(name, speed, diff_ci, status="ok"):
        return {"name": name, "status": status, "latency": {"decode_tok_s": speed},
                "average": {"score": 30.0, "ci": [28, 32], "tasks": tasks, "diff": 0.0, "diff_ci": diff_ci,
                            "diff_tasks": tasks}}

    menu = [row("f32", 10, None), row("q8", 20, [-0.4, 0.5]), row("q4", 35, [-1.9, 0.3]), row("q2", 50, None, "failed")]
    assert pick(menu, "f32", 1.0, tasks)["name"] == "q8"  # q4's CI reaches −1.9 < −1
    assert pick(menu, "f32", 2.0, tasks)["name"] == "q4"
    got = pick(menu, "f32", 0.1, tasks)
    assert got["name"] == "f32" and "q2" in got["reasons"]


def test_too_few_documents_get_no_ci_but_keep_mcnemar():
    ref, q = [1.0, 0.0, 1.0], [0.0, 0.0, 1.0]
    out = st.compare_task({"ref": _docs({"t": ref}), "q": _docs({"t": q})}, "ref", iters=500, seed=0)
    row = out["artifacts"]["q"]
    assert out["ci"] is False and row["ci"] is None and row["diff_ci"] is None and out["replicates"] == {}
    assert row["diff"] == pytest.approx(-100 / 3, abs=1e-3) and row["mcnemar_p"] == 1.0  # exact test is valid at any n
    assert st.compare_average({"t": {"artifacts": {}, "replicates": {}}}, ["ref", "q"], "ref") == {}


def test_budget_plan_gives_every_task_enough_documents_for_a_ci_when_that_fits():
    costs = _costs()
    floor_cost = sum(c.cost(c.limit_for(20)) for c in costs)
    limits = budget.allocate(costs, floor_cost + 1, floor_docs=20)
    assert all(c.docs(limits[c.name]) >= 20 for c in costs)
    assert sum(c.cost(limits[c.name]) for c in costs) <= floor_cost + 1
    # without the room for it, the plan falls back to the unfloored allocation (still within budget)
    tight = budget.allocate(costs, floor_cost / 3, floor_docs=20)
    assert sum(c.cost(tight[c.name]) for c in costs) <= floor_cost / 3
