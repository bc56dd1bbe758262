"""Agent throughput: the agent loop's model seam (`slmkit.agents.llm.AgentLLM`, many episodes per
`generate_many`) against the naive reference loop (`NaiveLLM`: one episode at a time, every call prefilled
from scratch), on the same HotpotQA offline episodes, greedy. Reports episodes/hour, steps/s, generated and
prefilled tokens, the ratio ours/naive, and how many episodes are token-identical between the two.

Ours is the generation engine (`Runtime.engine`: continuous batching, prefix cache keeping every
episode's trajectory between steps); the engine's own counters (prompt tokens sent, served by the prefix
cache, prefilled) are reported beside the times, and the load average around each phase (shared machine).

    python benchmarks/agent_throughput.py [--episodes 4] [--max-steps 7] [--parallel 4] \\
        [--backends torch,gguf] [--gguf FILE.gguf] [--threads 2] [--json out.json] [--md out.md]

Models: SmolLM2-135M-Instruct (`slmkit models pull smollm2-135m-instruct`): the fp32 HF folder on torch,
and a q4_k_m GGUF exported from it (cached under SLMKIT_CACHE) on llama.cpp unless --gguf is given.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def q4_k_m_gguf(hf_dir: Path) -> Path:
    from slmkit.export.gguf import export_gguf
    from slmkit.paths import cache_dir

    out = cache_dir() / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct-q4_k_m.gguf"
    if not out.exists():  # exported once (parity-gated), as `slmkit export gguf HF OUT --type q4_k_m` does
        export_gguf(hf_dir, out, "q4_k_m")
    return out


def measure(label: str, runtime, env, fmt, tasks, sampling, parallel: int) -> dict:
    from slmkit.agents.llm import AgentLLM, NaiveLLM
    from slmkit.agents.react import run_episodes, run_naive

    rows = {}
    records = {}
    for name in ("naive", "ours"):
        llm = NaiveLLM(runtime) if name == "naive" else AgentLLM(runtime, max_batch=parallel)
        load0 = os.getloadavg()[0]
        t0 = time.perf_counter()
        recs = run_naive(env, fmt, tasks, llm, sampling) if name == "naive" else \
            run_episodes(env, fmt, tasks, llm, sampling, parallel=parallel)
        wall = time.perf_counter() - t0
        steps = sum(r["n_steps"] for r in recs)
        rows[name] = {"seconds": round(wall, 2), "episodes": len(recs), "steps": steps,
                      "episodes_per_hour": round(3600 * len(recs) / wall, 2), "steps_per_s": round(steps / wall, 4),
                      "model_calls": llm.calls, "prompt_tokens": llm.prompt_tokens, "generated_tokens": llm.generated_tokens,
                      "errors": sum(1 for r in recs if r.get("error")),
                      "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)]}
        if name == "ours":
            stats = llm.engine_stats()
            rows[name].update(prefill_tokens=stats.get("prefill_tokens"), cached_tokens=stats.get("cached_tokens"),
                              mean_rows_per_step=stats.get("mean_rows_per_step"),
                              prefix_cache=stats.get("prefix_cache"))
        else:
            rows[name]["prefill_tokens"] = llm.prompt_tokens
        records[name] = recs
        print(f"  {label} {name}: {wall:.1f} s, {rows[name]['steps_per_s']} steps/s, prefilled "
              f"{rows[name]['prefill_tokens']} of {llm.prompt_tokens} prompt tokens, load {rows[name]['load_average']}",
              flush=True)
    same = [[p["ids"] for p in a["pieces"]] == [p["ids"] for p in b["pieces"]]
            for a, b in zip(records["ours"], records["naive"])]
    return {"backend": label, **{f"{k}_{n}": v for n, row in rows.items() for k, v in row.items()},
            "speedup": round(rows["naive"]["seconds"] / rows["ours"]["seconds"], 3),
            "identical_episodes": sum(same), "episodes": len(same)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--max-steps", type=int, default=7, help="ReAct's 7; fewer keeps a CPU run short")
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--backends", default="torch,gguf")
    ap.add_argument("--hf", default=None, help="HF folder (default: the pulled SmolLM2-135M-Instruct)")
    ap.add_argument("--gguf", default=None, help="GGUF file (default: q4_k_m exported from --hf)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-new-tokens", type=int, default=100)
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()

    from slmkit import hub, serve
    from slmkit.agents.hotpotqa import load_environment
    from slmkit.agents.react import Sampling

    hf_dir = Path(args.hf) if args.hf else Path(hub.pull("smollm2-135m-instruct")["hf_dir"])
    env, fmt = load_environment()
    fmt.max_steps = args.max_steps
    tasks = env.tasks(args.episodes)
    sampling = Sampling(max_new_tokens=args.max_new_tokens)
    results = []
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        if backend == "torch":
            rt, label = serve.load(hf_dir, "torch", threads=args.threads), "torch fp32"
        else:
            path = Path(args.gguf) if args.gguf else q4_k_m_gguf(hf_dir)
            rt, label = serve.load(path, "llama.cpp", n_threads=args.threads), f"llama.cpp {path.name}"
        print(f"{label}: {len(tasks)} episodes, max {args.max_steps} steps, parallel {args.parallel}", flush=True)
        results.append(measure(label, rt, env, fmt, tasks, sampling, args.parallel))
        rt.close()
    report = {"benchmark": "agent_throughput", "env": "hotpotqa offline-distractor", "episodes": len(tasks),
              "max_steps": args.max_steps, "parallel": args.parallel, "threads": args.threads,
              "max_new_tokens": args.max_new_tokens, "cpu_count": os.cpu_count(),
              "load_average": os.getloadavg(), "results": results,
              "generate_many": "AgentLLM: one Engine.generate_many per round (continuous batching + prefix cache)"}
    lines = ["| backend | naive s | ours s | speedup | naive steps/s | ours steps/s | naive episodes/h | ours episodes/h "
             "| prefilled tokens naive / ours | identical episodes | load (naive, ours) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['backend']} | {r['seconds_naive']} | {r['seconds_ours']} | {r['speedup']}× | {r['steps_per_s_naive']} | "
                     f"{r['steps_per_s_ours']} | {r['episodes_per_hour_naive']} | {r['episodes_per_hour_ours']} | "
                     f"{r['prefill_tokens_naive']} / {r['prefill_tokens_ours']} | {r['identical_episodes']}/{r['episodes']} | "
                     f"{r['load_average_naive']}, {r['load_average_ours']} |")
    table = "\n".join(lines)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.md:
        Path(args.md).write_text(f"# Agent throughput (HotpotQA offline, SmolLM2-135M-Instruct)\n\n"
                                 f"{len(tasks)} episodes, max {args.max_steps} steps, parallel {args.parallel}, "
                                 f"{args.threads} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n\n"
                                 f"{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
