"""`slmkit demo` stage: a small latency table of the demo model across backends and types.

One thread: a model this small is dispatch-bound, and a second OpenMP thread only adds barrier waits
(on a busy 2-core machine torch decode fell from ~1,170 to ~5 tok/s with 2 threads).
"""

from __future__ import annotations


def demo_latency(ctx: dict) -> dict:
    from slmkit.bench.latency import bench_latency

    artifacts = ctx.get("artifacts", {})
    models = [str(ctx["checkpoint"])] + [str(p) for p in artifacts.values()]
    backends = ["torch"] + (["llama.cpp"] if any(k.startswith("gguf") for k in artifacts) else []) + \
        (["onnxruntime"] if "onnx-int8" in artifacts else [])
    report = bench_latency(models, backends=backends, prompt_tokens=64, new_tokens=32, repeats=2, threads=1,
                           out_dir=ctx["run_dir"] / "latency", gguf_types=(), onnx_types=(), parity=False,
                           raw_llama="none", progress=False, title="slmkit demo: nano model latency")
    rows = [r for r in report["results"] if r.get("ok")]
    if not rows:  # a table of failures is not a latency measurement: the stage fails, naming the first error
        first = next((r.get("error") for r in report["results"] if r.get("error")), "no measurement ran")
        raise RuntimeError(f"every latency measurement failed ({len(report['results'])} rows); first: {first}")
    lines = ["| backend | type | decode tok/s | ratio to bound | prefill tok/s | TTFT ms | peak RSS MB | file MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['backend']} | {r.get('qtype') or ''} | {r.get('decode_tok_s')} | {r.get('ratio_to_bound')} | "
                     f"{r.get('prefill_tok_s')} | {r.get('ttft_ms')} | {r.get('peak_rss_mb')} | {r.get('file_mb')} |")
    return {"results": len(rows), "failed": len(report["results"]) - len(rows), "table_md": "\n".join(lines),
            "report": str(ctx["run_dir"] / "latency")}
