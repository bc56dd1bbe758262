"""`slmkit deploy MODEL ...` (registered by slmkit.cli)."""

from __future__ import annotations

import argparse
import sys

TYPES_HELP = ("comma list of artifacts: torch (the model in PyTorch), GGUF types f32,f16,bf16,q8_0,q6_k,q5_k_m,q4_k_m,"
              "q4_0,... (TYPE:repack = llama.cpp's repacked CPU kernels, TYPE:norepack = extra buffers off), "
              "onnx-fp32, onnx-int8")


def add_commands(subparsers) -> None:
    from slmkit.deploy.pipeline import DEFAULT_TYPES

    p = subparsers.add_parser(
        "deploy", help="export a model to a menu of artifacts, score each on the same documents, time it, pick one",
        description="Export MODEL to each --types artifact (parity-gated), evaluate every one on the same documents "
                    "(and agent episodes), run the latency bench on this machine, and write OUT/report.md/.html, "
                    "pareto.png and report.json: scores with bootstrap CIs, paired differences to the reference "
                    "(McNemar for accuracy), the Pareto front and the artifact to ship. Rerun the same command to "
                    "continue a stopped run.")
    p.add_argument("model", help="slmkit checkpoint / HF folder, or a model `slmkit models pull` knows")
    p.add_argument("--types", default=DEFAULT_TYPES, help=f"{TYPES_HELP} (default {DEFAULT_TYPES})")
    p.add_argument("--reference", default=None, help="artifact the others are compared with (default: f32, else torch)")
    p.add_argument("--suite", default="xmodel13", help="evaluation suite (default xmodel13)")
    p.add_argument("--tasks", default=None, help="subset of the suite, comma-separated (task or display names)")
    p.add_argument("--agents", default=None, help="agent benchmarks to run on every artifact, e.g. hotpotqa,fever")
    p.add_argument("--limit", type=int, default=None, help="documents per (sub)task (and episodes per agent benchmark)")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="choose each task's limit from a pilot so the whole run fits this many minutes")
    p.add_argument("--pilot-limit", type=int, default=1, help="--budget-minutes: the pilot's limit (default 1)")
    p.add_argument("--max-drop", type=float, default=1.0,
                   help="largest acceptable drop of the average vs the reference, in points (default 1.0)")
    p.add_argument("--gate-text", default=None, metavar="FILE",
                   help="text the parity gates run on (default: the model's gate_text.txt, else the generic passage)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for every runtime (default 2)")
    p.add_argument("--batch-size", type=int, default=None, help="generation batch size for evaluation")
    p.add_argument("--bootstrap", type=int, default=2000, help="bootstrap replicates (default 2000)")
    p.add_argument("--min-ci-docs", type=int, default=20,
                   help="fewest documents a task needs for a CI (default 20; fewer: score only, not in the pick)")
    p.add_argument("--no-latency", action="store_true", help="skip the latency bench (no pick is made)")
    p.add_argument("--prompt-tokens", type=int, default=512, help="latency bench prompt length (default 512)")
    p.add_argument("--new-tokens", type=int, default=128, help="latency bench decoded tokens (default 128)")
    p.add_argument("--repeats", type=int, default=3, help="latency bench repeats (default 3)")
    p.add_argument("--bound", action="append", default=[], metavar="TYPE:KEY=VALUE",
                   help="override one parity bound of one type, e.g. q4_0:min_top1=0.7 (KEY: max_rel_err, min_top1, "
                        "max_ppl_ratio, max_mean_kl; VALUE 'none' drops it); repeatable; shown in the report")
    p.add_argument("--retry-failed", action="store_true", help="retry exports that failed in an earlier run")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from what OUT/state.json holds, running nothing (e.g. during a long run)")
    p.add_argument("--out", default=None, help="run folder (default runs/deploy-<model>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from slmkit.deploy.pipeline import DeployConfig, run_deploy
    from slmkit.deploy.report import summary_lines

    out = args.out or str(Path("runs") / f"deploy-{Path(args.model).name}")
    argv = sys.argv[2:] if len(sys.argv) > 2 and sys.argv[1] == "deploy" else None
    cfg = DeployConfig(model=args.model, out=out, types=args.types, suite=args.suite, tasks=args.tasks,
                       agents=args.agents, limit=args.limit, budget_minutes=args.budget_minutes, max_drop=args.max_drop,
                       reference=args.reference, gate_text=args.gate_text, threads=args.threads,
                       batch_size=args.batch_size, pilot_limit=args.pilot_limit, bootstrap=args.bootstrap,
                       min_ci_docs=args.min_ci_docs,
                       latency=not args.no_latency, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                       repeats=args.repeats, retry_failed=args.retry_failed, report_only=args.report_only,
                       bounds=parse_type_bounds(args.bound), argv=argv)
    report = run_deploy(cfg)
    for line in summary_lines(report):
        print(line)
    print(f"wrote {report['files']['markdown']}, report.html, pareto.png, report.json")
    return 1 if report["failures"] else 0


def parse_type_bounds(items: list[str]) -> dict[str, dict[str, float | None]]:
    """['q4_0:min_top1=0.7', ...] -> {'q4_0': {'min_top1': 0.7}} (one-line errors)."""
    from slmkit.errors import SlmkitError
    from slmkit.export.cli import parse_bounds

    out: dict[str, dict[str, float | None]] = {}
    for item in items:
        kind, sep, rest = item.partition(":")
        if not sep or not kind.strip():
            raise SlmkitError(f"--bound {item!r}: expected TYPE:KEY=VALUE, e.g. q4_0:min_top1=0.7")
        out.setdefault(kind.strip().lower(), {}).update(parse_bounds([rest]))
    return out
