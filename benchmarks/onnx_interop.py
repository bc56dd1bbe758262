"""Our ONNX export in the tools its users have — optimum and ONNX Runtime GenAI — and a side-by-side race.

    python benchmarks/onnx_interop.py smollm2 --out docs/results            # SmolLM2-135M-Instruct (real weights)
    python benchmarks/onnx_interop.py xmodel2.5-1.3b --out docs/results     # the 1.3B shape, random weights

1. optimum: optimum-onnx 0.1.0 pins transformers < 4.58, so it lives in a side venv under SLMKIT_CACHE (built once,
   torch==2.13.0 first so pip takes the CPU wheel, then optimum-onnx[onnxruntime]; a stamp file keeps it). There
   `ORTModelForCausalLM.from_pretrained(<our export>)` generates greedily, and optimum's own exporter runs on the
   same HF folder. This file is also the side venv's worker (`python onnx_interop.py --optimum-worker SPEC`):
   that half imports only the standard library at the top, never slmkit.
2. ONNX Runtime GenAI: its model builder (fp32 / int8 / int4) on the same HF folder, run by its generator, and our
   own export run by GenAI through the genai_config.json that `slmkit export onnx` writes.
3. One run: parity against torch fp32 (max relative logit error, top-1, greedy text), prefill/decode tok/s, peak
   RSS and file size for every (artifact, runtime) pair; each timing in a fresh process, the load noted with it.
Results: OUT/onnx-interop-<model>.{json,md}.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SIDE_PACKAGES = (("torch==2.13.0",), ("optimum-onnx[onnxruntime]==0.1.0",))  # installed in this order
SIDE_VENV_NAME = "optimum-onnx-0.1.0"


class SideVenvError(RuntimeError):
    """The optimum side venv could not be built; the message carries pip's own error lines."""


# ================================================================================================
# side venv (main venv half)
# ================================================================================================

def side_venv(root: Path | None = None, say=lambda msg: None) -> Path:
    """The optimum side venv's python, built once under SLMKIT_CACHE/venvs/ (a stamp file marks it complete)."""
    import fcntl

    from slmkit.paths import cache_dir

    root = Path(root) if root is not None else cache_dir() / "venvs" / SIDE_VENV_NAME
    python, stamp = root / "bin" / "python", root / ".slmkit-ready"
    want = json.dumps(SIDE_PACKAGES)
    root.parent.mkdir(parents=True, exist_ok=True)
    with open(root.parent / f".{root.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes must not build the same venv at once
        if stamp.exists() and python.exists() and stamp.read_text() == want:
            return python
        if root.exists():  # a half-built venv (no stamp): start over
            shutil.rmtree(root)
        say(f"building the optimum side venv at {root} (once)")
        _check_run([sys.executable, "-m", "venv", str(root)], "python -m venv")
        for packages in SIDE_PACKAGES:
            _check_run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *packages],
                       f"pip install {' '.join(packages)}")
        stamp.write_text(want)
    return python


def _check_run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stderr or proc.stdout).strip().splitlines()
                 if ln.strip() and "is ignored: it is neither a file nor a directory" not in ln]
        raise SideVenvError(f"optimum side venv: {what} failed (exit {proc.returncode}): " + " | ".join(lines[-6:]))


