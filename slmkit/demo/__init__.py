"""`slmkit demo`: the whole pipeline on the built-in synthetic corpus, on a laptop CPU, in minutes.

Stages run in order and each adds to one report (runs/demo/report.json + report.md):
tokenizer → train (WSD, AdamW→Muon at decay) → HF export checked with stock transformers →
held-out exact match vs trivial baseline → later stages (GGUF/ONNX exports with parity, latency, eval)
that plug in through STAGES. A stage whose optional dependency is missing is reported as skipped,
never faked.
"""

from __future__ import annotations

import importlib
import json
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from rich.console import Console

from slmkit.errors import Unavailable as SkipStage  # a stage that cannot run here: reported skipped, not failed
from slmkit.paths import atomic_write_json, atomic_write_text

console = Console(stderr=True)

VOCAB_SIZE = 1024
HELDOUT_N = 200
# ~4.3M tokens: the nano model needs about this many to do the arithmetic clearly better than the best
# trivial baseline (700 steps learns the format and copying only). SLMKIT_DEMO_STEPS overrides.
DEMO_STEPS = 2100


def stage_tokenizer(ctx: dict) -> dict:
    from slmkit.corpus.synthetic import training_texts
    from slmkit.model.tokenizer import train_bpe

    tok_dir = ctx["run_dir"] / "tokenizer"
    tok = train_bpe(training_texts(5000 if ctx["quick"] else 20000, seed=0), VOCAB_SIZE, tok_dir)
    ctx["tokenizer_dir"] = tok_dir
    return {"tokenizer_dir": str(tok_dir), "vocab_size": len(tok)}


def stage_train(ctx: dict) -> dict:
    from slmkit.train.api import demo_config, train

    import os

    steps = None if ctx["quick"] else int(os.environ.get("SLMKIT_DEMO_STEPS", DEMO_STEPS))
    config = demo_config(tokenizer_dir=ctx["tokenizer_dir"], quick=ctx["quick"], steps=steps)
    result = train(config, ctx["run_dir"] / "train")
    ctx["checkpoint"] = Path(result["checkpoint"])
    return {k: v for k, v in result.items() if not isinstance(v, (list, dict)) or k in ("milestones",)}


def stage_export_hf(ctx: dict) -> dict:
    from slmkit.model.checkpoint import load_checkpoint
    from slmkit.model.hf import export_hf
    from slmkit.export.parity import check_hf_parity

    model, _ = load_checkpoint(ctx["checkpoint"])
    hf_dir = export_hf(model, ctx["run_dir"] / "hf", ctx["checkpoint"])
    ctx["hf_dir"] = hf_dir
    return {"hf_dir": str(hf_dir), **check_hf_parity(model, hf_dir)}


