"""One latency measurement in a fresh process: `python -m slmkit.bench.worker '<json spec>'`.

Why a process per (artifact, backend): peak RSS is per process, and a backend's allocator and
thread pools must not be warmed by another's. The last stdout line is the JSON result.

Spec: {"path", "backend" ("torch"|"llama.cpp"|"onnxruntime"|"raw-llama.cpp"|"ort-genai"), "prompt_tokens",
"new_tokens", "repeats", "threads", "seed", "options": {...backend options}}.
Each repeat: greedy decode of exactly `new_tokens` (EOS ignored) after a seeded random prompt.
TTFT = first token's arrival; prefill tok/s = prompt_tokens / TTFT; decode tok/s = (n−1) / (t_end − t_first).
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence


def status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_mb() -> float:
    kib = status_kib("VmHWM")
    if kib is None:
        import resource

        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(kib / 1024, 1)


def prompt_ids(vocab_hi: int, n: int, seed: int, tokenizer=None) -> list[int]:
    """Seeded random ordinary-token ids (no specials), identical for every backend of one tokenizer."""
    import numpy as np

    lo = 0
    specials: set[int] = set()
    if tokenizer is not None:
        specials = set(getattr(tokenizer, "all_special_ids", []) or [])
        base = getattr(tokenizer, "backend_tokenizer", None)
        size = base.get_vocab_size(with_added_tokens=False) if base is not None else len(tokenizer)
        vocab_hi = min(vocab_hi, size)
        lo = min(256, max(vocab_hi - 1, 0)) if vocab_hi > 512 else 0
    rng = np.random.default_rng(seed)
    ids = []
    while len(ids) < n:
        t = int(rng.integers(lo, vocab_hi))
        if t not in specials:
            ids.append(t)
    return ids


def bench_prompts(vocab_hi: int, n: int, repeats: int, seed: int, tokenizer=None) -> list[list[int]]:
    """The warm-up prompt then one per repeat, each with a distinct first token: a runtime that reuses a cached
    prefix would otherwise skip the prefill from the second repeat on. Same ids for every backend of one tokenizer."""
    prompts: list[list[int]] = []
    for i in range(int(repeats) + 1):
        k = 0
        while True:
            ids = prompt_ids(vocab_hi, n, 1000 * int(seed) + 17 * i + k, tokenizer)
            if all(ids[0] != p[0] for p in prompts):
                break
            k += 1
        prompts.append(ids)
    return prompts


def _ignore_eos(runtime) -> None:
    """Swap in a subclass whose eos_ids is empty: every repeat decodes exactly new_tokens."""
    cls = type(runtime)
    runtime.__class__ = type(f"Bench{cls.__name__}", (cls,), {"eos_ids": property(lambda self: set())})


def _threads_kw(cls, threads: int) -> dict[str, int]:
    params = inspect.signature(cls.__init__).parameters
    for name in ("threads", "n_threads", "num_threads"):
        if name in params:
            return {name: threads}
    return {}


def time_stream(tokens: Iterator[int], n_prompt: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = cpu_first = None
    count = 0
    for _ in tokens:
        count += 1
        if first is None:
            first, cpu_first = time.perf_counter(), time.process_time()
    end, cpu_end = time.perf_counter(), time.process_time()
    if first is None:
        raise RuntimeError("the backend produced no tokens")
    ttft = first - t0
    return {"ttft_s": ttft, "prefill_tok_s": n_prompt / ttft, "new_tokens": count,
            "decode_tok_s": (count - 1) / (end - first) if count > 1 and end > first else None,
            # process CPU time per decoded token: on a shared machine it moves less with other load than wall time
            # (with several threads it includes ONNX Runtime's spin-waiting; at 1 thread it is the compute)
            "decode_cpu_ms_per_tok": 1000 * (cpu_end - cpu_first) / (count - 1) if count > 1 else None,
            "total_s": end - t0}


# ---- backends ----------------------------------------------------------------------------------

def _slmkit_runtime(spec: dict):
    from slmkit.serve import load, runtime_class

    cls = runtime_class(spec["backend"])
    options = {**_threads_kw(cls, spec["threads"]), **spec.get("options", {})}
    runtime = load(spec["path"], spec["backend"], **options)
    _ignore_eos(runtime)
    vocab_hi = _vocab_size(runtime)

    def run(ids: Sequence[int], n_new: int) -> Iterator[int]:
        from slmkit.serve.base import SamplingParams

        return runtime.generate_ids(list(ids), SamplingParams(max_new_tokens=n_new, temperature=0.0))

    return runtime, runtime.tokenizer, vocab_hi, run


def _vocab_size(runtime) -> int:
    for attr in ("vocab_size", "n_vocab"):
        value = getattr(runtime, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    session = getattr(runtime, "session", None)  # ONNX Runtime: the logits' static last dimension
    if session is not None and hasattr(session, "get_outputs"):
        dim = next((o.shape[-1] for o in session.get_outputs() if o.name == "logits"), None)
        if isinstance(dim, int) and dim > 0:
            return dim
    model = getattr(runtime, "model", None)
    cfg = getattr(model, "cfg", None)
    if cfg is not None:
        return int(cfg.vocab_size)
    tok = runtime.tokenizer
    return len(tok) if tok is not None else 256


def _raw_llama(spec: dict):
    """llama-cpp-python used directly (`Llama` + its `generate` loop) with the settings LlamaCppRuntime uses.

    Same n_ctx, n_batch = n_ubatch, threads, and the same extra-buffer (repacked/AMX weights) choice, so the
    ratio isolates our wrapper's cost.
    """
    import llama_cpp

    from slmkit.serve.llamacpp_backend import extra_bufts_default, model_params

    extra = spec.get("extra_bufts")
    if extra is None:
        extra = extra_bufts_default()

    opts = {"n_ctx": spec["prompt_tokens"] + spec["new_tokens"] + 16, "n_batch": 512, **spec.get("raw_options", {})}
    opts.setdefault("n_ubatch", opts["n_batch"])
    with model_params(use_extra_bufts=bool(extra)):
        llm = llama_cpp.Llama(model_path=spec["path"], verbose=False,
                              **{"n_threads": spec["threads"], "n_threads_batch": spec["threads"], **opts})
    llm.extra_bufts = bool(extra)  # reported beside the runtime's own choice
    greedy = dict(temp=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0)

    def run(ids: Sequence[int], n_new: int) -> Iterator[int]:
        for i, tok in enumerate(llm.generate(list(ids), reset=True, **greedy)):
            yield int(tok)
            if i + 1 >= n_new:
                return

    return llm, None, int(llm.n_vocab()), run


def _ort_genai(spec: dict):
    """ONNX Runtime GenAI's generator loop (min_length holds it to exactly new_tokens: EOS ignored)."""
    from slmkit.serve.ortgenai_backend import OrtGenaiRuntime

    runtime = OrtGenaiRuntime(spec["path"], threads=int(spec["threads"]))
    return runtime, runtime.tokenizer, runtime.vocab_size, lambda ids, n: runtime.stream(ids, n, ignore_eos=True)


