"""`slmkit bench latency`: time to first token, prefill/decode speed, peak RSS and size per backend and type.

Every (artifact, backend) runs in a fresh subprocess (slmkit.bench.worker) so peak RSS is that
run's own and no backend inherits another's warm caches. Each result is put beside the decode
bound of this machine (slmkit.bench.bound): copy bandwidth / bytes read per decoded token.
A model folder is exported on demand to the requested GGUF types and ONNX variants (cached);
`.gguf` files and ONNX folders are benchmarked as they are. For llama.cpp we also time raw
llama-cpp-python on the same file and settings, to show what our runtime wrapper costs.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from slmkit.errors import SlmkitError
from slmkit.serve.backends import canonical

DEFAULT_GGUF_TYPES = ("f16", "q8_0", "q4_k_m")
DEFAULT_ONNX_TYPES = ("int8",)
DEFAULT_GENAI_TYPES = ("int4",)
# (vllm needs a GPU; raw-llama.cpp is added per GGUF; ort-genai is ONNX Runtime GenAI's own generator loop)
BENCH_BACKENDS = ("torch", "llama.cpp", "onnxruntime", "ort-genai")


@dataclass
class Job:
    model: str  # what the user named (or the preset)
    backend: str  # torch | llama.cpp | onnxruntime | raw-llama.cpp | ort-genai
    artifact: Path
    qtype: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    label: str = ""
    error: str | None = None


def parse_backends(text: str | Sequence[str]) -> list[str]:
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    out = []
    for item in items:
        name = canonical(item, {b: None for b in BENCH_BACKENDS}, what="--backends entry")
        if name not in out:
            out.append(name)
    if not out:
        raise SlmkitError("--backends: empty list")
    return out


def _kind(path: Path) -> str:
    if path.suffix == ".gguf":
        return "gguf"
    if path.is_dir() and (path / "model.onnx").exists():
        return "onnx"
    if path.is_dir() and ((path / "slmkit.json").exists() or (path / "config.json").exists()):
        return "model"
    if not path.exists():
        raise SlmkitError(f"{path}: not found")
    raise SlmkitError(f"{path}: not a .gguf file, ONNX export folder, slmkit checkpoint or HF model folder")


def plan_jobs(models: Sequence[str | Path], backends: Sequence[str], gguf_types: Sequence[str],
              onnx_types: Sequence[str], threads: int, parity: bool, raw_llama: str | Sequence[str],
              llama_options: dict | None, say: Callable[[str], None], random_parity: bool = True,
              genai_types: Sequence[str] = DEFAULT_GENAI_TYPES) -> list[Job]:
    """Model paths × backends → concrete artifacts (exporting what is missing)."""
    from slmkit.bench import artifacts as art, exports as bench_export

    try:
        return _plan(models, backends, gguf_types, onnx_types, threads, parity, raw_llama, llama_options, say,
                     random_parity, art, genai_types)
    finally:
        bench_export.release()  # no exporter memory may linger while we time


def _plan(models, backends, gguf_types, onnx_types, threads, parity, raw_llama, llama_options, say, random_parity,
          art, genai_types=DEFAULT_GENAI_TYPES) -> list[Job]:
    jobs: list[Job] = []
    for model in models:
        path = Path(model)
        kind = _kind(path)
        targets: list[tuple[str, Path, str]] = []
        if kind == "gguf":
            targets.append(("llama.cpp", path, ""))
        elif kind == "onnx":  # an ONNX folder runs as it is; on GenAI too when it has a genai_config.json
            runs_on = [b for b in backends if b == "onnxruntime" or b == "ort-genai" and (path / "genai_config.json").exists()]
            targets += [(b, path, "") for b in runs_on or ["onnxruntime"]]
        else:
            random = art.is_random(path)
            wanted = [(b, q) for b in backends for q in
                      {"torch": ["f32"], "llama.cpp": list(gguf_types), "onnxruntime": list(onnx_types),
                       "ort-genai": list(genai_types)}[b]]
            for backend, q in wanted:  # one failing export (e.g. a parity gate) skips only that type
                try:
                    targets.append((backend, _artifact(art, path, backend, q, threads, parity and not random,
                                                       random and random_parity, say), q))
                except SlmkitError as exc:
                    guess = art.artifact_dir(path) / (f"model-{q.partition(':')[0]}.gguf" if backend == "llama.cpp"
                                                      else f"genai-{q}" if backend == "ort-genai" else f"onnx-{q}")
                    jobs.append(Job(str(model), backend, guess if backend != "torch" else path, q,
                                    label=f"{backend} export", error=str(exc)))
        for backend, artifact, qtype in targets:
            opts = dict(llama_options or {}) if backend == "llama.cpp" else {}
            if qtype.endswith(":norepack"):  # same file, llama.cpp's repacked/AMX weight buffers off
                opts["extra_bufts"] = False
            elif qtype.endswith(":repack"):  # same file, repackable weights in CPU_REPACK, AMX off
                opts.update(extra_bufts=False, repack_only=True)
            jobs.append(Job(str(model), backend, artifact, qtype, opts))
            if backend == "llama.cpp" and _wants_raw(raw_llama, qtype or artifact.stem):
                jobs.append(Job(str(model), "raw-llama.cpp", artifact, qtype, opts))
    return jobs


def _artifact(art, path: Path, backend: str, q: str, threads: int, gate: bool, measure: bool, say) -> Path:
    if backend == "torch":
        return path
    if backend == "llama.cpp":
        base_q, _, variant = q.partition(":")
        if variant not in ("", "norepack", "repack"):
            raise SlmkitError(f"--gguf-types: '{q}': variants are ':norepack' and ':repack'")
        return art.ensure_gguf(path, base_q, threads, gate, say, measure_parity=measure)
    if backend == "ort-genai":
        return ensure_genai(art, path, q, say, measure_parity=gate or measure, threads=threads)
    return art.ensure_onnx(path, q, gate, say, measure_parity=measure, threads=threads)


def ensure_genai(art, path: Path, q: str, say, measure_parity: bool = True, threads: int = 2) -> Path:
    """`<cache>/<key>/genai-<q>`: ONNX Runtime GenAI's model builder on the model's HF folder (an slmkit checkpoint
    is exported to HF first, cached), with its parity measured against torch fp32 (ungated: it is not our export)."""
    from slmkit.export.genai import BUILDER_PRECISIONS, build_genai

    if q not in BUILDER_PRECISIONS:
        raise SlmkitError(f"--genai-types: '{q}' unknown (known: {', '.join(BUILDER_PRECISIONS)})")
    out = art.artifact_dir(path) / f"genai-{q}"
    if not (out / "genai_config.json").exists():
        hf = path
        if not (path / "config.json").exists():  # slmkit checkpoint → plain HF folder for the builder
            from slmkit.bench.exports import release, source_model, tokenizer_dir
            from slmkit.model.hf import export_hf

            hf = art.artifact_dir(path) / "hf"
            if not (hf / "model.safetensors").exists():
                say(f"exporting {path.name} → HF folder (for GenAI's builder)")
                export_hf(source_model(path), hf, tokenizer_dir(path))
            release()
        say(f"building {path.name} → GenAI {q} (onnxruntime_genai model builder)")
        build_genai(hf, out, q, threads=threads)
    if measure_parity and art.find_parity(out) is None:
        say(f"measuring parity of GenAI {q} (ungated)")
        genai_parity(path, out, q, threads)
    return out


def genai_parity(source: Path, artifact: Path, qtype: str, threads: int = 2) -> dict:
    """The exporters' parity metrics for a GenAI-built folder run by GenAI, every bound dropped (a measurement)."""
    from slmkit.bench.exports import source_model, tokenizer_dir
    from slmkit.export.parity import BOUND_KEYS, heldout_token_batches, run_parity
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.serve.ortgenai_backend import OrtGenaiRuntime

    model = source_model(source)
    batches = heldout_token_batches(load_tokenizer(tokenizer_dir(source)), model.cfg.vocab_size, n_batches=4,
                                    seq_len=min(64, model.cfg.max_seq_len))
    runner = OrtGenaiRuntime(artifact, threads=threads)
    try:
        return run_parity(model, runner, batches, quantized=qtype != "fp32", bounds={k: None for k in BOUND_KEYS},
                          report_path=artifact / "parity.json", qtype=qtype,
                          extra={"artifact": str(artifact), "gated": False,
                                 "note": "GenAI's builder output measured by slmkit bench; not an slmkit export gate"})
    finally:
        runner.close()


