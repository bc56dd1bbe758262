"""`slmkit demo`'s evaluation step: a small --limit slice of a few suite tasks on the demo model."""

from __future__ import annotations

from pathlib import Path

DEMO_TASKS = ("arc_easy", "piqa", "winogrande")


def run_demo_eval(model_dir: str | Path, run_dir: str | Path, limit: int = 20) -> dict:
    """Evaluate the demo checkpoint on DEMO_TASKS (suite shots, `limit` documents each); returns the record.

    Writes results.json, samples.jsonl and report.md/html/png under run_dir/eval.
    """
    from slmkit.evaluate.runner import run_eval

    record = run_eval(str(model_dir), suite="xmodel13", tasks=list(DEMO_TASKS), backend="torch", limit=limit,
                      out=Path(run_dir) / "eval", data="auto", label=f"demo model ({Path(model_dir).name})")
    return {"scores": {s["name"]: s["value"] for s in record["scores"]}, "average": record["average"]["value"],
            "limit": limit, "out": record["out"], "fallbacks": record["manifest"]["fallbacks"]}