def stage_heldout(ctx: dict) -> dict:
    """Answer held-out problems with *stock* transformers loading the exported folder (greedy), scored by the
    one held-out scorer (slmkit.corpus.heldout) the trainer and the merge sweep use too."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slmkit.corpus.heldout import evaluate

    tok = AutoTokenizer.from_pretrained(str(ctx["hf_dir"]))
    model = AutoModelForCausalLM.from_pretrained(str(ctx["hf_dir"]), dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def generate(prompts: list[list[int]], max_new_tokens: int) -> list[list[int]]:
        outs = []
        for i in range(0, len(prompts), 50):  # left-padded batches of 50
            chunk = prompts[i:i + 50]
            width = max(map(len, chunk))
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                     do_sample=False, pad_token_id=pad, eos_token_id=tok.eos_token_id)
            outs += [row[width:].tolist() for row in out]
        return outs

    result = evaluate(generate, tok, 60 if ctx["quick"] else HELDOUT_N, max_new_tokens=96)
    samples = result.pop("samples")
    atomic_write_text(ctx["run_dir"] / "heldout_samples.jsonl", "".join(json.dumps(s) + "\n" for s in samples))
    return result


def stage_eval(ctx: dict) -> dict:
    """A small --limit slice of the 13-task suite on the exported model, through lm-eval."""
    import os

    from slmkit.evaluate.demo import run_demo_eval

    if not os.environ.get("SLMKIT_DATA"):
        raise SkipStage("no local benchmark data: set SLMKIT_DATA to a folder with benchmarks/ "
                        "(or run `slmkit eval` where the HF Hub is reachable)")

    return run_demo_eval(ctx["hf_dir"], ctx["run_dir"], limit=10 if ctx["quick"] else 25)


# Later stages plug in here: (name, "module:function"); each takes ctx and returns a dict.
PLUGIN_STAGES: list[tuple[str, str]] = [
    ("export_gguf", "slmkit.export.demo:demo_gguf"),
    ("export_onnx", "slmkit.export.demo:demo_onnx"),
    ("latency", "slmkit.bench.demo:demo_latency"),
    ("eval", "slmkit.demo:stage_eval"),
    ("agent", "slmkit.agents.demo:demo_agent"),
]
CORE_STAGES: list[tuple[str, Callable[[dict], dict]]] = [
    ("tokenizer", stage_tokenizer),
    ("train", stage_train),
    ("export_hf", stage_export_hf),
    ("heldout", stage_heldout),
]
REQUIRED = {"tokenizer", "train", "export_hf", "heldout"}


def _resolve(target: str) -> Callable[[dict], dict] | None:
    module_name, func = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            return None
        raise
    return getattr(module, func, None)


def run_demo(run_dir: Path, quick: bool = False, stages: list[str] | None = None) -> dict[str, Any]:
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ctx: dict[str, Any] = {"run_dir": run_dir, "quick": quick}
    report: dict[str, Any] = {"stages": {}, "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
    t_start = time.time()
    plan: list[tuple[str, Callable | None, str | None]] = [(n, f, None) for n, f in CORE_STAGES]
    for name, target in PLUGIN_STAGES:
        if stages is None or name in stages:
            plan.append((name, _resolve(target), target))
    ok = True
    for name, func, target in plan:
        if func is None:
            report["stages"][name] = {"status": "skipped", "reason": f"{target} is not available in this install"}
            continue
        console.rule(f"[bold]demo: {name}")
        t0 = time.time()
        try:
            result = func(ctx)
            report["stages"][name] = {"status": "ok", "seconds": round(time.time() - t0, 1), **(result or {})}
        except SkipStage as exc:
            report["stages"][name] = {"status": "skipped", "reason": str(exc)}
            console.print(f"[yellow]stage {name} skipped: {exc}")
        except Exception as exc:  # noqa: BLE001 - a failed stage is reported, the demo says it failed
            report["stages"][name] = {"status": "failed", "seconds": round(time.time() - t0, 1),
                                      "error": f"{type(exc).__name__}: {exc}"}
            console.print(f"[red]stage {name} failed: {exc}")
            (run_dir / f"{name}.error.txt").write_text(traceback.format_exc())
            ok = False
            if name in REQUIRED:
                break
        atomic_write_json(run_dir / "report.json", report)
    held = report["stages"].get("heldout", {})
    report["summary"] = {
        "ok": ok and held.get("status") == "ok" and held.get("accuracy", 0) > held.get("baseline_accuracy", 1),
        "seconds": round(time.time() - t_start, 1),
        "heldout_accuracy": held.get("accuracy"),
        "baseline_accuracy": held.get("baseline_accuracy"),
        "stages": {k: v["status"] for k, v in report["stages"].items()},
        "run_dir": str(run_dir),
    }
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_text(run_dir / "report.md", render_markdown(report))
    return report


def render_markdown(report: dict) -> str:
    s = report["summary"]
    lines = ["# slmkit demo", "", f"Total time: {s['seconds']} s — {'OK' if s['ok'] else 'FAILED'}", ""]
    if s.get("heldout_accuracy") is not None:
        lines += [f"Held-out exact match: **{s['heldout_accuracy']:.1%}** "
                  f"(trivial baseline {s['baseline_accuracy']:.1%})", ""]
    lines += ["| stage | status | seconds | details |", "|---|---|---|---|"]
    for name, st in report["stages"].items():
        details = {k: v for k, v in st.items()
                   if k not in ("status", "seconds", "table_md") and not isinstance(v, (dict, list))}
        text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in list(details.items())[:6])
        lines.append(f"| {name} | {st['status']} | {st.get('seconds', '')} | {text} |")
    for name, st in report["stages"].items():
        table = st.get("table_md")
        if table:
            lines += ["", f"## {name}", "", table]
    return "\n".join(lines) + "\n"
