"""Edge latency at the Xmodel-2.5 1.3B shape on this CPU, without real weights.

Builds (once, cached) a random-weight model of the `xmodel2.5-1.3b` preset, exports it to GGUF f16 / q8_0 /
q4_k_m / q4_0 / iq4_nl and ONNX int8, and runs `bench_latency` on torch fp32, llama.cpp (every type, with
q4_0 and iq4_nl also in CPU_REPACK-only placement) and ONNX Runtime, plus raw llama-cpp-python on the
same files for the runtime-overhead ratio. Results: OUT/latency.{json,md,png}.

    python benchmarks/latency_xmodel25.py --out bench/xmodel25 [--prompt-tokens 128 --new-tokens 48 --repeats 2]

Needs ~24 GB free disk in the cache and ~12 GB RAM while exporting (the fp32 model is 5.4 GB); the torch
fp32 measurement peaks near 11 GB (the fast decoder keeps fused copies of the weights).
"""

from __future__ import annotations

import argparse
import json

from slmkit.bench.latency import bench_latency


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench/xmodel25")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--backends", default="torch,llama.cpp,onnxruntime")
    p.add_argument("--gguf-types", default="f16,q8_0,q4_k_m,q4_0,q4_0:repack,iq4_nl,iq4_nl:repack")
    p.add_argument("--raw-llama", default="q4_k_m,q4_0,q4_0:repack")
    p.add_argument("--random-parity", action="store_true",
                   help="also measure (ungated) parity of each export on the random weights (minutes per type at 1.3B)")
    p.add_argument("--also", nargs="*", default=[], help="more models to bench in the same run (e.g. a real small model)")
    args = p.parse_args()
    report = bench_latency(args.also, args.backends, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                           repeats=args.repeats, threads=args.threads, out_dir=args.out,
                           gguf_types=args.gguf_types.split(","), onnx_types=["int8"], preset="xmodel2.5-1.3b",
                           raw_llama=args.raw_llama.split(","), random_parity=args.random_parity, title="Xmodel-2.5 1.3B shape (random weights): latency on this CPU")
    print(json.dumps(report["summary"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
