"""Load on `slmkit serve api`: N concurrent streaming chat clients against the server on the SmolLM2-135M-Instruct
GGUF at `--parallel 1, 4, 8`, and the same load against llama-cpp-python's own OpenAI server, in one run.

Each configuration starts its server as a subprocess on 127.0.0.1 (nice -n 5), waits until it answers, then
runs `--clients` closed-loop clients (a client sends its next request when its last one is answered) for
`--requests` requests in all or until `--max-seconds` (no new request after that). Every request streams
(`stream: true`), greedy, `--max-tokens` tokens at most; prompts are distinct short questions in the chat
template. Per configuration: requests/s, aggregate tokens/s (tokens = the streamed text re-tokenized with the
model's tokenizer, the same count for both servers; ours also reports its own usage), TTFT (request sent ->
first content chunk) and latency (-> [DONE]) p50/p95/p99, and errors (any non-200, broken stream or missing
[DONE]). llama-cpp-python's server runs one request at a time (one lock per model), so its row is the
baseline for `--parallel 1`. The machine's load average is recorded before and after (2 shared cores).

    nice -n 5 .venv/bin/python benchmarks/api_load.py --out docs/results/api-load [--parallel 1,4,8]
        [--clients 8] [--requests 24] [--max-tokens 48] [--threads 2] [--model GGUF] [--no-llama-server]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
QUESTIONS = [
    "Explain why the sky is blue.", "Describe how a bicycle works.", "What makes a good friend?",
    "Write a short story about a lighthouse.", "How do plants make food?", "Describe the water cycle.",
    "Why do cats purr?", "What is the history of the printing press?", "How does a rainbow form?",
    "Give advice to a new student.", "Describe a busy market in the morning.", "How do bees make honey?",
    "What is gravity?", "Write a poem about autumn leaves.", "How do airplanes stay in the air?",
    "Describe your favourite meal.", "Why is exercise healthy?", "What is a volcano?",
    "Explain how a library is organised.", "Describe a thunderstorm.", "What do astronauts eat?",
    "How does a compass work?", "Write a letter to a friend about a trip.", "What are clouds made of?",
]
# ours: `slmkit serve api` through the app's own add_commands (what `slmkit serve api` runs)
OURS = ("import argparse, sys; from slmkit.app.cli import add_commands; p = argparse.ArgumentParser(prog='slmkit'); "
        "add_commands(p.add_subparsers()); a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))")
# llama-cpp-python's server, with llama.cpp's extra weight buffers as slmkit sets them (AMX ones crash in VMs)
LLAMA = ("import sys, uvicorn; from llama_cpp.server.app import create_app; from llama_cpp.server.settings import Settings; "
         "from slmkit.serve.llamacpp_backend import extra_bufts_default, model_params; "
         "m, port, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])\n"
         "with model_params(use_extra_bufts=extra_bufts_default()):\n"
         "    app = create_app(Settings(model=m, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False,\n"
         "                              interrupt_requests=False))\n"
         "uvicorn.run(app, host='127.0.0.1', port=port, log_level='warning')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def default_model() -> Path:
    from slmkit.hub import MODELS, list_models

    row = next(r for r in list_models() if r["name"] == "smollm2-135m-instruct")
    folder = Path(row["path"])
    q4km = folder / "SmolLM2-135M-Instruct-q4_k_m.gguf"
    if q4km.is_file():
        return q4km
    if row["cached"]:
        return folder / MODELS["smollm2-135m-instruct"]["file"]
    raise SystemExit("error: run `slmkit models pull smollm2-135m-instruct` first (or pass --model)")


class Server:
    """A server subprocess on a free loopback port, stopped (SIGINT, then kill) on exit."""

    def __init__(self, kind: str, model: Path, parallel: int, threads: int, log: Path) -> None:
        self.kind, self.port = kind, free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        if kind == "ours":
            cmd = [sys.executable, "-c", OURS, "serve", "api", str(model), "--port", str(self.port), "--threads",
                   str(threads), "--parallel", str(parallel), "--max-queue", "64", "--served-model-name", "m"]
        else:
            cmd = [sys.executable, "-c", LLAMA, str(model), str(self.port), str(threads)]
        self.log = open(log, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(["nice", "-n", "5", *cmd], stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=REPO)
        self.model_name = "m" if kind == "ours" else str(model)

    def wait(self, timeout: float = 600) -> None:
        probe = "/health" if self.kind == "ours" else "/v1/models"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited with {self.proc.returncode}: see {self.log.name}")
            try:
                if httpx.get(self.base + probe, timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.kind} server did not start within {timeout:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(2)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self.log.close()


def stream_one(base: str, model: str, question: str, max_tokens: int, usage: bool) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True}
    if usage:
        body["stream_options"] = {"include_usage": True}
    t0 = time.perf_counter()
    ttft, text, done, reported = None, "", False, None
    try:
        with httpx.stream("POST", base + "/v1/chat/completions", json=body, timeout=600) as resp:
            if resp.status_code != 200:
                return {"error": f"HTTP {resp.status_code}: {resp.read()[:200]!r}"}
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if chunk.get("error"):
                    return {"error": str(chunk["error"])[:200]}
                if chunk.get("usage"):
                    reported = chunk["usage"]["completion_tokens"]
                for choice in chunk.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    if piece:
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        text += piece
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:200]}
    if not done:
        return {"error": "stream ended without [DONE]"}
    return {"ttft": ttft, "latency": time.perf_counter() - t0, "text": text, "usage_tokens": reported}


def run_load(server: Server, clients: int, requests: int, max_tokens: int, max_seconds: float, tokenizer) -> dict:
    lock = threading.Lock()
    issued = [0]
    records: list[dict] = []
    t_start = time.perf_counter()

    def client(c: int) -> None:
        while True:
            with lock:
                if issued[0] >= requests or time.perf_counter() - t_start > max_seconds:
                    return
                k = issued[0]
                issued[0] += 1
            rec = stream_one(server.base, server.model_name, QUESTIONS[k % len(QUESTIONS)], max_tokens,
                             usage=server.kind == "ours")
            rec["client"] = c
            with lock:
                records.append(rec)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t_start
    ok = [r for r in records if "error" not in r]
    tokens = sum(len(tokenizer.encode(r["text"], add_special_tokens=False)) for r in ok)

    def pct(values, q):
        if not values:
            return None
        values = sorted(values)
        return round(values[min(len(values) - 1, max(0, int(round(q / 100 * len(values) + 0.5)) - 1))] * 1000, 1)

    ttfts = [r["ttft"] for r in ok if r["ttft"] is not None]
    lats = [r["latency"] for r in ok]
    out = {"requests": len(records), "ok": len(ok), "errors": len(records) - len(ok), "wall_s": round(wall, 2),
           "requests_per_s": round(len(ok) / wall, 3), "tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
           "ttft_ms": {f"p{q}": pct(ttfts, q) for q in (50, 95, 99)},
           "latency_ms": {f"p{q}": pct(lats, q) for q in (50, 95, 99)},
           "mean_tokens_per_request": round(tokens / max(len(ok), 1), 1),
           "error_samples": [r["error"] for r in records if "error" in r][:3]}
    usage = [r["usage_tokens"] for r in ok if r.get("usage_tokens") is not None]
    if usage:
        out["server_usage_tokens"] = sum(usage)
    return out


def markdown(result: dict) -> str:
    lines = [f"# `slmkit serve api` under load — {Path(result['model']).name}", "",
             f"{result['clients']} concurrent streaming chat clients (closed loop), {result['requests']} requests per "
             f"configuration (or {result['max_seconds']:.0f} s), greedy, at most {result['max_tokens']} tokens each, "
             f"distinct questions; server and clients on 127.0.0.1, servers at nice 5, {result['threads']} llama.cpp "
             f"threads. Tokens = the streamed text re-tokenized with the model's tokenizer (same count for both servers).",
             f"Machine: {result['cpus']} cores shared with other work; load average before {result['load_before']}, "
             f"after {result['load_after']} — absolute numbers are low and noisy here, the ratios in one run are the point.", "",
             "| server | parallel | req/s | tokens/s | TTFT p50 / p95 / p99 (ms) | latency p50 / p95 / p99 (ms) | errors |",
             "|---|---:|---:|---:|---|---|---:|"]
    for row in result["rows"]:
        r = row["load"]
        if "skipped" in r:
            lines.append(f"| {row['server']} | {row['parallel']} | — | — | {r['skipped']} | | |")
            continue
        t, l = r["ttft_ms"], r["latency_ms"]
        lines.append(f"| {row['server']} | {row['parallel']} | {r['requests_per_s']:.2f} | {r['tokens_per_s']:.1f} | "
                     f"{t['p50']} / {t['p95']} / {t['p99']} | {l['p50']} / {l['p95']} / {l['p99']} | {r['errors']} |")
    lines += ["", "llama-cpp-python's server runs with `interrupt_requests=False`: with its default (True) a new request "
              "cuts the running one off, and under this load its answers averaged 2 tokens instead of 48 (measured in "
              "an earlier run of this script) — the 'slot unavailable' behaviour a queue avoids.",
              "", "Ratios (tokens/s, same run):"]
    for key, value in result["ratios"].items():
        lines.append(f"- {key}: **{value:.2f}×**")
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    from slmkit.plots import pyplot, save_png

    plt = pyplot()
    rows = [r for r in result["rows"] if "skipped" not in r["load"]]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ours = [r for r in rows if r["server"] == "slmkit serve api"]
    xs = [r["parallel"] for r in ours]
    a.plot(xs, [r["load"]["tokens_per_s"] for r in ours], "o-", label="slmkit serve api")
    b.plot(xs, [r["load"]["latency_ms"]["p50"] / 1000 for r in ours], "o-", label="latency p50")
    b.plot(xs, [r["load"]["ttft_ms"]["p50"] / 1000 for r in ours], "s--", label="TTFT p50")
    for r in rows:
        if r["server"] != "slmkit serve api":
            a.axhline(r["load"]["tokens_per_s"], color="grey", ls=":", label=r["server"])
            b.axhline(r["load"]["latency_ms"]["p50"] / 1000, color="grey", ls=":", label=f"{r['server']} latency p50")
    a.set(xlabel="--parallel", ylabel="aggregate tokens/s", title=f"{result['clients']} streaming clients")
    b.set(xlabel="--parallel", ylabel="seconds", title="per request")
    for ax in (a, b):
        ax.set_xticks(xs)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_png(fig, path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="GGUF (default: the pulled SmolLM2-135M-Instruct, q4_k_m if made)")
    ap.add_argument("--parallel", default="1,4,8")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=24, help="requests per configuration (bounded count)")
    ap.add_argument("--max-seconds", type=float, default=600, help="no new request after this (bounded time)")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-llama-server", action="store_true")
    ap.add_argument("--out", default="docs/results/api-load", help="writes OUT.json, OUT.md, OUT.png")
    args = ap.parse_args()
    model = Path(args.model) if args.model else default_model()
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.serve.llamacpp_backend import LlamaCppRuntime

    hf = model.parent / "hf"
    if (hf / "tokenizer.json").exists():
        tokenizer = load_tokenizer(hf)
    else:
        rt = LlamaCppRuntime(model, n_ctx=256)
        tokenizer = rt.tokenizer
        rt.close()
    result = {"model": str(model), "clients": args.clients, "requests": args.requests, "max_seconds": args.max_seconds,
              "max_tokens": args.max_tokens, "threads": args.threads, "cpus": os.cpu_count(),
              "load_before": load_average(), "rows": [],
              "command": "nice -n 5 .venv/bin/python benchmarks/api_load.py " + " ".join(sys.argv[1:])}
    logs = Path(tempfile.mkdtemp(prefix="api-load-"))
    configs = [("ours", int(p)) for p in args.parallel.split(",")]
    if not args.no_llama_server:
        configs.append(("llama", 1))
    for kind, parallel in configs:
        name = "slmkit serve api" if kind == "ours" else "llama-cpp-python server"
        print(f"{name} parallel={parallel}: starting", flush=True)
        if kind == "llama":
            import importlib.util

            if importlib.util.find_spec("starlette_context") is None:
                result["rows"].append({"server": name, "parallel": 1,
                                       "load": {"skipped": "llama-cpp-python[server] not installed"}})
                continue
        server = Server(kind, model, parallel, args.threads, logs / f"{kind}-{parallel}.log")
        try:
            server.wait()
            stream_one(server.base, server.model_name, "Hello", 4, usage=False)  # warm-up, not counted
            load = run_load(server, args.clients, args.requests, args.max_tokens, args.max_seconds, tokenizer)
        finally:
            server.stop()
        load["load_average_after"] = load_average()
        result["rows"].append({"server": name, "parallel": parallel, "load": load})
        print(f"  {load['ok']}/{load['requests']} ok, {load['tokens_per_s']} tok/s, {load['requests_per_s']} req/s, "
              f"latency p50 {load['latency_ms']['p50']} ms, errors {load['errors']}", flush=True)
    result["load_after"] = load_average()
    by = {(r["server"], r["parallel"]): r["load"].get("tokens_per_s") for r in result["rows"]}
    ratios = {}
    base1 = by.get(("slmkit serve api", 1))
    for (server, parallel), tps in by.items():
        if server == "slmkit serve api" and parallel != 1 and base1 and tps:
            ratios[f"serve api --parallel {parallel} vs --parallel 1"] = tps / base1
    llama = by.get(("llama-cpp-python server", 1))
    if llama:
        for (server, parallel), tps in by.items():
            if server == "slmkit serve api" and tps:
                ratios[f"serve api --parallel {parallel} vs llama-cpp-python server"] = tps / llama
    result["ratios"] = ratios
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from slmkit.paths import atomic_write_json, atomic_write_text

    atomic_write_json(out.with_suffix(".json"), result)
    atomic_write_text(out.with_suffix(".md"), markdown(result))
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    errors = sum(r["load"].get("errors", 0) for r in result["rows"])  # must be 0
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