def run_optimum(spec: dict[str, Any], python: Path | None = None, timeout_s: float = 3600) -> dict[str, Any]:
    """One optimum job in the side venv (a fresh process): returns its JSON result."""
    python = python or side_venv()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    threads = str(spec.get("threads", 2))
    env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    cmd = [str(python), str(Path(__file__).resolve()), "--optimum-worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env, cwd="/")
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"optimum worker timed out after {timeout_s:.0f}s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-3:]
    return {"ok": False, "error": f"optimum worker exited {proc.returncode}: {' | '.join(tail)[:500]}"}


# ================================================================================================
# artifacts (main venv half)
# ================================================================================================

OURS = ("ours-fp32", "ours-int8")
GENAI = ("genai-fp32", "genai-int8", "genai-int4")
# (artifact, runtime): runtime "onnxruntime" is slmkit's OnnxRuntime, "ort-genai" GenAI's generator, "optimum"
# ORTModelForCausalLM in the side venv. GenAI's int4 graph also runs on our runtime: its layout without its loop.
PAIRS = (("ours-fp32", "onnxruntime"), ("ours-fp32", "ort-genai"), ("ours-fp32", "optimum"),
         ("ours-int8", "onnxruntime"), ("ours-int8", "ort-genai"), ("ours-int8", "optimum"),
         ("genai-fp32", "ort-genai"), ("genai-int8", "ort-genai"), ("genai-int4", "ort-genai"),
         ("genai-int4", "onnxruntime"), ("optimum-fp32", "optimum"), ("optimum-fp32", "onnxruntime"))
REFERENCE = ("ours-fp32", "onnxruntime")  # the greedy text every other pair is compared with
CHAT_PROMPT = "What is the capital of France? Answer in one sentence."
TEXT_PROMPT = "The capital of France is"


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def source_folders(model: str, work: Path, say) -> tuple[Path, bool]:
    """(HF Llama folder, random weights?) for `smollm2` or a preset name (random weights, exported to HF once)."""
    if model in ("smollm2", "smollm2-135m-instruct"):
        from slmkit import hub

        return Path(hub.pull("smollm2-135m-instruct")["hf_dir"]), False
    from slmkit.bench.artifacts import ensure_random_model

    hf = work / "hf"
    if not (hf / "model.safetensors").exists():
        from slmkit.model.hf import export_hf, load_any, tokenizer_dir_of

        ckpt = ensure_random_model(model, progress=say)
        say(f"exporting the random {model} checkpoint to an HF folder")
        export_hf(load_any(ckpt, verify=False), hf, tokenizer_dir_of(ckpt))
    return hf, True


def ensure_artifacts(hf: Path, work: Path, names: list[str], random: bool, threads: int, say,
                     exporter: str = "auto") -> dict[str, Any]:
    """Build what is missing (cached under WORK); returns name -> folder or {"error": ...}."""
    from slmkit.errors import SlmkitError
    from slmkit.export.genai import build_genai

    out: dict[str, Any] = {}
    for name in names:
        folder = work / name
        done = folder / ("genai_config.json" if name.startswith("genai") else "model.onnx")
        if done.exists():
            out[name] = folder
            continue
        say(f"building {name} (load {load_now()})")
        t0 = time.perf_counter()
        try:
            if name in OURS:  # real weights: the exporter's parity gate is on; random weights: off
                # `slmkit export onnx` in a child process: a 1.3B export leaves ~6 GB of freed-but-kept heap in
                # the process that ran it, which the later parity sessions would sit on top of
                cmd = [str(Path(sys.executable).with_name("slmkit")), "export", "onnx", str(hf), str(folder),
                       "--exporter", exporter] + (["--int8"] if name.endswith("int8") else []) + (["--no-parity"] if random else [])
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SlmkitError((proc.stderr.strip().splitlines() or [f"{name}: export exit {proc.returncode}"])[-1])
            elif name in GENAI:
                build_genai(hf, folder, name.split("-")[1], threads=threads)
            elif name == "optimum-fp32":
                result = run_optimum({"task": "export", "hf": str(hf), "out": str(folder), "threads": threads})
                if not result.get("ok"):
                    raise SlmkitError(f"{folder}: optimum export failed: {result.get('error')}")
            out[name] = folder
            (work / f"{name}.build.json").write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1),
                                                                 "load": load_now()}))
        except (SlmkitError, SideVenvError) as exc:
            out[name] = {"error": str(exc)}
            say(f"{name}: {exc}")
    return out


