"""Throughput: our lm-eval backends vs stock `lm_eval --model hf` on the same request slices, in one run.

Both score the very same lm-eval Instances (built once by our task manager from local data): ARC-Challenge
25-shot, HellaSwag 10-shot, MMLU 5-shot (a few subjects), GSM8K 8-shot generation (per-document random
exemplars) and BBH CoT 3-shot generation (fixed exemplars: one shared prefix). Prints time per
backend, the stock/ours time ratio, how far the per-request scores are apart, and for ours what the
engine's prefix cache did per slice (context tokens asked for, computed, served from the cache).

    python benchmarks/eval_throughput.py --limit 8 --gen-limit 8 [--stock-batch 16] [--model HF_DIR]
        [--gguf FILE] [--json out.json]

With --gguf, the GGUF's generation is timed on the engine (parallel sequences) and one prompt at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SLICES = [("arc_challenge", 25, None), ("hellaswag", 10, None), ("mmlu_astronomy", 5, None),
          ("mmlu_high_school_biology", 5, None), ("gsm8k", 8, "gen"),
          ("bbh_cot_fewshot_date_understanding", 3, "gen")]  # (task, shots, which limit)


def build_instances(limit: int, gen_limit: int) -> dict[str, list]:
    from slmkit.evaluate.tasks import make_task_manager

    tm = make_task_manager("local")
    out = {}
    for name, shots, which in SLICES:
        task = tm.load([name])["tasks"][name]
        task.set_config(key="num_fewshot", value=shots)
        task.set_fewshot_seed(seed=1234)
        task.build_all_requests(limit=gen_limit if which == "gen" else limit, rank=0, world_size=1)
        out[name] = task.instances
    return out


def run(lm, instances: dict[str, list]) -> dict[str, dict]:
    res = {}
    for name, insts in instances.items():
        t0 = time.perf_counter()
        if insts[0].request_type == "generate_until":
            out = lm.generate_until(insts, disable_tqdm=True)
        else:
            out = lm.loglikelihood(insts, disable_tqdm=True)
        res[name] = {"seconds": time.perf_counter() - t0, "out": out, "n": len(insts)}
        print(f"  {name:<26} {len(insts):>5} requests  {res[name]['seconds']:8.1f} s", flush=True)
    return res


def mc_accuracy(insts, scores) -> list[int]:
    """Per doc: index of the best choice by raw loglik (acc) — to check decisions agree."""
    by_doc: dict[int, list] = {}
    for inst, (lp, _) in zip(insts, scores):
        by_doc.setdefault(inst.doc_id, []).append(lp)
    return [max(range(len(v)), key=v.__getitem__) for _, v in sorted(by_doc.items())]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="HF folder (default: slmkit.hub.pull('smollm2-135m-instruct'))")
    ap.add_argument("--gguf", help="also time this GGUF through slmkit-gguf")
    ap.add_argument("--limit", type=int, default=8, help="documents per multiple-choice slice")
    ap.add_argument("--gen-limit", type=int, default=8, help="GSM8K and BBH documents (generation: batched by 8 in ours)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--stock-batch", type=int, default=16, help="stock lm-eval hf batch size (16 was its best here)")
    ap.add_argument("--ours-batch", type=int, default=32)
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    model = args.model
    if not model:
        from slmkit.hub import pull

        model = str(pull("smollm2-135m-instruct")["hf_dir"])
    instances = build_instances(args.limit, args.gen_limit)
    from lm_eval.models.huggingface import HFLM

    from slmkit.evaluate.lm import LlamaCppLM, TorchLM

    backends = {"stock": HFLM(pretrained=model, device="cpu", dtype="float32", batch_size=args.stock_batch),
                "ours": TorchLM(model, batch_size=args.ours_batch)}
    if args.gguf:
        backends["gguf"] = LlamaCppLM(args.gguf, batch_size=args.ours_batch)  # the engine: parallel sequences
        backends["gguf-serial"] = LlamaCppLM(args.gguf, batch_size=1)  # generation only: one prompt at a time
    timings: dict[str, dict] = {k: {} for k in backends}
    prefix: dict[str, dict] = {}
    for name, insts in instances.items():  # interleaved per slice, so load drift hits both alike
        for key, lm in backends.items():
            if key.endswith("-serial") and insts[0].request_type != "generate_until":
                continue
            print(f"[{key}]", end="", flush=True)
            before = lm.engine().stats() if key == "ours" else None
            timings[key].update(run(lm, {name: insts}))
            if before is not None:
                after = lm.engine().stats()
                prefix[name] = {k: after[k] - before[k] for k in ("prompt_tokens", "prefill_tokens", "cached_tokens")}
                print(f"    prefix cache: {prefix[name]}", flush=True)
    stock, ours = timings["stock"], timings["ours"]
    extra = {k: v for k, v in timings.items() if k not in ("stock", "ours")}

    rows, tot_s, tot_o = [], 0.0, 0.0
    for name, insts in instances.items():
        s, o = stock[name], ours[name]
        tot_s, tot_o = tot_s + s["seconds"], tot_o + o["seconds"]
        row = {"task": name, "requests": len(insts), "stock_s": round(s["seconds"], 2), "ours_s": round(o["seconds"], 2),
               "ratio": round(s["seconds"] / o["seconds"], 2)}
        if insts[0].request_type == "generate_until":
            row["same_text"] = sum(a == b for a, b in zip(s["out"], o["out"]))
        else:
            row["max_abs_dloglik"] = max(abs(a[0] - b[0]) for a, b in zip(s["out"], o["out"]))
            row["same_greedy"] = sum(a[1] == b[1] for a, b in zip(s["out"], o["out"]))
            da, db = mc_accuracy(insts, s["out"]), mc_accuracy(insts, o["out"])
            row["same_choice"] = f"{sum(x == y for x, y in zip(da, db))}/{len(da)}"
        for k, v in extra.items():
            if name in v:
                row[f"{k}_s"] = round(v[name]["seconds"], 2)
        if name in prefix:
            row["ours_context_tokens"], row["ours_computed_tokens"] = prefix[name]["prompt_tokens"], prefix[name]["prefill_tokens"]
            row["ours_cached_tokens"] = prefix[name]["cached_tokens"]
        if "gguf-serial" in extra and name in extra["gguf-serial"]:
            row["gguf_batched_vs_serial"] = round(extra["gguf-serial"][name]["seconds"] / extra["gguf"][name]["seconds"], 2)
            row["gguf_same_text"] = sum(a == b for a, b in zip(extra["gguf"][name]["out"], extra["gguf-serial"][name]["out"]))
        rows.append(row)
    print()
    for r in rows:
        print(json.dumps(r))
    total = {"stock_s": round(tot_s, 1), "ours_s": round(tot_o, 1), "ratio": round(tot_s / tot_o, 2)}
    print(f"TOTAL stock {total['stock_s']} s, ours {total['ours_s']} s -> {total['ratio']}x")
    if args.json:
        from slmkit.paths import atomic_write_json

        atomic_write_json(args.json, {"model": model, "limit": args.limit, "threads": torch.get_num_threads(),
                                      "stock_batch": args.stock_batch, "ours_batch": args.ours_batch,
                                      "load": os.getloadavg()[0], "rows": rows, "total": total})
    return 0


if __name__ == "__main__":
    sys.exit(main())
