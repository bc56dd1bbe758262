"""`slmkit merge A B --lambda 0.8 OUT` and `slmkit merge sweep A B --lambdas ... --eval ...`.

One argparse parser serves both forms (a first positional `sweep` selects the sweep) so options
may come before or after the paths, as users type them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from slmkit.errors import SlmkitError

USAGE = """\
slmkit merge A B --lambda L OUT                 theta = L*A + (1-L)*B
       slmkit merge A [B ...] --base C --lambda L OUT  theta = C + sum_i L_i*(M_i - C)  (L: one value or one per model)
       slmkit merge sweep A B --lambdas 0:1:0.1 [--eval CMD|builtin] [--out DIR]"""


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "merge", help="interpolate two models / task arithmetic; `merge sweep` evaluates a lambda grid",
        usage=USAGE, description="Per-tensor weight interpolation of models with identical architecture and tokenizer, "
        "one tensor at a time (low memory). Output has the format of A (HF folder or slmkit checkpoint).")
    # argparse cannot take positionals on both sides of an option ("A B --lambda 0.8 OUT"), so everything
    # from the first path on is kept raw and parsed again, intermixed, in run_merge_command
    p.add_argument("paths", nargs=argparse.REMAINDER, metavar="PATH", help="A B OUT  |  sweep A B")
    _add_options(p)
    p.set_defaults(func=run_merge_command)


def _add_options(p: argparse.ArgumentParser, suppress: bool = False) -> None:
    d = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    p.add_argument("--lambda", dest="lam", default=d(None), help="weight of A (interpolation), or task-vector scale(s) with --base, e.g. 0.8 or 0.7,0.3")
    p.add_argument("--base", default=d(None), help="base model C for task arithmetic")
    p.add_argument("--max-shard-size", default=d("500MB"), help="HF output shard size (default 500MB)")
    p.add_argument("--skip-tokenizer-check", action="store_true", default=d(False), help="merge even if the tokenizers differ or are missing")
    sweep = p.add_argument_group("sweep (slmkit merge sweep A B ...)")
    sweep.add_argument("--lambdas", default=d("0:1:0.1"), help="comma list or start:stop:step (inclusive); default 0:1:0.1")
    sweep.add_argument("--eval", dest="eval_cmd", default=d("builtin"),
                       help="'builtin' (held-out perplexity + greedy output length) or a shell command with {model} that prints JSON with a score")
    sweep.add_argument("--score-key", default=d("score"), help="JSON field of the eval output holding the score (dotted path ok)")
    sweep.add_argument("--out", default=d(None), help="sweep output folder (default merge_sweep/)")
    sweep.add_argument("--keep-models", action="store_true", default=d(False), help="keep each merged model (default: delete after evaluation)")
    sweep.add_argument("--limit", type=int, default=d(32), help="builtin evaluator: number of held-out prompts (default 32)")
    sweep.add_argument("--max-new-tokens", type=int, default=d(64), help="builtin evaluator: greedy answer budget (default 64)")


def _reparse(args: argparse.Namespace) -> argparse.Namespace:
    inner = argparse.ArgumentParser(prog="slmkit merge", usage=USAGE, add_help=False)
    inner.add_argument("paths", nargs="*")
    _add_options(inner, suppress=True)
    parsed = inner.parse_intermixed_args(list(args.paths))
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(parsed).items():
        setattr(merged, key, value)
    return merged


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
    t = text.strip().upper()
    num = t.rstrip("KMGIB")
    try:
        value = int(float(num) * units[t[len(num):]])
    except (ValueError, KeyError):
        raise SlmkitError(f"--max-shard-size: {text!r} is not a size like 500MB or 2GB") from None
    if value <= 0:
        raise SlmkitError(f"--max-shard-size: {text!r} must be positive")
    return value


def run_merge_command(args: argparse.Namespace) -> int:
    args = _reparse(args)
    if not args.paths:
        raise SlmkitError("merge: give the input models and the output folder (slmkit merge A B --lambda 0.8 OUT)")
    if args.paths[0] == "sweep":
        return _run_sweep(args, args.paths[1:])
    from slmkit.merge.core import interpolation, merge, parse_lambdas, task_arithmetic

    if len(args.paths) < 2:
        raise SlmkitError("merge: give the input models and the output folder (slmkit merge A B --lambda 0.8 OUT)")
    *inputs, out = args.paths
    if args.lam is None:
        raise SlmkitError("merge: --lambda is required (e.g. --lambda 0.8)")
    lams = parse_lambdas(args.lam, "--lambda")
    if args.base is None:
        if len(inputs) != 2:
            raise SlmkitError(f"merge: interpolation takes exactly two models A B, got {len(inputs)} (use --base for task arithmetic)")
        if len(lams) != 1:
            raise SlmkitError(f"--lambda: interpolation takes one value, got {args.lam!r}")
        recipe = interpolation(inputs[0], inputs[1], lams[0])
    else:
        recipe = task_arithmetic(inputs, args.base, lams[0] if len(lams) == 1 else lams)
    merge(recipe, out, max_shard_bytes=parse_size(args.max_shard_size), check_tokenizer=not args.skip_tokenizer_check)
    print(f"wrote {out}  ({recipe.describe()['formula']})")
    return 0


def _run_sweep(args: argparse.Namespace, paths: list[str]) -> int:
    from slmkit.merge.core import parse_lambdas

    if len(paths) != 2:
        raise SlmkitError(f"merge sweep: give exactly two models A B, got {len(paths)}")
    from slmkit.merge.sweep import run_sweep

    result = run_sweep(paths[0], paths[1], parse_lambdas(args.lambdas), out_dir=Path(args.out or "merge_sweep"),
                       eval_cmd=args.eval_cmd, base=args.base, score_key=args.score_key, keep_models=args.keep_models,
                       limit=args.limit, max_new_tokens=args.max_new_tokens,
                       max_shard_bytes=parse_size(args.max_shard_size), check_tokenizer=not args.skip_tokenizer_check)
    print(f"wrote {result['files']['json']}, {result['files']['markdown']}, {result['files']['plot']}")
    return 0