def graph_summary(folder: Path) -> dict[str, Any]:
    """File size, node count and the ops that carry the weights/attention (MatMul, MatMulNBits, GQA, ...)."""
    import onnx
    from collections import Counter

    from slmkit.bench.bound import path_bytes

    model_file = next((p for p in (folder / "model.onnx", *sorted(folder.glob("*.onnx"))) if p.exists()), None)
    if model_file is None:
        return {}
    proto = onnx.load(str(model_file), load_external_data=False)
    ops = Counter(n.op_type for n in proto.graph.node)
    keep = {k: v for k, v in ops.items() if k in ("MatMul", "MatMulNBits", "GroupQueryAttention", "MultiHeadAttention",
                                                   "Attention", "SimplifiedLayerNormalization", "SkipSimplifiedLayerNormalization",
                                                   "RotaryEmbedding", "Softmax", "GatherBlockQuantized", "DynamicQuantizeLinear",
                                                   "MatMulInteger", "LayerNormalization", "RMSNormalization")}
    return {"file_mb": round(path_bytes(folder) / 1e6, 1), "nodes": len(proto.graph.node), "ops": keep,
            "inputs": [i.name for i in proto.graph.input][:4]}


# ================================================================================================
# parity + greedy text (in process for onnxruntime / ort-genai; the side venv for optimum)
# ================================================================================================

def reference(hf: Path, say) -> tuple[list[list[int]], list[Any], list[int], Any]:
    """Held-out parity batches, torch fp32 logits on them, the greedy prompt ids, and the tokenizer."""
    import gc

    import numpy as np
    import torch

    from slmkit.export.parity import heldout_token_batches
    from slmkit.model.hf import load_any
    from slmkit.model.tokenizer import load_tokenizer

    tok = load_tokenizer(hf)
    model = load_any(hf, verify=False).float().eval()
    batches = heldout_token_batches(tok, model.cfg.vocab_size, n_batches=4, seq_len=64)
    say("torch fp32 reference logits")
    with torch.no_grad():
        ref = [model(torch.tensor([b]))[0].float().numpy().astype(np.float32) for b in batches]
    del model
    gc.collect()
    if getattr(tok, "chat_template", None) and "instruct" in str(hf).lower():
        prompt = tok.apply_chat_template([{"role": "user", "content": CHAT_PROMPT}], add_generation_prompt=True,
                                         tokenize=True)
        prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
    else:
        prompt = tok.encode(TEXT_PROMPT, add_special_tokens=False)
    return batches, ref, [int(t) for t in prompt], tok


def _metrics(ref: list[Any], got: list[Any], batches: list[list[int]]) -> dict[str, Any]:
    from slmkit.export.parity import compare_logits, summarize

    return summarize([compare_logits(r, g, b) for r, g, b in zip(ref, got, batches)])


def parity_pair(folder: Path, runtime: str, batches, ref, prompt: list[int], new_tokens: int, eos: list[int],
                threads: int) -> dict[str, Any]:
    """Logit metrics vs torch fp32 and the greedy continuation (EOS respected) of one (artifact, runtime)."""
    import numpy as np

    if runtime == "optimum":
        logits_file = folder.parent / f".{folder.name}.optimum-logits.npz"
        res = run_optimum({"task": "run", "folder": str(folder), "greedy": prompt, "greedy_new": new_tokens,
                           "eos": eos, "pad": eos[0] if eos else 0, "logits": batches, "logits_out": str(logits_file),
                           "threads": threads})
        if not res.get("ok"):
            return {"error": res.get("error")}
        with np.load(logits_file) as z:
            got = [z[f"b{i}"] for i in range(len(batches))]
        logits_file.unlink()
        return {**_metrics(ref, got, batches), "greedy_ids": res["greedy_ids"], "versions": res.get("versions")}
    if runtime == "ort-genai":
        from slmkit.serve.ortgenai_backend import OrtGenaiRuntime

        runner = OrtGenaiRuntime(folder, threads=threads)
        try:
            got = [runner.logits(b) for b in batches]
            ids = list(runner.stream(prompt, new_tokens, ignore_eos=False))
        finally:
            runner.close()
        return {**_metrics(ref, got, batches), "greedy_ids": ids}
    from slmkit.serve.base import SamplingParams
    from slmkit.serve.onnx_backend import OnnxRuntime

    rt = OnnxRuntime(folder, threads=threads)
    try:
        got = [rt.logits(b) for b in batches]
        stop = set(eos)
        ids = []
        for t in rt.generate_ids(prompt, SamplingParams(max_new_tokens=new_tokens, temperature=0.0)):
            ids.append(int(t))
            if t in stop:
                break
    finally:
        rt.close()
    return {**_metrics(ref, got, batches), "greedy_ids": ids}


