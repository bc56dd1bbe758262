"""Generation throughput of the engine at concurrency 1, 4, 16, 64 on SmolLM2-135M-Instruct (torch fp32 and
GGUF q4_k_m), side by side in one run with
  (a) one request at a time (the runtime's own single-stream loop, `generate_ids`),
  (b) the static `generate_batch` of the commit before the engine (a `git archive` snapshot run in a
      subprocess: fixed batches of `c` prompts, finished rows waiting for the longest),
  (c) llama-cpp-python's own OpenAI server (`python -m llama_cpp.server`, when the [server] extra is
      installed; same weight-buffer policy as our runtime) with `c` concurrent clients — it serves one
      request at a time (an asyncio lock per model; the C++ `llama-server -np N` is not part of the
      PyPI package),
and against the compute bound: measured fp32 matmul FLOP/s ÷ FLOP per generated token.

Prompts are GSM8K test questions in the chat template ($SLMKIT_DATA), greedy, `--max-new-tokens` each.
Each concurrency runs `--requests-per-slot` × c requests as c closed-loop clients (a client sends its next
request when its last one is answered). Aggregate tokens/s = generated tokens / wall time; latency is per
request (submit → last token), TTFT submit → first token. Greedy outputs are compared with (a): identical
on fp32, and the q4_k_m count says how often llama.cpp's multi-row kernels change a continuation.

    python benchmarks/generation_throughput.py --out docs/results/engine-throughput [--concurrency 1,4,16,64]
        [--backends torch,gguf] [--max-new-tokens 128] [--requests-per-slot 2] [--static-rev f49870e] [--no-server]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]
STATIC_REV = "f49870e"  # the last commit with the static TorchRuntime/LlamaCppRuntime.generate_batch


def load_prompts(tokenizer, n: int) -> list[list[int]]:
    from slmkit.paths import data_dir

    path = data_dir() / "benchmarks" / "gsm8k" / "test.jsonl"
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)["question"]
            ids = tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, tokenize=True)
            out.append([int(t) for t in (ids["input_ids"] if hasattr(ids, "keys") else ids)])
            if len(out) == n:
                break
    return out


def ensure_gguf(hf_dir: Path, qtype: str) -> Path:
    from slmkit.export.gguf import export_gguf

    out = hf_dir.parent / f"eval-{qtype}.gguf"
    if not out.exists():
        export_gguf(hf_dir, out, qtype=qtype, parity=False)
    return out


# ---- compute bound ------------------------------------------------------------------------------------

def matmul_flops(seconds: float = 3.0) -> float:
    """Best fp32 GEMM rate (FLOP/s) at the model's prefill shapes on torch's threads."""
    import torch

    best = 0.0
    for m, k, n in ((1024, 576, 3072), (1024, 1536, 576), (512, 576, 1728)):
        a, b = torch.randn(m, k), torch.randn(n, k)
        torch.nn.functional.linear(a, b)
        t_end = time.perf_counter() + seconds / 3
        while time.perf_counter() < t_end:
            t0 = time.perf_counter()
            torch.nn.functional.linear(a, b)
            best = max(best, 2 * m * k * n / (time.perf_counter() - t0))
    return best


def flop_per_token(cfg, context: float) -> float:
    """Forward FLOP for one generated token: matmuls (layers + LM head) and attention over `context` keys."""
    d, hd, L = cfg.d_model, cfg.hd, cfg.n_layers
    layer = 2 * d * (cfg.n_heads + 2 * cfg.n_kv_heads) * hd + 2 * cfg.n_heads * hd * d + 2 * 3 * d * cfg.d_ff
    attention = 4 * cfg.n_heads * hd * context
    return L * (layer + attention) + 2 * d * cfg.vocab_size


# ---- clients -------------------------------------------------------------------------------------------

def closed_loop(n_clients: int, n_requests: int, call) -> tuple[float, list[dict]]:
    """`n_clients` threads, each running `call(i)` for the next request index until `n_requests` are done."""
    lock, nxt, records = threading.Lock(), [0], [None] * n_requests

    def client():
        while True:
            with lock:
                i = nxt[0]
                nxt[0] += 1
            if i >= n_requests:
                return
            t0 = time.perf_counter()
            rec = call(i)
            rec.setdefault("latency_s", time.perf_counter() - t0)
            records[i] = rec

    t0, c0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=client) for _ in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - t0, time.process_time() - c0), records


def summary(times: tuple[float, float], records: list[dict]) -> dict:
    """tokens/s by the wall clock and per CPU second of this process (all its threads), latencies."""
    wall, cpu = times
    tokens = sum(len(r["ids"]) for r in records)
    lat = sorted(r["latency_s"] for r in records)
    ttft = sorted(r["ttft_s"] for r in records if r.get("ttft_s"))
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))] if xs else None  # noqa: E731
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "tokens": tokens, "tok_s": round(tokens / wall, 2),
            "tok_per_cpu_s": round(tokens / cpu, 2) if cpu > 0 else None, "load": round(os.getloadavg()[0], 1),
            "latency_p50_s": round(pick(lat, 0.5), 2), "latency_p95_s": round(pick(lat, 0.95), 2),
            "ttft_p50_s": round(pick(ttft, 0.5), 3) if ttft else None}


def run_engine(runtime, prompts, c: int, n: int, max_new: int) -> dict:
    from slmkit.serve.base import SamplingParams
    from slmkit.serve.engine import Engine, Request

    engine = Engine.for_runtime(runtime, max_batch=c, prefix_cache_mb=0, max_step_tokens=max(512, c))
    try:
        def call(i):
            res = engine.submit(Request(prompts[i], SamplingParams(max_new_tokens=max_new))).result()
            return {"ids": res.token_ids, "latency_s": res.total_s, "ttft_s": res.first_token_s}
        times, recs = closed_loop(c, n, call)
        out = summary(times, recs)
        st = engine.stats()
        out["mean_rows_per_step"] = st["mean_rows_per_step"]
        return out | {"outputs": [r["ids"] for r in recs]}
    finally:
        engine.close()


def run_serial(runtime, prompts, n: int, max_new: int, outputs_only: bool = False):
    """One request at a time through the runtime's own single-stream loop (outputs_only: the greedy
    continuations of the first n prompts, untimed: the reference the others are compared with)."""
    from slmkit.serve.base import SamplingParams

    eos = runtime.eos_ids
    if outputs_only:
        out = []
        for p in prompts[:n]:
            ids = []
            for t in runtime.generate_ids(p, SamplingParams(max_new_tokens=max_new)):
                ids.append(int(t))
                if t in eos:
                    break
            out.append(ids)
        return out

    def call(i):
        t0, ids, first = time.perf_counter(), [], None
        for t in runtime.generate_ids(prompts[i], SamplingParams(max_new_tokens=max_new)):
            first = first or time.perf_counter() - t0
            ids.append(int(t))
            if t in eos:
                break
        return {"ids": ids, "ttft_s": first}
    times, recs = closed_loop(1, n, call)
    return summary(times, recs) | {"outputs": [r["ids"] for r in recs]}


# ---- (b) the static generate_batch of an older commit, in a subprocess ------------------------------------

def static_worker(args) -> int:
    """Runs under PYTHONPATH=<old tree>: generate_batch over fixed chunks of c prompts."""
    from slmkit.serve import load

    job = json.loads(Path(args.worker_static).read_text())
    rt = load(job["model"], backend=job["backend"])
    out = {}
    for c in job["concurrency"]:
        prompts = job["prompts"][:job["n"][str(c)]]
        recs, t0, cpu0 = [], time.perf_counter(), time.process_time()
        for start in range(0, len(prompts), c):
            chunk = prompts[start:start + c]
            c0 = time.perf_counter()
            toks = rt.generate_batch(chunk, job["max_new"]) if c > 1 else [
                rt.generate_batch([p], job["max_new"])[0] for p in chunk]
            done = time.perf_counter() - c0
            recs += [{"ids": t, "latency_s": done} for t in toks]
        times = (time.perf_counter() - t0, time.process_time() - cpu0)
        out[str(c)] = summary(times, recs) | {"outputs": [r["ids"] for r in recs]}
        print(f"  static c={c}: {out[str(c)]['tok_s']} tok/s", flush=True)
    Path(job["result"]).write_text(json.dumps(out))
    rt.close()
    return 0


def run_static(rev: str, model: Path, backend: str, prompts, sizes: dict, max_new: int, threads: int | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="slmkit-static-") as tmp:
        tree = Path(tmp) / "tree"
        tree.mkdir()
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        job = Path(tmp) / "job.json"
        job.write_text(json.dumps({"model": str(model), "backend": backend, "prompts": prompts, "max_new": max_new,
                                   "concurrency": sorted(int(c) for c in sizes), "n": {str(c): n for c, n in sizes.items()},
                                   "result": str(Path(tmp) / "out.json")}))
        env = dict(os.environ, PYTHONPATH=str(tree))
        cmd = [sys.executable, __file__, "--worker-static", str(job)] + (["--threads", str(threads)] if threads else [])
        subprocess.run(cmd, check=True, env=env, cwd=tmp)
        return json.loads((Path(tmp) / "out.json").read_text())


# ---- (c) llama-cpp-python's server --------------------------------------------------------------------------

def run_server(gguf: Path, tokenizer, prompts, sizes: dict, max_new: int) -> dict | str:
    import importlib.util
    import socket
    import urllib.request

    if importlib.util.find_spec("starlette_context") is None:
        return "skipped: llama-cpp-python[server] is not installed"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # the same weight-buffer policy as our runtime (llama.cpp's AMX buffers crash quantized models on this VM)
    launcher = ("import runpy, sys\nfrom slmkit.serve.llamacpp_backend import extra_bufts_default, model_params\n"
                "sys.argv = ['llama_cpp.server'] + sys.argv[1:]\n"
                "with model_params(use_extra_bufts=extra_bufts_default()):\n"
                "    runpy.run_module('llama_cpp.server', run_name='__main__')\n")
    proc = subprocess.Popen([sys.executable, "-c", launcher, "--model", str(gguf), "--n_ctx", "2048",
                             "--port", str(port), "--host", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(base + "/v1/models", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        else:
            return "skipped: the server did not start"
        texts = [tokenizer.decode(p, skip_special_tokens=False) for p in prompts]

        def call(i):
            body = json.dumps({"prompt": texts[i], "max_tokens": max_new, "temperature": 0.0, "top_k": 1}).encode()
            req = urllib.request.Request(base + "/v1/completions", body, {"Content-Type": "application/json"})
            out = json.loads(urllib.request.urlopen(req, timeout=3600).read())
            return {"ids": [0] * int(out["usage"]["completion_tokens"]), "text": out["choices"][0]["text"]}
        out = {}
        for c, n in sizes.items():
            times, recs = closed_loop(c, n, call)
            out[str(c)] = summary(times, recs)  # (the CPU time is the client's; the server is another process)
            print(f"  server c={c}: {out[str(c)]['tok_s']} tok/s", flush=True)
        return out
    finally:
        proc.terminate()
        proc.wait(30)


# ---- llama.cpp: restoring a saved sequence state vs copying a resident stream --------------------------------

def llama_prefix_check(gguf: Path, tokens: int = 1000, keep: int = 800, repeats: int = 5) -> dict:
    """Time the two ways to give a new sequence the first `keep` cells of a `tokens`-long one: copy the
    resident stream (llama_memory_seq_cp, whole, then seq_rm of the tail) or restore a host copy of its state
    (llama_state_seq_set_data, then seq_rm), against recomputing those `keep` tokens."""
    import ctypes

    from slmkit.serve.base import SamplingParams
    from slmkit.serve.engine import Engine, Request
    from slmkit.serve.llamacpp_backend import LlamaCppRuntime

    rt = LlamaCppRuntime(gguf)
    engine = Engine.for_runtime(rt, max_batch=2, prefix_cache_mb=0)
    try:
        ids = [int(t) % 40000 + 100 for t in range(tokens)]
        engine.submit(Request(ids, SamplingParams(max_new_tokens=1))).result()  # builds the 2-stream context
        ex, lib = engine.executor, rt._lib
        seq = type("S", (), {"prompt": ids, "budget": 1, "row": -1})()
        ex.start(seq)
        row, other = seq.row, 1 - seq.row
        chunks = [ids[i:i + 256] for i in range(0, tokens, 256)]
        t0 = time.perf_counter()
        from slmkit.serve.engine.step import Chunk
        for i, c in enumerate(chunks):
            ex.run([Chunk(seq, c, 256 * i, True, 0)])
        prefill_s = time.perf_counter() - t0
        out = {"tokens": tokens, "keep": keep, "prefill_s_per_token": prefill_s / tokens}
        cp, st = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            lib.llama_memory_seq_cp(ex.mem, row, other, -1, -1)
            lib.llama_memory_seq_rm(ex.mem, other, keep, -1)
            cp.append(time.perf_counter() - t0)
            lib.llama_memory_seq_rm(ex.mem, other, -1, -1)
            t0 = time.perf_counter()
            size = lib.llama_state_seq_get_size(ex.ctx, row)
            buf = (ctypes.c_uint8 * size)()
            lib.llama_state_seq_get_data(ex.ctx, buf, size, row)
            saved = time.perf_counter() - t0
            t0 = time.perf_counter()
            lib.llama_state_seq_set_data(ex.ctx, buf, size, other)
            lib.llama_memory_seq_rm(ex.mem, other, keep, -1)
            st.append((saved, time.perf_counter() - t0))
            lib.llama_memory_seq_rm(ex.mem, other, -1, -1)
        out.update(seq_cp_ms=1000 * min(cp), state_save_ms=1000 * min(a for a, _ in st),
                   state_restore_ms=1000 * min(b for _, b in st), state_bytes=size,
                   recompute_keep_ms=1000 * keep * out["prefill_s_per_token"])
        print(f"  llama.cpp prefix reuse ({keep} of {tokens} cells): seq_cp {out['seq_cp_ms']:.1f} ms, state save "
              f"{out['state_save_ms']:.1f} ms + restore {out['state_restore_ms']:.1f} ms ({size / 2**20:.1f} MB), "
              f"recompute {out['recompute_keep_ms']:.0f} ms", flush=True)
        ex.finish(seq, ids, 0)
        return out
    finally:
        engine.close()
        rt.close()


# ---- report ------------------------------------------------------------------------------------------------

def same(a: list[list[int]], b: list[list[int]]) -> tuple[int, int]:
    return sum(x == y for x, y in zip(a, b)), min(len(a), len(b))


def write_report(out_dir: Path, res: dict) -> None:
    from slmkit.paths import atomic_write_json, atomic_write_text
    from slmkit.plots import pyplot, save_png

    atomic_write_json(out_dir / "results.json", res)
    lines = [f"# Generation throughput: the engine vs one-at-a-time, the old static batch and llama-cpp-python's server",
             "", f"SmolLM2-135M-Instruct, {res['prompts']} GSM8K chat prompts (mean {res['mean_prompt_tokens']:.0f} tokens), "
             f"greedy, up to {res['max_new_tokens']} new tokens; {res['threads']} threads; load average during the run "
             f"{res['load_start']:.1f} → {res['load_end']:.1f} (2 cores, shared). fp32 matmul peak {res['matmul_gflops']:.1f} "
             f"GFLOP/s, {res['flop_per_token'] / 1e9:.3f} GFLOP per generated token → compute bound "
             f"**{res['compute_bound_tok_s']:.0f} tok/s**.", ""]
    for backend, b in res["backends"].items():
        lines += [f"## {backend}", "", f"one request at a time (measured just before each concurrency, median): "
                  f"**{b['serial']['tok_s']} tok/s**, {b['serial']['tok_per_cpu_s']} tok per CPU second, p50 latency "
                  f"{b['serial']['latency_p50_s']} s", "",
                  "| concurrency | engine tok/s (load) | × one-at-a-time (wall / CPU) | × static batch | % of compute bound | p50 / p95 latency s | p50 TTFT s | rows/step | static tok/s | server tok/s | same greedy text as one-at-a-time |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for c, e in b["engine"].items():
            st = b.get("static", {}).get(c) if isinstance(b.get("static"), dict) else None
            sv = b.get("server", {}).get(c) if isinstance(b.get("server"), dict) else None
            cpu_ratio = e["tok_per_cpu_s"] / e["serial_tok_per_cpu_s"] if e.get("serial_tok_per_cpu_s") else float("nan")
            lines.append(f"| {c} | {e['tok_s']} ({e['load']}) | {e['tok_s'] / e['serial_tok_s']:.2f}× / {cpu_ratio:.2f}× | "
                         f"{(e['tok_s'] / st['tok_s']) if st else float('nan'):.2f}× | "
                         f"{100 * e['tok_s'] / res['compute_bound_tok_s']:.0f}% | {e['latency_p50_s']} / {e['latency_p95_s']} | "
                         f"{e['ttft_p50_s']} | {e['mean_rows_per_step']} | {st['tok_s'] if st else '–'} | "
                         f"{sv['tok_s'] if sv else '–'} | {e['same_as_serial']} |")
        for key in ("static", "server"):
            if isinstance(b.get(key), str):
                lines += ["", f"{key}: {b[key]}"]
        lines.append("")
    atomic_write_text(out_dir / "README.md", "\n".join(lines) + "\n")
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for backend, b in res["backends"].items():
        cs = [int(c) for c in b["engine"]]
        ax.plot(cs, [b["engine"][str(c)]["tok_s"] for c in cs], marker="o", label=f"{backend} engine")
        if isinstance(b.get("static"), dict):
            ax.plot(cs, [b["static"][str(c)]["tok_s"] for c in cs], marker="x", ls="--", label=f"{backend} static batch")
        ax.axhline(b["serial"]["tok_s"], ls=":", color="gray")
    ax.axhline(res["compute_bound_tok_s"], color="red", ls="-.", label="fp32 compute bound")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("generated tokens / s")
    ax.legend(fontsize=8)
    save_png(fig, out_dir / "throughput.png")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/engine-throughput")
    ap.add_argument("--concurrency", default="1,4,16,64")
    ap.add_argument("--backends", default="torch,gguf")
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--requests-per-slot", type=int, default=2)
    ap.add_argument("--min-requests", type=int, default=8)
    ap.add_argument("--serial-requests", type=int, default=4,
                    help="requests timed one at a time (before each concurrency)")
    ap.add_argument("--compare-requests", type=int, default=16, help="greedy outputs compared with one-at-a-time")
    ap.add_argument("--static-rev", default=STATIC_REV)
    ap.add_argument("--no-static", action="store_true")
    ap.add_argument("--no-server", action="store_true")
    ap.add_argument("--server-requests", type=int, default=16,
                    help="at most this many requests per concurrency for the server (it serves one at a time)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--llama-prefix-check", action="store_true", help="only time llama.cpp state restore vs seq_cp")
    ap.add_argument("--worker-static", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker_static:
        return static_worker(args)
    from slmkit.hub import pull
    from slmkit.serve import load

    hf_dir = Path(pull("smollm2-135m-instruct")["hf_dir"])
    if args.llama_prefix_check:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        from slmkit.paths import atomic_write_json

        atomic_write_json(out / "llama-prefix-check.json", llama_prefix_check(ensure_gguf(hf_dir, "q4_k_m")) |
                          {"load": os.getloadavg()[0]})
        return 0
    conc = [int(c) for c in args.concurrency.split(",")]
    sizes = {c: max(args.min_requests, args.requests_per_slot * c) for c in conc}
    n_total = max(max(sizes.values()), args.serial_requests)
    res: dict = {"load_start": os.getloadavg()[0], "max_new_tokens": args.max_new_tokens, "threads": torch.get_num_threads(),
                 "backends": {}, "static_rev": args.static_rev}
    res["matmul_gflops"] = matmul_flops() / 1e9
    for name in args.backends.split(","):
        backend, path = ("torch", hf_dir) if name == "torch" else ("llama.cpp", ensure_gguf(hf_dir, "q4_k_m"))
        label = "torch fp32" if name == "torch" else "GGUF q4_k_m (llama.cpp)"
        opts = {"threads": args.threads} if backend == "torch" and args.threads else (
            {"n_threads": args.threads} if args.threads else {})
        rt = load(path, backend=backend, **opts)
        prompts = load_prompts(rt.tokenizer, n_total)
        if name == "torch":
            res["prompts"], res["mean_prompt_tokens"] = n_total, statistics.mean(len(p) for p in prompts)
        b: dict = {"serial_runs": [], "engine": {}}
        ref_all = run_serial(rt, prompts, args.compare_requests, args.max_new_tokens, outputs_only=True)
        for c in conc:  # one-at-a-time before each concurrency: the load drifts, neighbours compare fairly
            sr = run_serial(rt, prompts, args.serial_requests, args.max_new_tokens)
            sr.pop("outputs")
            b["serial_runs"].append(sr)
            e = run_engine(rt, prompts, c, sizes[c], args.max_new_tokens)
            outs = e.pop("outputs")
            s, k = same(outs, ref_all)
            e["same_as_serial"] = f"{s}/{k}"
            e["serial_tok_s"], e["serial_tok_per_cpu_s"] = sr["tok_s"], sr["tok_per_cpu_s"]
            b["engine"][str(c)] = e
            print(f"  one-at-a-time {sr['tok_s']} tok/s ({sr['tok_per_cpu_s']} per CPU s); engine c={c}: {e['tok_s']} tok/s "
                  f"({e['tok_per_cpu_s']} per CPU s, {e['mean_rows_per_step']} rows/step), same text {s}/{k}", flush=True)
        b["serial"] = {k: statistics.median(r[k] for r in b["serial_runs"]) for k in ("tok_s", "tok_per_cpu_s", "latency_p50_s")}
        ref = ref_all
        if name == "torch":
            mean_ctx = res["mean_prompt_tokens"] + args.max_new_tokens / 2
            res["flop_per_token"] = flop_per_token(rt.cfg, mean_ctx)
            res["compute_bound_tok_s"] = res["matmul_gflops"] * 1e9 / res["flop_per_token"]
        tok = rt.tokenizer
        rt.close()
        if not args.no_static:
            print(f"  static generate_batch at {args.static_rev}", flush=True)
            try:
                st = run_static(args.static_rev, path, backend, prompts, sizes, args.max_new_tokens, args.threads)
                for c, v in st.items():
                    outs = v.pop("outputs")
                    v["same_as_serial"] = "%d/%d" % same(outs, ref)
                b["static"] = st
            except subprocess.CalledProcessError as exc:
                b["static"] = f"failed ({exc})"
        if name != "torch" and not args.no_server:
            print("  llama-cpp-python server", flush=True)
            b["server"] = run_server(path, tok, prompts, {c: min(n, max(c, args.server_requests)) for c, n in sizes.items()},
                                     args.max_new_tokens)
        res["backends"][label] = b
    res["load_end"] = os.getloadavg()[0]
    if "compute_bound_tok_s" not in res:
        from slmkit.model.hf import load_any

        cfg = load_any(hf_dir).cfg
        res["flop_per_token"] = flop_per_token(cfg, 200)
        res["compute_bound_tok_s"] = res["matmul_gflops"] * 1e9 / res["flop_per_token"]
        res["prompts"], res["mean_prompt_tokens"] = n_total, 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(out, res)
    print((out / "README.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
