"""Fidelity and speed of our torch backend against stock `lm_eval --model hf`, on the FULL ARC-Easy (0-shot,
acc; 2,376 docs) and PIQA (0-shot, acc_norm; 1,838 docs) test sets from $SLMKIT_DATA, in one run.

Stock lm-eval is first timed on a slice at batch sizes 1, 8, 16, 32, 64 and then run in full at the fastest
(its best, not its default); ours runs in full on the engine (many contexts per forward, continuations on
the context's keys/values). Both go through the same lm-eval evaluator, task configs and documents
(slmkit.evaluate.runner.run_eval), so the per-document choices can be compared one by one.

    python benchmarks/eval_fidelity.py --out docs/results/eval-fidelity [--sweep-limit 100] [--limit N]
        [--batch-sizes 1,8,16,32,64] [--ours-batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def suite():
    from slmkit.evaluate.suites import Suite, SuiteTask

    return Suite("fidelity", [SuiteTask("ARC-Easy", "arc_easy", 0, "acc"), SuiteTask("PIQA", "piqa", 0, "acc_norm")])


def run(model: Path, backend: str, batch_size: int, limit, out: Path) -> dict:
    from slmkit.evaluate.runner import run_eval

    load0, t0 = os.getloadavg()[0], time.perf_counter()
    rec = run_eval(str(model), suite=suite(), backend=backend, batch_size=batch_size, limit=limit, out=out,
                   use_cache=False, write_reports=False)
    wall = time.perf_counter() - t0
    print(f"  {backend} batch {batch_size} limit {limit}: {wall:.1f} s  "
          + "  ".join(f"{s['name']} {s['value']}" for s in rec["scores"]), flush=True)
    return {"wall_s": round(wall, 1), "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2),
            "scores": {s["name"]: s["value"] for s in rec["scores"]}, "samples": str(out / "samples.jsonl")}


def choices(samples_path: str) -> dict:
    """(task, doc_id) -> (acc choice, acc_norm choice, log-likelihoods) from lm-eval's logged samples."""
    out = {}
    for line in Path(samples_path).read_text().splitlines():
        s = json.loads(line)
        lls = [float(r[0][0]) if isinstance(r[0], (list, tuple)) else float(r[0]) for r in s["resps"]]
        lens = [len(a[1]) for a in s["arguments"]]
        acc = max(range(len(lls)), key=lls.__getitem__)
        norm = max(range(len(lls)), key=lambda i: lls[i] / lens[i])
        out[(s["task"], s["doc_id"])] = (acc, norm, lls)
    return out


def compare(a: dict, b: dict) -> dict:
    keys = sorted(set(a) & set(b))
    same_acc = sum(a[k][0] == b[k][0] for k in keys)
    same_norm = sum(a[k][1] == b[k][1] for k in keys)
    worst = max((abs(x - y) for k in keys for x, y in zip(a[k][2], b[k][2])), default=0.0)
    return {"docs": len(keys), "same_acc_choice": same_acc, "same_acc_norm_choice": same_norm,
            "max_abs_loglik_diff": worst}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/eval-fidelity")
    ap.add_argument("--sweep-limit", type=int, default=100, help="docs per task for the stock batch-size sweep")
    ap.add_argument("--batch-sizes", default="1,8,16,32,64")
    ap.add_argument("--limit", type=int, default=None, help="docs per task for the full comparison (default: all)")
    ap.add_argument("--ours-batch", type=int, default=64, help="contexts our engine packs (max_batch)")
    ap.add_argument("--stock-batch", type=int, default=None, help="skip the sweep and use this stock batch size")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for both (default: torch's)")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from slmkit.hub import pull
    from slmkit.paths import atomic_write_json, atomic_write_text

    model = Path(pull("smollm2-135m-instruct")["hf_dir"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict = {"model": "SmolLM2-135M-Instruct fp32", "limit": args.limit, "sweep_limit": args.sweep_limit,
                 "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory(prefix="fidelity-") as tmp:
        tmp = Path(tmp)
        if args.stock_batch is None:
            print(f"stock lm-eval hf batch-size sweep on {args.sweep_limit} docs per task", flush=True)
            sweep = {}
            for bs in [int(b) for b in args.batch_sizes.split(",")]:
                sweep[bs] = run(model, "lm-eval-hf", bs, args.sweep_limit, tmp / f"sweep-{bs}")
            res["stock_sweep"] = {str(k): {x: v[x] for x in ("wall_s", "load_start", "load_end")} for k, v in sweep.items()}
            best = min(sweep, key=lambda b: sweep[b]["wall_s"])
        else:
            best = args.stock_batch
        res["stock_best_batch"] = best
        print(f"full run: ours (engine, max_batch {args.ours_batch}) and stock (batch {best})", flush=True)
        ours = run(model, "torch", args.ours_batch, args.limit, tmp / "ours")
        stock = run(model, "lm-eval-hf", best, args.limit, tmp / "stock")
        res["ours"], res["stock"] = ({k: v for k, v in r.items() if k != "samples"} for r in (ours, stock))
        res["agreement"] = compare(choices(ours["samples"]), choices(stock["samples"]))
    res["speedup_vs_stock_best"] = round(stock["wall_s"] / ours["wall_s"], 2)
    atomic_write_json(out / "results.json", res)
    ag = res["agreement"]
    lines = ["# Evaluation fidelity and speed: slmkit torch engine vs stock `lm_eval --model hf`", "",
             f"SmolLM2-135M-Instruct fp32, ARC-Easy (0-shot, acc) + PIQA (0-shot, acc_norm), "
             f"{'all documents' if args.limit is None else f'{args.limit} documents per task'}, local data, one run, "
             f"{res['threads']} torch thread(s) for both, 2 cores shared with other jobs (load below).", ""]
    if "stock_sweep" in res:
        lines += [f"Stock batch-size sweep ({args.sweep_limit} docs per task):", "", "| batch | wall s | load |", "|---|---|---|"]
        lines += [f"| {b} | {v['wall_s']} | {v['load_start']} → {v['load_end']} |" for b, v in res["stock_sweep"].items()]
        lines.append("")
    lines += ["| | ARC-Easy | PIQA | wall s | load |", "|---|---|---|---|---|",
              f"| stock hf, batch {best} | {stock['scores']['ARC-Easy']} | {stock['scores']['PIQA']} | {stock['wall_s']} | "
              f"{stock['load_start']} → {stock['load_end']} |",
              f"| ours (engine, max_batch {args.ours_batch}) | {ours['scores']['ARC-Easy']} | {ours['scores']['PIQA']} | "
              f"{ours['wall_s']} | {ours['load_start']} → {ours['load_end']} |", "",
              f"**{res['speedup_vs_stock_best']}×** stock at its best batch size. Per document: "
              f"{ag['same_acc_choice']}/{ag['docs']} same acc choice, {ag['same_acc_norm_choice']}/{ag['docs']} same "
              f"acc_norm choice, max |Δ loglik| {ag['max_abs_loglik_diff']:.2e}."]
    atomic_write_text(out / "README.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
