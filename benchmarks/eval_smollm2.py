"""The 13-task suite on the real SmolLM2-135M-Instruct: native torch (hf) and its GGUF(s), side by side.

    python benchmarks/eval_smollm2.py --limit 1 --out runs/smollm2 [--gguf-types q4_k_m] [--skip-hf]

Full runs (no --limit) take many hours on CPU. Each run folder holds results.json, samples.jsonl,
report.md/html and scores.png; `compare.md` puts them side by side. Reruns resume from the request cache.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def ensure_gguf(hf_dir: Path, qtype: str) -> Path:
    """A GGUF of `qtype` made from the dequantized HF folder by slmkit's exporter (cached beside it)."""
    from slmkit.export.gguf import export_gguf

    out = hf_dir.parent / f"eval-{qtype}.gguf"
    if not out.exists():
        export_gguf(hf_dir, out, qtype=qtype, parity=False)
    return out


COST = {"piqa": 1, "winogrande": 1, "arc_easy": 2, "arc_challenge": 2, "hellaswag": 2, "humaneval": 3, "mbpp": 3,
        "gsm8k": 3, "minerva_math": 4, "mmlu": 5, "ceval-valid": 5, "cmmlu": 6, "bbh": 7}  # rough CPU cost at --limit 1


def write_combined(folder: Path, records: list[dict], label: str, entries) -> None:
    """results.json + reports for the tasks finished so far, in suite order."""
    from slmkit.evaluate import report
    from slmkit.evaluate.runner import combine
    from slmkit.paths import atomic_write_json

    rank = {e.task: i for i, e in enumerate(entries)}
    recs = sorted(records, key=lambda r: rank.get(r["scores"][0]["task"], 99))
    combined = combine(recs, label, expected=len(entries))
    atomic_write_json(folder / "results.json", combined)
    report.write_all(combined, folder)


def finished(folder: Path, limit) -> dict | None:
    """The record of a task already run with the same --limit (task-level resume), else None."""
    import json

    path = folder / "results.json"
    if not path.exists():
        return None
    rec = json.loads(path.read_text())
    if rec.get("manifest", {}).get("limit") != limit or rec["scores"][0]["value"] is None:
        return None
    rec["out"] = str(folder)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=None, help="documents per (sub)task; omit for the full suite")
    ap.add_argument("--tasks", default=None, help="subset of the suite (comma-separated)")
    ap.add_argument("--out", default="runs/smollm2")
    ap.add_argument("--gguf-types", default="q4_k_m", help="GGUF types to evaluate beside hf ('' for none)")
    ap.add_argument("--skip-hf", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per backend (e.g. 1 to run hf and gguf "
                    "as two processes side by side: --gguf-types '' in one, --skip-hf in the other)")
    ap.add_argument("--batch-size", type=int, default=32, help="sequences the engine decodes together (and scoring "
                    "contexts per forward)")
    args = ap.parse_args(argv)

    from slmkit.evaluate.compare import compare
    from slmkit.evaluate.runner import make_lm, run_eval
    from slmkit.evaluate.suites import load_suite, select
    from slmkit.hub import pull

    hf_dir = Path(pull("smollm2-135m-instruct")["hf_dir"])
    out = Path(args.out)
    models = [] if args.skip_hf else [("hf", "torch", hf_dir, "SmolLM2-135M-Instruct fp32 [torch]")]
    for qtype in [q for q in args.gguf_types.split(",") if q]:
        models.append((f"gguf-{qtype}", "llama.cpp", ensure_gguf(hf_dir, qtype), f"SmolLM2-135M-Instruct {qtype} [llama.cpp]"))
    lms = {key: make_lm(backend, str(path), batch_size=args.batch_size, threads=args.threads)
           for key, backend, path, _ in models}  # loaded once
    suite = load_suite("xmodel13")
    entries = select(suite, args.tasks)
    # task by task (cheapest first), every model in turn: a run cut short still has whole tasks to report
    order = sorted(entries, key=lambda e: COST.get(e.task, 5))
    done: dict[str, list] = {key: [] for key, *_ in models}
    for entry in order:
        for key, backend, path, label in models:
            t0 = time.time()
            rec = finished(out / key / entry.task, args.limit)
            if rec is not None:
                done[key].append(rec)
                print(f"{key} {entry.name}: {rec['scores'][0]['value']} (already run)", flush=True)
                continue
            before = lms[key].engine().stats()
            rec = run_eval(str(path), tasks=[entry.task], backend=backend, limit=args.limit,
                           out=out / key / entry.task, label=label, write_reports=False, lm=lms[key])
            after = lms[key].engine().stats()
            done[key].append(rec)
            delta = {k: after[k] - before[k] for k in ("prompt_tokens", "prefill_tokens", "cached_tokens", "generated_tokens")}
            print(f"{key} {entry.name}: {rec['scores'][0]['value']} ({time.time() - t0:.0f} s, load "
                  f"{os.getloadavg()[0]:.1f}; engine {delta})", flush=True)
            write_combined(out / key, done[key], label, entries)
    runs = [out / key for key in ("hf", *(f"gguf-{q}" for q in args.gguf_types.split(",") if q))
            if (out / key / "results.json").exists()]  # every model run into this folder so far
    print(compare(runs, out=out / "compare.md"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
