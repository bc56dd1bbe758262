"""`slmkit merge sweep`: merge at each λ, evaluate, plot (the three-regime curve of model interpolation).

The built-in evaluator scores held-out synthetic problems with the one scorer (slmkit.corpus.heldout)
plus the perplexity of their full solutions; any other evaluator is a shell command printing JSON.
"""

from __future__ import annotations

from pathlib import Path

from slmkit.errors import SlmkitError


def run_sweep(a: str | Path, b: str | Path, lambdas: list[float], out_dir: Path, eval_cmd: str = "builtin",
              base: str | Path | None = None, score_key: str = "score", keep_models: bool = False, limit: int = 32,
              max_new_tokens: int = 64, max_shard_bytes: int = 500 * 10**6, check_tokenizer: bool = True) -> dict:
    """Without base: θ(λ) = λA + (1−λ)B. With base C: θ(λ) = C + λ[(A−C) + (B−C)] (task-vector scale)."""
    import shutil

    from rich.progress import Progress

    from slmkit.merge.core import interpolation, merge, task_arithmetic
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
    """Held-out synthetic problems: exact match of greedy answers (the one held-out scorer), their length,
    and the perplexity of the full worked solutions."""
    import math

    import torch

    from slmkit.corpus.heldout import evaluate, model_generator, prompt_ids
    from slmkit.corpus.synthetic import heldout_problems
    from slmkit.model.hf import load_any
    from slmkit.model.tokenizer import load_tokenizer

    model = load_any(model_dir, verify=False)
    tok = load_tokenizer(model_dir)
    lengths: list[int] = []
    base = model_generator(model, tok.eos_token_id)

    def generate(prompts, max_new):
        outs = base(prompts, max_new)
        lengths.extend(len(o) - (1 if o and o[-1] == tok.eos_token_id else 0) for o in outs)
        return outs

    result = evaluate(generate, tok, limit, max_new_tokens)
    nll, count = 0.0, 0
    with torch.no_grad():
        for p in heldout_problems(limit):
            ids = prompt_ids(tok, p.text())[: model.cfg.max_seq_len]
            logits = model(torch.tensor([ids]))[0, :-1]
            nll += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
    return {"score": float(result["accuracy"]), "perplexity": math.exp(nll / max(count, 1)),
            "mean_output_tokens": sum(lengths) / max(len(lengths), 1), "n": result["n"]}


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
    from slmkit.plots import pyplot, save_png

    plt = pyplot()


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
    save_png(fig, path)
