"""SmolLM2-135M-Instruct round trip: pulled GGUF → fp32 HF folder → slmkit GGUF (f32/q8_0/q4_k_m) → llama.cpp.

For a fixed set of chat prompts, greedy answers from stock transformers on the fp32 HF folder are compared
token by token with llama.cpp on each exported GGUF (and on the original Q4_1 file the model came from).
Also reports each export's parity gate numbers and LlamaCppRuntime vs raw llama-cpp-python decode speed.

    .venv/bin/python benchmarks/smollm2_roundtrip.py [--types f32,q8_0,q4_k_m] [--new-tokens 48] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

PROMPTS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "What is 12 plus 30?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in one sentence.",
    "What does a thermometer measure?",
    "Give me a synonym for 'happy'.",
    "How many days are there in a week?",
    "Write a Python function that returns the square of a number.",
    "Why is the sky blue?",
]


def hf_answers(hf_dir: Path, prompt_ids: list[list[int]], new_tokens: int, threads: int) -> list[list[int]]:
    import torch
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in prompt_ids:
            x = torch.tensor([ids])
            y = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new_tokens, do_sample=False)
            out.append(y[0, len(ids):].tolist())
    return out


def gguf_answers(path: Path, prompt_ids: list[list[int]], new_tokens: int, threads: int) -> list[list[int]]:
    from slmkit.serve import SamplingParams
    from slmkit.serve.llamacpp_backend import LlamaCppRuntime

    with LlamaCppRuntime(path, n_ctx=512, n_threads=threads) as rt:
        return [list(rt.generate_ids(ids, SamplingParams(max_new_tokens=new_tokens))) for ids in prompt_ids]


def strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


def agreement(ref: list[list[int]], got: list[list[int]], eos: set[int]) -> dict:
    exact, prefix = 0, []
    for a, b in zip(ref, got):
        a, b = strip_eos(a, eos), strip_eos(b, eos)
        exact += a == b
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        prefix.append(common / max(len(a), 1))
    return {"identical": exact, "prompts": len(ref), "mean_common_prefix": round(statistics.mean(prefix), 4)}


def decode_speed(path: Path, prompt: list[int], new_tokens: int = 64, repeats: int = 5, threads: int = 1) -> dict:
    """Greedy decode tok/s: LlamaCppRuntime.generate_ids vs raw llama-cpp-python `Llama.generate`, same settings."""
    from slmkit.serve import SamplingParams
    from slmkit.serve.llamacpp_backend import LlamaCppRuntime, open_llama

    rt = LlamaCppRuntime(path, n_ctx=512, n_threads=threads, n_threads_batch=threads)
    raw = open_llama(path, extra_bufts=rt.extra_bufts, n_ctx=512, n_threads=threads, n_threads_batch=threads,
                     n_batch=512, n_ubatch=512, verbose=False)
    greedy = dict(temp=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0)

    def raw_run() -> float:
        raw.reset()
        t, n = time.perf_counter(), 0
        for _ in raw.generate(prompt, **greedy):
            n += 1
            if n >= new_tokens:
                break
        return n / (time.perf_counter() - t)

    def rt_run() -> float:
        rt._rewind(0)
        t, n = time.perf_counter(), 0
        for _ in rt.generate_ids(prompt, SamplingParams(max_new_tokens=new_tokens)):
            n += 1
        return n / (time.perf_counter() - t)

    res = {"raw": [], "slmkit": []}
    for _ in range(repeats):  # interleaved, so machine load hits both alike
        res["raw"].append(raw_run())
        res["slmkit"].append(rt_run())
    rt.close()
    raw.close()
    med = {k: statistics.median(v) for k, v in res.items()}
    return {"threads": threads, "new_tokens": new_tokens, "raw_tok_s": round(med["raw"], 2),
            "slmkit_tok_s": round(med["slmkit"], 2), "ratio": round(med["slmkit"] / med["raw"], 4),
            "samples": {k: [round(x, 2) for x in v] for k, v in res.items()}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--types", default="f32,q8_0,q4_k_m")
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 avoids OpenMP spin on a busy machine)")
    ap.add_argument("--force", action="store_true", help="re-export GGUFs even if present")
    ap.add_argument("--no-speed", action="store_true")
    ap.add_argument("--out", default=None, help="JSON results (default: <cache>/bench/smollm2_roundtrip.json)")
    args = ap.parse_args(argv)

    from slmkit.export.gguf import export_gguf
    from slmkit.hub import pull
    from slmkit.model.hf import load_any
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.paths import atomic_write_json, cache_dir

    info = pull("smollm2-135m-instruct")
    hf_dir, original = info["hf_dir"], info["gguf"]
    tok = load_tokenizer(hf_dir)
    eos = {tok.eos_token_id, tok.convert_tokens_to_ids("<|endoftext|>")}
    prompt_ids = []
    for p in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
        prompt_ids.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))

    work = cache_dir() / "bench" / "smollm2_roundtrip"
    work.mkdir(parents=True, exist_ok=True)
    model = None
    results: dict = {"model": "smollm2-135m-instruct", "prompts": PROMPTS, "new_tokens": args.new_tokens, "exports": {}}
    paths = {"original-q4_1": original}
    for qtype in [t for t in args.types.split(",") if t]:
        out = work / f"smollm2-{qtype}.gguf"
        report_path = Path(f"{out}.parity.json")
        if args.force or not out.exists() or not report_path.exists():
            model = model or load_any(hf_dir)
            t0 = time.perf_counter()
            export_gguf(hf_dir, out, qtype, model=model, n_threads=args.threads)
            print(f"exported {qtype} in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        rep = json.loads(report_path.read_text())
        results["exports"][qtype] = {k: rep.get(k) for k in ("max_rel_err", "top1_agreement", "ppl_reference", "ppl_runtime",
                                                            "ppl_ratio", "mean_kl", "passed", "tensor_types")}
        results["exports"][qtype]["bytes"] = out.stat().st_size
        paths[qtype] = out
    del model

    print("generating with transformers (fp32)...", file=sys.stderr)
    t0 = time.perf_counter()
    ref = hf_answers(hf_dir, prompt_ids, args.new_tokens, args.threads)
    results["hf_seconds"] = round(time.perf_counter() - t0, 1)
    results["answers"] = {"hf-fp32": [tok.decode(strip_eos(a, eos)) for a in ref]}
    results["agreement"] = {}
    for name, path in paths.items():
        print(f"generating with llama.cpp: {name}...", file=sys.stderr)
        got = gguf_answers(path, prompt_ids, args.new_tokens, args.threads)
        results["answers"][name] = [tok.decode(strip_eos(a, eos)) for a in got]
        results["agreement"][name] = agreement(ref, got, eos)
    if not args.no_speed:
        results["decode_speed"] = {name: decode_speed(paths[name], prompt_ids[0])
                                   for name in ("q8_0", "q4_k_m", "original-q4_1") if name in paths}

    out = Path(args.out) if args.out else cache_dir() / "bench" / "smollm2_roundtrip.json"
    atomic_write_json(out, results)
    print("| GGUF | identical greedy answers vs HF fp32 | mean common prefix | max rel logit err | top-1 | ppl ratio |")
    print("|---|---|---|---|---|---|")
    for name, agr in results["agreement"].items():
        ex = results["exports"].get(name, {})
        fmt = (lambda v, f: format(v, f) if isinstance(v, (int, float)) else "-")
        print(f"| {name} | {agr['identical']}/{agr['prompts']} | {agr['mean_common_prefix']:.3f} | "
              f"{fmt(ex.get('max_rel_err'), '.3g')} | {fmt(ex.get('top1_agreement'), '.4f')} | {fmt(ex.get('ppl_ratio'), '.4f')} |")
    for name, sp in results.get("decode_speed", {}).items():
        print(f"decode {name}: slmkit {sp['slmkit_tok_s']} tok/s vs raw {sp['raw_tok_s']} tok/s (ratio {sp['ratio']}, "
              f"{sp['threads']} thread)")
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