def _wants_raw(raw: str | Sequence[str], qtype: str) -> bool:
    if isinstance(raw, str):
        raw = [raw]
    raw = [r.lower() for r in raw]
    return "all" in raw or qtype.lower() in raw or any(qtype.lower().endswith(r) for r in raw if r not in ("none", ""))


def run_worker(job: Job, prompt_tokens: int, new_tokens: int, repeats: int, threads: int, seed: int,
               timeout_s: float) -> dict[str, Any]:
    spec = {"path": str(job.artifact), "backend": job.backend, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
            "repeats": repeats, "threads": threads, "seed": seed, "options": dict(job.options)}
    if job.backend in ("llama.cpp", "raw-llama.cpp"):
        spec["options"].setdefault("n_ctx", prompt_tokens + new_tokens + 16)
        spec["options"].setdefault("n_threads_batch", threads)  # llama-cpp-python defaults prefill to all cores
        if job.backend == "raw-llama.cpp":
            spec["raw_options"] = {k: v for k, v in spec.pop("options").items() if k != "extra_bufts"}
            spec["extra_bufts"] = job.options.get("extra_bufts")
    elif job.backend == "torch":
        spec["options"].pop("repack_only", None)
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = [sys.executable, "-m", "slmkit.bench.worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f}s"}
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    tail = (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {"ok": False, "error": f"worker exited {proc.returncode}: {tail[:300]}"}


def _row(job: Job, result: dict, info, bandwidth: float, prompt_tokens: int, new_tokens: int) -> dict[str, Any]:
    from slmkit.bench.artifacts import find_parity
    from slmkit.bench.bound import decode_bound

    row: dict[str, Any] = {"model": job.model, "backend": job.backend, "qtype": job.qtype or (info.qtype if info else ""),
                           "artifact": str(job.artifact), "ok": bool(result.get("ok"))}
    if info is not None:
        row["file_mb"] = round(info.file_bytes / 1e6, 1)
        row.update(decode_bound(info, bandwidth, prompt_tokens, new_tokens))
    if not result.get("ok"):
        row["error"] = result.get("error")
        return row
    med = result["median"]
    row.update({
        "load_s": result["load_s"],
        "ttft_ms": round(med["ttft_s"] * 1000, 3) if med.get("ttft_s") else None,
        "prefill_tok_s": round(med["prefill_tok_s"], 2) if med.get("prefill_tok_s") else None,
        "decode_tok_s": round(med["decode_tok_s"], 2) if med.get("decode_tok_s") else None,
        "decode_cpu_ms_per_tok": round(med["decode_cpu_ms_per_tok"], 2) if med.get("decode_cpu_ms_per_tok") else None,
        "best_decode_tok_s": round(max(r["decode_tok_s"] for r in result["runs"] if r["decode_tok_s"]), 2)
        if any(r["decode_tok_s"] for r in result["runs"]) else None,
        "peak_rss_mb": result["peak_rss_mb"],
        "runtime": result.get("runtime_attrs", {}),
        "new_tokens_done": [r["new_tokens"] for r in result["runs"]],
        "repeats": [{k: round(v, 6) if isinstance(v, float) else v for k, v in r.items()} for r in result["runs"]],
    })
    if row.get("decode_tok_s") and row.get("bound_tok_s"):
        row["ratio_to_bound"] = round(row["decode_tok_s"] / row["bound_tok_s"], 4)
    if job.backend != "raw-llama.cpp":
        parity = find_parity(job.artifact)
        if parity is not None:
            row["parity"] = parity
    return row


def bench_latency(models: Sequence[str | Path], backends: Sequence[str] | str = ("torch",), prompt_tokens: int = 512,
                  new_tokens: int = 128, repeats: int = 3, threads: int = 2, out_dir: str | Path | None = None,
                  gguf_types: Sequence[str] = DEFAULT_GGUF_TYPES, onnx_types: Sequence[str] = DEFAULT_ONNX_TYPES,
                  preset: str | None = None, parity: bool = True, raw_llama: str | Sequence[str] = "all",
                  llama_options: dict | None = None, seed: int = 0, timeout_s: float = 3600,
                  progress: bool = True, title: str | None = None, bandwidth_mb: int = 512,
                  random_parity: bool = True, genai_types: Sequence[str] = DEFAULT_GENAI_TYPES) -> dict[str, Any]:
    """Run the latency bench; returns the report dict (also written as JSON/Markdown/PNG when out_dir is given).

    models: slmkit checkpoints / HF folders (exported per backend), .gguf files, ONNX folders.
    preset: also build (once, cached) a random-weight model of this preset's shape and bench it.
    """
    from slmkit.bench import artifacts as art
    from slmkit.bench.bound import copy_bandwidth_gbps, inspect_artifact

    if isinstance(backends, str):
        backends = parse_backends(backends)
    for name, value in (("--prompt-tokens", prompt_tokens), ("--new-tokens", new_tokens), ("--repeats", repeats),
                        ("--threads", threads)):
        if not isinstance(value, int) or value < 1:
            raise SlmkitError(f"{name}: {value!r} must be a positive integer")
    if new_tokens < 2:
        raise SlmkitError(f"--new-tokens: {new_tokens} must be at least 2 (decode speed needs two tokens)")
    models = [str(m) for m in models]
    console = _console(progress)
    say = (lambda msg: console.log(msg)) if console else (lambda msg: None)
    if preset:
        models.insert(0, str(art.ensure_random_model(preset, progress=say)))
    if not models:
        raise SlmkitError("bench latency: give at least one MODEL or --preset NAME")
    started = time.time()
    jobs = plan_jobs(models, backends, [q.lower() for q in gguf_types], list(onnx_types), threads, parity, raw_llama,
                     llama_options, say, random_parity, [q.lower() for q in genai_types])
    say("measuring memory bandwidth")
    bw = copy_bandwidth_gbps(bandwidth_mb)
    rows = []
    with _bar(progress, len(jobs)) as advance:
        for job in jobs:
            info = None
            if job.error is None:
                try:
                    info = _inspect(job, inspect_artifact)
                except SlmkitError as exc:
                    job.error = str(exc)
            if job.error is not None:
                rows.append({"model": job.model, "backend": job.backend, "qtype": job.qtype, "artifact": str(job.artifact),
                             "ok": False, "error": job.error, "parity": art.find_parity(job.artifact)})
                advance(f"{job.backend} {job.qtype}: failed")
                continue
            advance(f"{job.backend} {job.qtype or job.artifact.name}", start=True)
            load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            result = run_worker(job, prompt_tokens, new_tokens, repeats, threads, seed, timeout_s)
            rows.append(_row(job, result, info, bw["copy_gbps"], prompt_tokens, new_tokens))
            rows[-1]["loadavg_1m"] = load_before  # other work on a shared machine slows every number
            if result.get("ok"):
                say(f"{job.backend:>13} {rows[-1]['qtype']:>7}: decode {rows[-1].get('decode_tok_s')} tok/s, "
                    f"prefill {rows[-1].get('prefill_tok_s')} tok/s, TTFT {rows[-1].get('ttft_ms')} ms, "
                    f"RSS {rows[-1].get('peak_rss_mb')} MB")
            else:
                say(f"{job.backend} {job.qtype}: {result.get('error')}")
            advance(None)
    bw_end = copy_bandwidth_gbps(bandwidth_mb)  # the machine is shared: keep the better of two readings
    bw = {**max(bw, bw_end, key=lambda b: b["copy_gbps"]), "readings_copy_gbps": [bw["copy_gbps"], bw_end["copy_gbps"]]}
    for row in rows:  # rows were bounded with the first reading; redo with the kept one
        if row.get("bytes_per_token"):
            row["bound_tok_s"] = round(bw["copy_gbps"] * 1e9 / row["bytes_per_token"], 2)
            if row.get("decode_tok_s"):
                row["ratio_to_bound"] = round(row["decode_tok_s"] / row["bound_tok_s"], 4)
    report = {
        "title": title or "Latency benchmark",
        "settings": {"prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats, "threads": threads,
                     "seed": seed, "statistic": "median over repeats", "eos": "ignored (exactly new_tokens decoded)",
                     "gguf_types": list(gguf_types), "onnx_types": list(onnx_types), "llama_options": llama_options or {},
                     **({"genai_types": list(genai_types)} if "ort-genai" in backends else {})},
        "machine": _machine(bw),
        "models": {m: {"random_weights": art.is_random(m)} for m in models},
        "results": rows,
        "summary": summarize(rows),
        "notes": _notes(models),
        "seconds": round(time.time() - started, 1),
    }
    if out_dir is not None:
        from slmkit.bench.report import write_report

        report["files"] = write_report(report, Path(out_dir), stem="latency")
    return report


def _inspect(job: Job, inspect_artifact):
    """What the bound needs; a GenAI folder is an ONNX folder whose shapes are in genai_config.json."""
    backend = {"raw-llama.cpp": "llama.cpp", "ort-genai": "onnxruntime"}.get(job.backend, job.backend)
    info = inspect_artifact(job.artifact, backend)
    genai = Path(job.artifact) / "genai_config.json"
    if job.backend == "ort-genai" and genai.exists() and not info.n_layers:
        from slmkit.paths import read_json

        dec = read_json(genai)["model"]["decoder"]
        info.n_layers, info.n_kv_heads, info.head_dim = dec["num_hidden_layers"], dec["num_key_value_heads"], dec["head_size"]
        if Path(job.artifact).name.startswith("genai-"):
            info.qtype = Path(job.artifact).name.removeprefix("genai-")
    return info


def summarize(rows: list[dict]) -> dict[str, Any]:
    """Fastest GGUF type (with its parity cost), best result per backend, raw llama.cpp vs our runtime."""
    ok = [r for r in rows if r.get("ok") and r.get("decode_tok_s")]
    out: dict[str, Any] = {}
    for model in dict.fromkeys(r["model"] for r in ok):
        mine = [r for r in ok if r["model"] == model]
        entry: dict[str, Any] = {}
        gguf = [r for r in mine if r["backend"] == "llama.cpp"]
        if gguf:
            best = max(gguf, key=lambda r: r["decode_tok_s"])
            entry["fastest_gguf"] = {"qtype": best["qtype"], "decode_tok_s": best["decode_tok_s"],
                                     "ratio_to_bound": best.get("ratio_to_bound"), "parity": best.get("parity"),
                                     "artifact": best["artifact"]}
        entry["best_per_backend"] = {}
        for backend in dict.fromkeys(r["backend"] for r in mine):
            best = max((r for r in mine if r["backend"] == backend), key=lambda r: r["decode_tok_s"])
            entry["best_per_backend"][backend] = {"qtype": best["qtype"], "decode_tok_s": best["decode_tok_s"]}
        raw = {(r["artifact"], r["qtype"]): r for r in mine if r["backend"] == "raw-llama.cpp"}
        pairs = []
        for r in gguf:
            twin = raw.get((r["artifact"], r["qtype"]))
            if twin is not None:
                ratio = r["decode_tok_s"] / twin["decode_tok_s"]
                pairs.append({"qtype": r["qtype"], "runtime_decode_tok_s": r["decode_tok_s"],
                              "raw_decode_tok_s": twin["decode_tok_s"], "ratio": round(ratio, 3),
                              "runtime_prefill_tok_s": r.get("prefill_tok_s"), "raw_prefill_tok_s": twin.get("prefill_tok_s"),
                              "within_5pct": abs(1 - ratio) <= 0.05})
        if pairs:
            entry["runtime_vs_raw_llama_cpp"] = pairs
        out[model] = entry
    return out


def _notes(models: Sequence[str]) -> list[str]:
    from slmkit.bench.artifacts import is_random

    notes = ["decode bound = copy bandwidth / (weights read per token + KV cache read at the mean context); the "
             "embedding table counts one row unless tied (then read once for the logits)",
             "each (artifact, backend) ran in a fresh process; peak RSS is that process's VmHWM (load + all repeats)"]
    if any(is_random(m) for m in models):
        notes.append("random-weight models: exports ran with the parity gate off; their parity numbers were measured "
                     "afterwards without bounds (gated: false) and describe quantization error on random weights, "
                     "not on a trained model")
    return notes


def _machine(bw: dict) -> dict[str, Any]:
    import platform

    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": cpu, "cores": os.cpu_count(), "bandwidth": bw, "loadavg_at_start": load,
            "python": platform.python_version()}


def _console(enabled: bool):
    if not enabled:
        return None
    from rich.console import Console

    return Console(stderr=True)


class _bar:
    """Rich progress over jobs; `advance(text, start=True)` names the running job, `advance(None)` completes one."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self._p = enabled, total, None

    def __enter__(self):
        if not self.enabled:
            return lambda text, start=False: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._p = Progress(TextColumn("[bold]bench[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                           TimeElapsedColumn(), transient=True, console=_console(True))
        self._p.__enter__()
        task = self._p.add_task("", total=self.total)

        def advance(text, start=False):
            if text is not None:
                self._p.update(task, description=text)
            if not start:
                self._p.advance(task)
        return advance

    def __exit__(self, *exc):
        if self._p is not None:
            self._p.__exit__(*exc)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
