"""`slmkit demo`: the whole pipeline on the built-in synthetic corpus."""

from __future__ import annotations

import json
from pathlib import Path


def add_commands(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on the built-in synthetic corpus (CPU, minutes)")
    p.add_argument("--out", default="runs/demo", help="run folder (default runs/demo)")
    p.add_argument("--quick", action="store_true", help="fewer steps/problems (smoke test)")
    p.add_argument("--stages", default=None, help="comma-separated subset of stages to run after training")
    p.set_defaults(func=_demo)


def _demo(args) -> int:
    from slmkit.demo import run_demo

    report = run_demo(Path(args.out), quick=args.quick, stages=args.stages.split(",") if args.stages else None)
    print(json.dumps(report["summary"], indent=2))
    return 0 if report["summary"].get("ok") else 1