# ================================================================================================
# timing: one fresh process per (artifact, runtime)
# ================================================================================================

def time_pair(folder: Path, runtime: str, prompt_tokens: int, new_tokens: int, repeats: int, threads: int,
              tokenizer) -> dict[str, Any]:
    load = load_now()
    if runtime == "optimum":
        from slmkit.bench.worker import bench_prompts

        prompts = bench_prompts(len(tokenizer), prompt_tokens, repeats, 0, tokenizer)
        res = run_optimum({"task": "run", "folder": str(folder), "timing": prompts[1:], "timing_new": new_tokens,
                           "threads": threads, "pad": 0})
    else:
        from slmkit.bench.latency import Job, run_worker

        res = run_worker(Job("interop", runtime, folder), prompt_tokens, new_tokens, repeats, threads, 0, 3600)
    if not res.get("ok"):
        return {"error": res.get("error"), "load_before": load}
    med = res["median"]
    return {"prefill_tok_s": round(med["prefill_tok_s"], 1), "decode_tok_s": round(med["decode_tok_s"], 2),
            "ttft_ms": round(med["ttft_s"] * 1000, 1), "peak_rss_mb": res["peak_rss_mb"], "load_s": res.get("load_s"),
            "decode_cpu_ms_per_tok": round(med["decode_cpu_ms_per_tok"], 1) if med.get("decode_cpu_ms_per_tok") else None,
            "runs": [round(r["decode_tok_s"], 2) for r in res["runs"]], "load_before": load, "load_after": load_now()}


# ================================================================================================
# the race
# ================================================================================================

