"""Per-type score tables: won/episodes counts for 0/1 metrics even where the rounded rate (11.11 %) is inexact."""

from slmkit.agents.groups import group_scores, group_table


def test_counts_for_whole_hits_and_n_for_partial_credit():
    recs = [{"task": {"type": "bridge"}, "metrics": {"em": float(i == 0)}} for i in range(9)]
    recs += [{"task": {"type": "comparison"}, "metrics": {"em": 0.5}} for _ in range(3)]
    recs += [{"task": {}, "metrics": {"em": 1.0}}]  # no type: in the means, not in a group
    groups = group_scores(recs, "type", order=("comparison", "bridge"))
    assert list(groups) == ["comparison", "bridge"]
    assert groups["bridge"] == {"episodes": 9, "em": 11.11} and groups["comparison"] == {"episodes": 3, "em": 50.0}
    assert group_table(groups, "em")[-1] == "| em | 50.00 (n=3) | 11.11 (1/9) |"
    assert group_scores([{"task": {}, "metrics": {"em": 1.0}}]) == {} and group_table({}, "em") == []
