"""Decode speed: slmkit's native torch decode loop vs Hugging Face `generate`, same weights, same shape.

Random weights at the SmolLM2-135M shape (d_model 576, 30 layers, 9 heads, 3 KV heads, ffn 1536,
vocab 49152, tied). Greedy, batch 1, fp32, no EOS, so both decode exactly --new-tokens tokens.
Prints tokens/s of both and the ratio (optionally torch.compile and ONNX Runtime fp32/int8 too), by wall
clock and by the process's CPU time (on a machine shared with other jobs the CPU time per token is the
steadier measure of the work; the wall clock is what a user waits).

    python benchmarks/decode_speed.py [--new-tokens 64] [--prompt-tokens 32] [--repeats 3] [--json out.json]

Before/after a change, run this same script against the other tree (`PYTHONPATH=/path/to/old/tree`): the
runtime API it uses (`TorchRuntime.from_model(...).generate_ids`) is the same in both.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

SHAPES = {
    "smollm2-135m": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
                         max_seq_len=2048, rope_theta=100000.0, tie_embeddings=True, norm_eps=1e-5),
    "tiny": dict(vocab_size=1000, d_model=96, n_layers=3, n_heads=6, n_kv_heads=2, d_ff=200, max_seq_len=512),
}


def best_of(fns: dict, repeats: int, cpu: dict | None = None) -> dict:
    """Minimum wall time per function, runs interleaved so load from other processes hits all alike
    (the minimum CPU time of each goes into `cpu` when given)."""
    times: dict = {name: [] for name in fns}
    cpus: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t0)
            cpus[name].append(time.process_time() - c0)
    if cpu is not None:
        cpu.update({name: min(t) for name, t in cpus.items()})
    return {name: min(t) for name, t in times.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="smollm2-135m")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--compile", action="store_true", help="also time TorchRuntime(compile=True)")
    ap.add_argument("--onnx", action="store_true", help="also export to ONNX (fp32 and int8) and time OnnxRuntime decode")
    ap.add_argument("--skip-hf", action="store_true", help="time only slmkit's decode (no HF generate reference)")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import LlamaConfig, LlamaForCausalLM

    from slmkit.model.config import ModelConfig
    from slmkit.model.hf import hf_config, hf_state_dict
    from slmkit.model.transformer import Transformer
    from slmkit.serve.base import SamplingParams
    from slmkit.serve.torch_backend import TorchRuntime

    torch.manual_seed(0)
    cfg = ModelConfig(**SHAPES[args.shape], name=args.shape)
    model = Transformer(cfg).eval()
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt_tokens)).tolist()[0]
    n = args.new_tokens
    results: dict = {"shape": args.shape, "params": model.num_params(), "new_tokens": n,
                     "prompt_tokens": args.prompt_tokens, "threads": torch.get_num_threads(),
                     "torch": torch.__version__}

    hf_cfg = {k: v for k, v in hf_config(cfg).items() if k not in ("transformers_version",)}
    hf = LlamaForCausalLM(LlamaConfig(**hf_cfg)).eval()
    hf.load_state_dict(hf_state_dict(model), strict=False)
    hf.tie_weights()
    ids = torch.tensor([prompt])

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
        run_hf.out = out[0, len(prompt):].tolist()

    params = SamplingParams(max_new_tokens=n)

    def timed_runtime(rt):
        def run():
            run.out = list(rt.generate_ids(prompt, params))
        run()  # warm-up (and compile, when on)
        return run

    fns = {"native": timed_runtime(TorchRuntime.from_model(model))}
    if not args.skip_hf:
        run_hf()
        fns["hf"] = run_hf
    if args.compile:
        fns["compiled"] = timed_runtime(TorchRuntime.from_model(model, compile=True))
    cpu: dict = {}
    best = best_of(fns, args.repeats, cpu)
    results.update(native_cpu_ms_per_token=1000 * cpu["native"] / n, load=os.getloadavg()[0])
    if args.skip_hf:
        t = best["native"]
        results.update(native_tok_s=n / t, native_ms_per_token=1000 * t / n)
        print(f"{args.shape}: prompt {len(prompt)}, {n} new tokens, {results['threads']} threads (best of {args.repeats}), "
              f"load {results['load']:.1f}")
        print(f"  slmkit native    {n / t:7.1f} tok/s  ({1000 * t / n:6.1f} ms/token wall, "
              f"{results['native_cpu_ms_per_token']:6.1f} ms/token CPU)")
        if args.json:
            from slmkit.paths import atomic_write_json

            atomic_write_json(args.json, results)
        return 0
    t_hf, t_native, run_native = best["hf"], best["native"], fns["native"]
    results.update(hf_tok_s=n / t_hf, native_tok_s=n / t_native, ratio=t_hf / t_native,
                   hf_ms_per_token=1000 * t_hf / n, native_ms_per_token=1000 * t_native / n,
                   same_greedy_tokens=run_native.out == run_hf.out)
    print(f"{args.shape}: {results['params'] / 1e6:.1f}M params, prompt {len(prompt)}, {n} new tokens, "
          f"{results['threads']} threads (best of {args.repeats})")
    print(f"  HF generate      {n / t_hf:7.1f} tok/s  ({1000 * t_hf / n:6.1f} ms/token)")
    print(f"  slmkit native    {n / t_native:7.1f} tok/s  ({1000 * t_native / n:6.1f} ms/token)   "
          f"ratio {t_hf / t_native:.2f}x   same tokens: {results['same_greedy_tokens']}")
    if args.compile:
        t_c = best["compiled"]
        results.update(compiled_tok_s=n / t_c, compiled_ratio=t_hf / t_c)
        print(f"  native+compile   {n / t_c:7.1f} tok/s  ({1000 * t_c / n:6.1f} ms/token)   ratio {t_hf / t_c:.2f}x")
    if args.onnx:
        from pathlib import Path

        from slmkit.export.onnx import export_graph, quantize_int8
        from slmkit.serve.onnx_backend import OnnxRuntime

        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "fp32").mkdir()
            (Path(tmp) / "int8").mkdir()
            export_graph(model, Path(tmp) / "fp32" / "model.onnx")
            quantize_int8(Path(tmp) / "fp32" / "model.onnx", Path(tmp) / "int8" / "model.onnx")
            fns_o = {k: timed_runtime(OnnxRuntime(Path(tmp) / k, threads=torch.get_num_threads())) for k in ("fp32", "int8")}
            best_o = best_of(fns_o, args.repeats)
            for k, t_o in best_o.items():
                agree = sum(a == b for a, b in zip(fns_o[k].out, run_hf.out)) / n
                results.update({f"onnx_{k}_tok_s": n / t_o, f"onnx_{k}_ratio": t_hf / t_o, f"onnx_{k}_token_agreement": agree})
                print(f"  onnxruntime {k}  {n / t_o:7.1f} tok/s  ({1000 * t_o / n:6.1f} ms/token)   ratio {t_hf / t_o:.2f}x   "
                      f"greedy tokens equal to HF: {agree:.0%}")
    if args.json:
        from slmkit.paths import atomic_write_json

        atomic_write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
