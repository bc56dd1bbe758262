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


def add_merge_commands(subparsers) -> None:
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
    from slmkit.export.merge import interpolation, merge, parse_lambdas, task_arithmetic

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
    from slmkit.export.merge import parse_lambdas

    if len(paths) != 2:
        raise SlmkitError(f"merge sweep: give exactly two models A B, got {len(paths)}")
    result = run_sweep(paths[0], paths[1], parse_lambdas(args.lambdas), out_dir=Path(args.out or "merge_sweep"),
                       eval_cmd=args.eval_cmd, base=args.base, score_key=args.score_key, keep_models=args.keep_models,
                       limit=args.limit, max_new_tokens=args.max_new_tokens,
                       max_shard_bytes=parse_size(args.max_shard_size), check_tokenizer=not args.skip_tokenizer_check)
    print(f"wrote {result['files']['json']}, {result['files']['markdown']}, {result['files']['plot']}")
    return 0


# ----------------------------------------------------------------------------------------------
# the sweep: merge at each λ, evaluate, plot (the three-regime curve of model interpolation)


def run_sweep(a: str | Path, b: str | Path, lambdas: list[float], out_dir: Path, eval_cmd: str = "builtin",
              base: str | Path | None = None, score_key: str = "score", keep_models: bool = False, limit: int = 32,
              max_new_tokens: int = 64, max_shard_bytes: int = 500 * 10**6, check_tokenizer: bool = True) -> dict:
    """Without base: θ(λ) = λA + (1−λ)B. With base C: θ(λ) = C + λ[(A−C) + (B−C)] (task-vector scale)."""
    import shutil

    from rich.progress import Progress

    from slmkit.export.merge import interpolation, merge, task_arithmetic
    from slmkit.paths import atomic_write_json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with Progress(transient=True) as progress:
        task = progress.add_task("sweep", total=len(lambdas))
        for lam in lambdas:
            progress.update(task, description=f"lambda={lam:g}")
            recipe = interpolation(a, b, lam) if base is None else task_arithmetic([a, b], base, lam)
            model_dir = out_dir / "models" / f"lambda_{lam:g}"
            merge(recipe, model_dir, max_shard_bytes=max_shard_bytes, check_tokenizer=check_tokenizer, progress=False)
            try:
                if eval_cmd == "builtin":
                    result = builtin_eval(model_dir, limit=limit, max_new_tokens=max_new_tokens)
                else:
                    result = command_eval(eval_cmd, model_dir, score_key)
            finally:
                if not keep_models:
                    shutil.rmtree(model_dir, ignore_errors=True)
            rows.append({"lambda": lam, **result})
            progress.advance(task)
    if not keep_models:
        shutil.rmtree(out_dir / "models", ignore_errors=True)
    report = {"a": str(a), "b": str(b), "base": None if base is None else str(base), "eval": eval_cmd,
              "formula": "theta = lambda*A + (1-lambda)*B" if base is None else "theta = C + lambda*((A-C) + (B-C))",
              "rows": rows,
              "note": "score: higher is better (builtin: exact match on held-out synthetic problems); "
                      "mean_output_tokens: mean greedy answer length"}
    files = {"json": str(out_dir / "sweep.json"), "markdown": str(out_dir / "sweep.md"), "plot": str(out_dir / "sweep.png")}
    report["files"] = files
    atomic_write_json(files["json"], report)
    _write_markdown(report, Path(files["markdown"]))
    _plot(report, Path(files["plot"]))
    return report