def race(model: str, out_dir: Path, work: Path | None = None, threads: int = 2, prompt_tokens: int = 128,
         new_tokens: int = 32, repeats: int = 3, rounds: int = 2, greedy_tokens: int = 48,
         pairs: tuple = PAIRS, say=print, tag: str = "", exporter: str = "auto") -> dict[str, Any]:
    from slmkit.paths import atomic_write_json, atomic_write_text, cache_dir

    started = time.time()
    work = work or cache_dir() / "interop" / model
    work.mkdir(parents=True, exist_ok=True)
    hf, random = source_folders(model, work, say)
    names = list(dict.fromkeys(a for a, _ in pairs))
    folders = ensure_artifacts(hf, work, names, random, threads, say, exporter)
    batches, ref, prompt, tok = reference(hf, say)
    from slmkit.serve.base import Runtime

    probe = Runtime()
    probe.tokenizer = tok
    eos = sorted(probe.eos_ids)
    rows = []
    for artifact, runtime in pairs:
        row: dict[str, Any] = {"artifact": artifact, "runtime": runtime}
        folder = folders.get(artifact)
        if not isinstance(folder, Path):
            row["error"] = (folder or {}).get("error", "not built")
            rows.append(row)
            continue
        row.update(graph_summary(folder))
        say(f"parity {artifact} on {runtime} (load {load_now()})")
        try:
            row["parity"] = parity_pair(folder, runtime, batches, ref, prompt, greedy_tokens, eos, threads)
        except Exception as exc:  # noqa: BLE001 - a pair that cannot run is a result, not a crash
            row["parity"] = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"}
        if "greedy_ids" in row["parity"]:
            row["parity"]["greedy_text"] = tok.decode(row["parity"]["greedy_ids"], skip_special_tokens=True)
        rows.append(row)
    ref_row = next((r for r in rows if (r["artifact"], r["runtime"]) == REFERENCE), None)
    ref_ids = (ref_row or {}).get("parity", {}).get("greedy_ids")
    for r in rows:
        ids = r.get("parity", {}).get("greedy_ids")
        if ids is not None and ref_ids is not None:
            r["parity"]["greedy_equal_reference"] = ids == ref_ids
    timed = [r for r in rows if "greedy_ids" in r.get("parity", {}) or "error" not in r.get("parity", {"error": 1})]
    for k in range(rounds):  # alternate the order each round: load drift on a shared machine hits every pair alike
        for r in (timed if k % 2 == 0 else timed[::-1]):
            say(f"timing {r['artifact']} on {r['runtime']} round {k + 1} (load {load_now()})")
            r.setdefault("timing_rounds", []).append(time_pair(folders[r["artifact"]], r["runtime"], prompt_tokens,
                                                               new_tokens, repeats, threads, tok))
    for r in timed:
        ok = [t for t in r.get("timing_rounds", []) if "decode_tok_s" in t]
        if ok:
            r["timing"] = max(ok, key=lambda t: t["decode_tok_s"])  # best round: least disturbed by other load
        elif r.get("timing_rounds"):
            r["timing"] = {"error": r["timing_rounds"][-1].get("error")}
    report = {"model": model, "hf": str(hf), "random_weights": random, "rows": rows,
              "settings": {"threads": threads, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                           "repeats": repeats, "rounds": rounds, "greedy_tokens": greedy_tokens,
                           "parity": "4 held-out batches of 64 tokens vs torch fp32 (transformers-free native model)",
                           "timing": "median over repeats in a fresh process per (artifact, runtime); best of the rounds",
                           "greedy_prompt": CHAT_PROMPT if tok.decode(prompt).count("<|im_start|>") else TEXT_PROMPT,
                           "eos": eos},
              "builds": {n: json.loads((work / f"{n}.build.json").read_text()) for n in names
                         if (work / f"{n}.build.json").exists()},
              "versions": _versions(), "machine": {"cores": os.cpu_count(), "cpu": _cpu()},
              "seconds": round(time.time() - started, 1)}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"onnx-interop-{model}{'-' + tag if tag else ''}"
    atomic_write_json(out_dir / f"{stem}.json", report)
    atomic_write_text(out_dir / f"{stem}.md", markdown(report))
    plot(report, out_dir / f"{stem}.png")
    return report