def _load(spec: dict):
    """(handle, tokenizer, vocab_hi, run, notes); `repack_only` places repackable weights in CPU_REPACK (no AMX)."""
    opts = dict(spec.get("options") or {})
    raw_opts = dict(spec.get("raw_options") or {})
    repack = bool(opts.pop("repack_only", False) or raw_opts.pop("repack_only", False))
    spec = {**spec, "options": opts, "raw_options": raw_opts}
    loader = {"raw-llama.cpp": _raw_llama, "ort-genai": _ort_genai}.get(spec["backend"], _slmkit_runtime)
    if not repack:
        return (*loader(spec), {})
    from slmkit.bench.llama import repack_only

    if spec["backend"] == "raw-llama.cpp":
        spec["extra_bufts"] = False
    with repack_only(spec["path"]) as n:
        return (*loader(spec), {"repack_only": True, "repacked_tensors": n})


def measure(spec: dict) -> dict[str, Any]:
    threads = int(spec["threads"])
    if spec["backend"] == "torch":
        import torch

        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    rss_before = status_kib("VmRSS") or 0
    handle, tokenizer, vocab_hi, run, notes = _load(spec)
    load_s = time.perf_counter() - t0
    prompts = bench_prompts(vocab_hi, spec["prompt_tokens"], int(spec["repeats"]), int(spec.get("seed", 0)), tokenizer)
    warm_ids = prompts[0][: min(16, len(prompts[0]))]
    warm = time_stream(run(warm_ids, 2), len(warm_ids))  # one-time costs (repacking, graph build)
    runs = [time_stream(run(ids, spec["new_tokens"]), len(ids)) for ids in prompts[1:]]
    ids = prompts[1]
    close = getattr(handle, "close", None)
    median = {k: statistics.median(r[k] for r in runs if r[k] is not None) if any(r[k] is not None for r in runs) else None
              for k in ("ttft_s", "prefill_tok_s", "decode_tok_s", "decode_cpu_ms_per_tok")}
    result = {"load_s": round(load_s, 3), "warmup": warm, "runs": runs, "median": median,
              "peak_rss_mb": peak_rss_mb(), "rss_at_start_mb": round(rss_before / 1024, 1),
              "prompt_ids_head": ids[:8], "vocab_hi": vocab_hi, "pid": os.getpid(),
              "runtime_attrs": {k: getattr(handle, k) for k in ("extra_bufts", "n_ctx", "n_batch")
                                if isinstance(getattr(handle, k, None), (int, bool))}}
    result["runtime_attrs"].update(notes)
    if callable(close):
        close()
    return result


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(argv[0])
    try:
        result = {"ok": True, **measure(spec)}
    except Exception as exc:  # noqa: BLE001 - reported to the parent as one line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        result = {"ok": False, "error": f"{type(exc).__name__}: {first[:300]}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