def _dig(data, dotted: str):
    for part in dotted.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def command_eval(template: str, model_dir: Path, score_key: str = "score") -> dict:
    """Run `template` with {model} → the last JSON object it prints; returns score (+ output length if given)."""
    import json
    import shlex
    import subprocess

    if "{model}" not in template:
        raise SlmkitError(f"--eval: {template!r} has no {{model}} placeholder")
    cmd = template.replace("{model}", shlex.quote(str(model_dir)))
    proc = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
        raise SlmkitError(f"--eval: command exited {proc.returncode} for {model_dir} ({tail[0][:200]})")
    data = None
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            data = json.loads(line)
            break
        except json.JSONDecodeError:
            continue
    if data is None:
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise SlmkitError(f"--eval: command printed no JSON for {model_dir} (expected e.g. {{\"score\": 0.5}})") from None
    score = _dig(data, score_key)
    if not isinstance(score, (int, float)):
        raise SlmkitError(f"--eval: output JSON has no numeric field '{score_key}' for {model_dir}")
    length = next((_dig(data, k) for k in ("mean_output_tokens", "mean_output_length") if _dig(data, k) is not None), None)
    return {"score": float(score), "mean_output_tokens": length, "raw": data}


def builtin_eval(model_dir: str | Path, limit: int = 32, max_new_tokens: int = 64) -> dict:
    """Held-out synthetic problems: perplexity of the full solutions, exact match and length of greedy answers."""
    import math

    import torch

    from slmkit.corpus.synthetic import heldout_problems, score_exact_match
    from slmkit.model.hf import load_any
    from slmkit.model.tokenizer import load_tokenizer

    model = load_any(model_dir, verify=False)
    tok = load_tokenizer(model_dir)
    problems = heldout_problems(limit)
    eos = tok.eos_token_id
    nll, count = 0.0, 0
    completions, lengths = [], []
    with torch.no_grad():
        for p in problems:
            ids = tok.encode(p.text(), add_special_tokens=False)[: model.cfg.max_seq_len]
            logits = model(torch.tensor([ids]))[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
            prompt = tok.encode(p.prompt(), add_special_tokens=False)
            out = list(model.generate(prompt, max_new_tokens=max_new_tokens, eos_id=eos))
            if out and out[-1] == eos:
                out = out[:-1]
            lengths.append(len(out))
            completions.append(tok.decode(out, skip_special_tokens=True))
    em = score_exact_match(problems, completions)
    return {"score": float(em["accuracy"]), "perplexity": math.exp(nll / max(count, 1)),
            "mean_output_tokens": sum(lengths) / len(lengths), "n": len(problems)}


def _write_markdown(report: dict, path: Path) -> None:
    from slmkit.paths import atomic_write_text

    has_ppl = any(r.get("perplexity") is not None for r in report["rows"])
    head = "| lambda | score |" + (" perplexity |" if has_ppl else "") + " mean output tokens |"
    lines = [f"# Merge sweep: {report['formula']}", "", f"A = `{report['a']}`, B = `{report['b']}`"
             + (f", C = `{report['base']}`" if report["base"] else "") + f"; eval: `{report['eval']}`", "",
             head, "|---|---|" + ("---|" if has_ppl else "") + "---|"]
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    for r in report["rows"]:
        lines.append(f"| {r['lambda']:g} | {fmt(r.get('score'), '.4f')} |"
                     + (f" {fmt(r.get('perplexity'), '.3f')} |" if has_ppl else "")
                     + f" {fmt(r.get('mean_output_tokens'), '.1f')} |")
    lines += ["", report["note"], ""]
    atomic_write_text(path, "\n".join(lines))


def _plot(report: dict, path: Path) -> None:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from slmkit.paths import atomic_write_bytes

    rows = report["rows"]
    lam = [r["lambda"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    if any(r.get("score") is not None for r in rows):
        ax1.plot(lam, [r.get("score") for r in rows], "o-", label="score")
    ax1.set_xlabel("lambda (weight of A)")
    ax1.set_ylabel("score")
    if any(r.get("perplexity") is not None for r in rows):
        twin = ax1.twinx()
        twin.plot(lam, [r.get("perplexity") for r in rows], "s--", color="tab:red", label="perplexity")
        twin.set_ylabel("held-out perplexity", color="tab:red")
    ax1.set_title("score vs lambda")
    ax2.plot(lam, [r.get("mean_output_tokens") for r in rows], "o-", color="tab:green")
    ax2.set_xlabel("lambda (weight of A)")
    ax2.set_ylabel("mean output tokens")
    ax2.set_title("output length vs lambda")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