def plot(report: dict[str, Any], path: Path) -> Path:
    """Decode speed (tok/s, best round) against parity (top-1 agreement with torch fp32), one point per pair."""
    from slmkit.plots import pyplot, save_png

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    colours = {"onnxruntime": "tab:blue", "ort-genai": "tab:orange", "optimum": "tab:green"}
    for r in report["rows"]:
        t, p = r.get("timing") or {}, r.get("parity") or {}
        if t.get("decode_tok_s") and p.get("top1_agreement") is not None:
            ax.scatter(p["top1_agreement"], t["decode_tok_s"], color=colours.get(r["runtime"], "grey"), s=40)
            ax.annotate(f"{r['artifact']}", (p["top1_agreement"], t["decode_tok_s"]), fontsize=7,
                        xytext=(4, 3), textcoords="offset points")
    for runtime, colour in colours.items():
        ax.scatter([], [], color=colour, label=f"runtime: {runtime}")
    ax.set_xlabel("top-1 agreement with torch fp32 (held-out text)")
    ax.set_ylabel("decode tok/s (best round)")
    ax.set_title(f"ONNX race, {report['model']}, {report['settings']['threads']} thread(s), shared 2-core CPU", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def _versions() -> dict[str, Any]:
    from importlib.metadata import version

    out = {}
    for name in ("onnxruntime", "onnxruntime-genai", "onnx", "torch", "transformers"):
        with contextlib.suppress(Exception):
            out[name] = version(name)
    return out


def _cpu() -> str:
    with contextlib.suppress(OSError, StopIteration):
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return ""


def _f(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"# ONNX interop race: {report['model']}" + (" (random weights)" if report["random_weights"] else ""), "",
             f"{report['machine']['cpu']}, {s['threads']} threads. Parity: {s['parity']}. Timing: prompt "
             f"{s['prompt_tokens']} random tokens, {s['new_tokens']} new (EOS ignored), {s['timing']} of "
             f"{s['rounds']}. Greedy text: {s['greedy_tokens']} new tokens, EOS respected, prompt {s['greedy_prompt']!r}.",
             f"Versions: {', '.join(f'{k} {v}' for k, v in report['versions'].items())}.", "",
             "| artifact | runtime | file MB | nodes | weight ops | max rel err | top-1 | ppl ratio | greedy = ours fp32 | "
             "prefill tok/s | decode tok/s | decode CPU ms/tok | peak RSS MB | load (1m) |",
             "|---|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---|"]
    for r in report["rows"]:
        p, t = r.get("parity", {}), r.get("timing", {})
        if "error" in r or "error" in p:
            lines.append(f"| {r['artifact']} | {r['runtime']} | {_f(r.get('file_mb'), '.1f')} | | | failed: "
                         f"{str(r.get('error') or p.get('error'))[:160].replace('|', '/')} | | | | | | | | |")
            continue
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(r.get("ops", {}).items()) if k in
                        ("MatMul", "MatMulNBits", "GroupQueryAttention", "MatMulInteger"))
        eq = p.get("greedy_equal_reference")
        load = t.get("load_before")
        lines.append(
            f"| {r['artifact']} | {r['runtime']} | {_f(r.get('file_mb'), '.1f')} | {r.get('nodes', '–')} | {ops} "
            f"| {_f(p.get('max_rel_err'), '.2e')} | {_f(p.get('top1_agreement'), '.3f')} | {_f(p.get('ppl_ratio'), '.4f')} "
            f"| {'yes' if eq else 'no' if eq is not None else '–'} | {_f(t.get('prefill_tok_s'), '.1f')} "
            f"| {_f(t.get('decode_tok_s'), '.2f')} | {_f(t.get('decode_cpu_ms_per_tok'), '.1f')} "
            f"| {_f(t.get('peak_rss_mb'), '.0f')} | {load[0] if load else '–'} |")
    lines += ["", "Greedy texts:", ""]
    for r in report["rows"]:
        text = r.get("parity", {}).get("greedy_text")
        if text is not None:
            lines.append(f"- {r['artifact']} on {r['runtime']}: {text!r}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="smollm2 or a preset name (random weights), e.g. xmodel2.5-1.3b")
    p.add_argument("--out", default="docs/results")
    p.add_argument("--work", default=None, help="artifact cache (default SLMKIT_CACHE/interop/MODEL)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--pairs", default="all", help="comma list of ARTIFACT@RUNTIME (default: all)")
    p.add_argument("--tag", default="", help="suffix of the output files (onnx-interop-MODEL-TAG.*)")
    p.add_argument("--exporter", default="auto", help="our exporter: auto (dynamo), dynamo or torchscript (faster to build)")
    args = p.parse_args(argv)
    pairs = PAIRS if args.pairs == "all" else tuple(tuple(x.split("@")) for x in args.pairs.split(","))
    report = race(args.model, Path(args.out), Path(args.work) if args.work else None, args.threads,
                  args.prompt_tokens, args.new_tokens, args.repeats, args.rounds, pairs=pairs,
                  say=lambda m: print(time.strftime("%H:%M:%S"), m, flush=True), tag=args.tag, exporter=args.exporter)
    print(markdown(report))
    return 0


# ================================================================================================
# side venv (worker half: stdlib at the top; optimum, transformers, numpy imported inside)
# ================================================================================================

def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class _Clock:
    """A transformers streamer that timestamps each new token (the first put() is the prompt)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []
        self.cpu: list[float] = []
        self.calls = 0

    def put(self, value) -> None:
        self.calls += 1
        if self.calls > 1:
            self.stamps.append(time.perf_counter())
            self.cpu.append(time.process_time())

    def end(self) -> None:
        pass


def _optimum_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """spec: {"task": "export", "hf", "out"} | {"task": "run", "folder", "greedy": [ids], "greedy_new",
    "logits": [[ids], ...], "logits_out", "timing": [[ids], ...], "timing_new", "threads"}."""
    import numpy as np
    import torch

    torch.set_num_threads(int(spec.get("threads", 2)))
    if spec["task"] == "export":
        from optimum.exporters.onnx import main_export

        t0 = time.perf_counter()
        main_export(spec["hf"], output=spec["out"], task="text-generation-with-past", device="cpu",
                    do_validation=False)
        return {"seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": _peak_rss_mb()}
    import onnxruntime as ort
    import optimum.onnxruntime as oo
    import transformers
    from optimum.onnxruntime import ORTModelForCausalLM

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(spec.get("threads", 2))
    opts.inter_op_num_threads = 1
    t0 = time.perf_counter()
    model = ORTModelForCausalLM.from_pretrained(spec["folder"], provider="CPUExecutionProvider", session_options=opts)
    load_s = time.perf_counter() - t0
    out: dict[str, Any] = {"load_s": round(load_s, 3), "versions": {
        "optimum-onnx": _dist_version("optimum-onnx"), "optimum": _dist_version("optimum"),
        "transformers": transformers.__version__, "onnxruntime": ort.__version__, "torch": torch.__version__},
        "model_class": type(model).__name__, "module": oo.__name__}
    if spec.get("greedy"):
        ids = torch.tensor([spec["greedy"]])
        with torch.no_grad():
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(spec["greedy_new"]),
                                 do_sample=False, num_beams=1, eos_token_id=spec.get("eos"), pad_token_id=spec.get("pad"))
        out["greedy_ids"] = [int(t) for t in gen[0, ids.shape[1]:]]
    if spec.get("logits"):
        arrays = {}
        for i, ids in enumerate(spec["logits"]):
            x = torch.tensor([ids])
            with torch.no_grad():
                arrays[f"b{i}"] = model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0].float().numpy()
        np.savez(spec["logits_out"], **arrays)
    if spec.get("timing"):
        runs = []
        for k, ids in enumerate([spec["timing"][0][:16]] + spec["timing"]):  # the first is a warm-up
            x = torch.tensor([ids])
            n_new = 2 if k == 0 else int(spec["timing_new"])
            clock = _Clock()
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new, min_new_tokens=n_new,
                               do_sample=False, num_beams=1, streamer=clock, pad_token_id=spec.get("pad"))
            if k == 0:
                continue
            first, last = clock.stamps[0], clock.stamps[-1]
            runs.append({"ttft_s": first - start, "prefill_tok_s": len(ids) / (first - start),
                         "decode_tok_s": (len(clock.stamps) - 1) / (last - first), "new_tokens": len(clock.stamps),
                         "decode_cpu_ms_per_tok": 1000 * (clock.cpu[-1] - clock.cpu[0]) / (len(clock.cpu) - 1)})
        out["runs"] = runs
        keys = ("ttft_s", "prefill_tok_s", "decode_tok_s", "decode_cpu_ms_per_tok")
        out["median"] = {k: sorted(r[k] for r in runs)[len(runs) // 2] for k in keys}
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _worker_main(spec_json: str) -> int:
    spec = json.loads(spec_json)
    try:
        result = {"ok": True, **_optimum_worker(spec)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        result = {"ok": False, "error": f"{type(exc).__name__}: {first[:400]}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


if __name__ == "__main__" and len(sys.argv) > 2 and sys.argv[1] == "--optimum-worker":
    sys.exit(_worker_main(sys.argv[2]))
elif __name__ == "__main__":
    sys.exit(main())
