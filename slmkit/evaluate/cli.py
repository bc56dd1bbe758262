"""`slmkit eval MODEL --suite xmodel13 ...` and `slmkit eval compare RUN...`."""

from __future__ import annotations

import argparse

from slmkit.errors import SlmkitError


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a model on a benchmark suite (lm-eval); `eval compare RUN...`",
                              description="Evaluate MODEL (HF folder, slmkit checkpoint, .gguf, ONNX folder) with lm-eval. "
                                          "`slmkit eval compare RUN...` puts finished runs side by side.")
    p.add_argument("model", help="model path, or 'compare' followed by run folders")
    p.add_argument("runs", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--suite", default="xmodel13", help="built-in suite name or a suite YAML (default xmodel13)")
    p.add_argument("--tasks", help="comma-separated subset of the suite, or any lm-eval task names")
    p.add_argument("--backend", default=None,
                   help="torch, llama.cpp, onnxruntime, remote (MODEL = an OpenAI-compatible server URL), vllm or "
                        "lm-eval-hf (lm-eval's own hf model, the reference); default: remote for URLs, llama.cpp for "
                        ".gguf files, onnxruntime for ONNX folders, else torch")
    p.add_argument("--limit", type=float, help="documents per (sub)task (int) or fraction (<1)")
    p.add_argument("--out", help="run folder (default runs/<model>-<backend>-<time>); rerun with the same folder to resume")
    p.add_argument("--data", default="auto", choices=["auto", "local", "hub"],
                   help="documents from $SLMKIT_DATA/benchmarks (local), the Hub (hub) or local when present (auto)")
    p.add_argument("--batch-size", type=int, help="prompts decoded together in generation tasks (default 8; 1 = one at a time) / lm-eval batch size (lm-eval-hf)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="backend remote (MODEL is a server URL): the served model's tokenizer folder (requests are token ids)")
    p.add_argument("--threads", type=int, help="CPU threads (torch, llama.cpp, onnxruntime); default: the runtime's own")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--no-cache", action="store_true", help="do not keep lm-eval's request cache (no resume)")
    p.set_defaults(func=_eval)


def _eval(args) -> int:
    if args.model == "compare":
        from slmkit.evaluate.compare import compare

        print(compare(args.runs, out=args.out))
        return 0
    if args.runs:
        raise SlmkitError(f"eval: unexpected extra arguments {' '.join(args.runs)} (one model per run)")
    from slmkit.evaluate.runner import run_eval

    if args.limit is not None and not args.limit > 0:
        raise SlmkitError(f"--limit {args.limit:g}: must be a positive document count or a fraction in (0, 1)")
    limit = None if args.limit is None else (int(args.limit) if args.limit >= 1 else args.limit)
    record = run_eval(args.model, suite=args.suite, tasks=args.tasks, backend=args.backend,
                      limit=limit, out=args.out, data=args.data, seed=args.seed, batch_size=args.batch_size,
                      use_cache=not args.no_cache, threads=args.threads, tokenizer=args.tokenizer)
    for s in record["scores"]:
        v = "—" if s["value"] is None else f"{s['value']:.2f}"
        print(f"{s['name']:<16} {v:>7}  ({s['metric']}, n={s['n']}){'  † fallback' if s['fallback'] else ''}")
    avg = record["average"]
    print(f"{'Average':<16} {avg['value'] if avg['value'] is not None else '—':>7}  ({avg['tasks']} of {avg['of']} tasks)")
    print(f"results: {record['out']}/results.json, report: {record['out']}/report.md")
    return 0
