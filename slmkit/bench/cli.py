"""`slmkit bench latency ...` and `slmkit bench shapes ...` (registered by slmkit.cli)."""

from __future__ import annotations

import argparse
from pathlib import Path

from slmkit.errors import SlmkitError


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def add_commands(subparsers) -> None:
    bench = subparsers.add_parser("bench", help="latency benchmarks: per-backend latency, equal-size shape sweep")
    sub = bench.add_subparsers(dest="bench_command", metavar="BENCH")
    bench.set_defaults(func=lambda args: (bench.print_help(), 2)[1])

    lat = sub.add_parser("latency", help="TTFT, prefill/decode tok/s, peak RSS, size vs the bandwidth bound per backend",
                         description="Each (artifact, backend) runs in a fresh process. Model folders are exported to the "
                         "requested GGUF/ONNX types (cached); .gguf files and ONNX folders run as they are.")
    lat.add_argument("models", nargs="*", metavar="MODEL", help="slmkit checkpoint / HF folder / .gguf / ONNX folder")
    lat.add_argument("--backends", default="torch,llama.cpp,onnxruntime",
                     help="comma list of torch, llama.cpp, onnxruntime, ort-genai (default: the first three)")
    lat.add_argument("--preset", default=None, help="also bench a random-weight model of this preset's shape (e.g. xmodel2.5-1.3b)")
    lat.add_argument("--prompt-tokens", type=int, default=512)
    lat.add_argument("--new-tokens", type=int, default=128)
    lat.add_argument("--repeats", type=int, default=3)
    lat.add_argument("--threads", type=int, default=2)
    lat.add_argument("--gguf-types", default="f16,q8_0,q4_k_m", help="GGUF types for llama.cpp, e.g. f16,q8_0,q4_k_m,q4_0,iq4_nl; TYPE:norepack runs the same file with llama.cpp's extra (AMX/repack) buffers off, TYPE:repack with only the CPU_REPACK buffer (no AMX)")
    lat.add_argument("--onnx-types", default="int8", help="ONNX variants: int8 and/or fp32")
    lat.add_argument("--genai-types", default="int4",
                     help="ort-genai: ONNX Runtime GenAI model-builder precisions for a model folder: int4, int8, fp32 "
                          "(an ONNX folder with genai_config.json runs as it is)")
    lat.add_argument("--raw-llama", default="all", help="GGUF types also timed with raw llama-cpp-python: all, none or a list")
    lat.add_argument("--no-extra-bufts", action="store_true",
                     help="llama.cpp: disable repacked/AMX weight buffers (compare repacked vs plain q4_0)")
    lat.add_argument("--no-parity", action="store_true", help="skip exporters' parity gates (always off for random-weight models)")
    lat.add_argument("--no-random-parity", action="store_true",
                     help="random-weight models: skip the ungated parity measurement of each export")
    lat.add_argument("--timeout", type=float, default=3600, help="seconds per measurement process (default 3600)")
    lat.add_argument("--bandwidth-mb", type=int, default=512, help="buffer size of the bandwidth measurement (default 512 MB)")
    lat.add_argument("--out", default="bench_latency", help="output folder for latency.json/.md/.png (default bench_latency/)")
    lat.set_defaults(func=run_latency)

    shp = sub.add_parser("shapes", help="equal-parameter models at several depths: decode latency vs depth/width")
    shp.add_argument("--params", default="20M", help="total parameters incl. the tied embedding (default 20M)")
    shp.add_argument("--vocab", type=int, default=32000, help="fixed vocabulary size (default 32000)")
    shp.add_argument("--depths", default="4,8,12,16,24,32", help="layer counts (default 4,8,12,16,24,32)")
    shp.add_argument("--backend", default="torch", help="torch, llama.cpp or onnxruntime (default torch)")
    shp.add_argument("--type", dest="qtype", default=None, help="artifact type (llama.cpp: f16 default; onnx: int8 default)")
    shp.add_argument("--prompt-tokens", type=int, default=128)
    shp.add_argument("--new-tokens", type=int, default=64)
    shp.add_argument("--repeats", type=int, default=3)
    shp.add_argument("--threads", type=int, default=2)
    shp.add_argument("--out", default="bench_shapes", help="output folder for shapes.json/.md/.png (default bench_shapes/)")
    shp.set_defaults(func=run_shapes)


def run_latency(args: argparse.Namespace) -> int:
    from slmkit.bench.latency import bench_latency

    if not args.models and not args.preset:
        raise SlmkitError("bench latency: give at least one MODEL or --preset NAME")
    raw = _csv(args.raw_llama) or ["none"]
    report = bench_latency(args.models, args.backends, prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens,
                           repeats=args.repeats, threads=args.threads, out_dir=Path(args.out),
                           gguf_types=_csv(args.gguf_types), onnx_types=_csv(args.onnx_types), preset=args.preset,
                           parity=not args.no_parity, raw_llama=raw,
                           llama_options={"extra_bufts": False} if args.no_extra_bufts else None,
                           timeout_s=args.timeout, bandwidth_mb=args.bandwidth_mb,
                           random_parity=not args.no_random_parity, genai_types=_csv(args.genai_types))
    print(Path(report["files"]["markdown"]).read_text())
    failed = [r for r in report["results"] if not r.get("ok")]
    return 1 if failed and len(failed) == len(report["results"]) else 0


def run_shapes(args: argparse.Namespace) -> int:
    from slmkit.bench.shapes import bench_shapes

    try:
        depths = [int(d) for d in _csv(args.depths)]
    except ValueError:
        raise SlmkitError(f"--depths: {args.depths!r} is not a comma list of integers") from None
    report = bench_shapes(args.params, depths, vocab_size=args.vocab, backend=args.backend, qtype=args.qtype,
                          prompt_tokens=args.prompt_tokens, new_tokens=args.new_tokens, repeats=args.repeats,
                          threads=args.threads, out_dir=Path(args.out))
    print(Path(report["files"]["markdown"]).read_text())
    return 0
