"""CLI: `slmkit export gguf ...` and `slmkit models pull|list` (the lead wires these into slmkit.cli)."""

from __future__ import annotations

import argparse
import json


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def add_gguf_commands(export_subparsers) -> None:
    from slmkit.export.gguf import DIRECT_TYPES
    from slmkit.export.quantize import QUANT_TYPES

    p = export_subparsers.add_parser(
        "gguf", help="export to a llama.cpp GGUF (f32/f16/bf16 or a llama.cpp quant), parity-checked",
        description="Write MODEL (slmkit checkpoint or HF Llama folder) as a GGUF. Every export is compared with the "
                    "torch fp32 model in llama.cpp before it is kept; the report goes to OUT.gguf.parity.json.")
    p.add_argument("model", help="slmkit checkpoint folder or HF Llama folder")
    p.add_argument("out", help="output .gguf file")
    p.add_argument("--type", dest="qtype", default="f32", choices=[*DIRECT_TYPES, *QUANT_TYPES],
                   help="tensor type (default f32); quantized types are produced by llama.cpp's quantizer")
    p.add_argument("--no-parity", action="store_true", help="skip the parity gate (not recommended)")
    p.add_argument("--max-rel-err", type=float, default=None,
                   help="max relative logit error max|a-b|/max|a| (default 1e-4 for f32; per-type for others)")
    p.add_argument("--min-top1", type=float, default=None, help="min top-1 agreement with fp32 (quantized default per type)")
    p.add_argument("--max-ppl-ratio", type=float, default=None, help="max perplexity ratio vs fp32 (quantized default per type)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder when MODEL has no tokenizer.json")
    p.add_argument("--tokenizer-pre", default=None,
                   help="force llama.cpp's pre-tokenizer name (default: detected from tokenizer.json)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for quantization and the parity run")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run_export_gguf)


def _run_export_gguf(args: argparse.Namespace) -> int:
    from slmkit.export.gguf import export_gguf

    bounds = {k: v for k, v in (("max_rel_err", args.max_rel_err), ("min_top1", args.min_top1),
                                ("max_ppl_ratio", args.max_ppl_ratio)) if v is not None}
    result = export_gguf(args.model, args.out, args.qtype, parity=not args.no_parity, bounds=bounds or None,
                         tokenizer_dir=args.tokenizer, tokenizer_pre=args.tokenizer_pre, n_threads=args.threads)
    parity = result["parity"]
    if args.json:
        print(json.dumps({k: (str(v) if k == "path" else v) for k, v in result.items() if k != "parity"}
                         | {"parity": {k: v for k, v in (parity or {}).items() if k != "per_batch"}}, indent=2))
        return 0
    print(f"wrote {result['path']} ({result['type']}, {_fmt_bytes(result['bytes'])}; tensors {result['tensor_types']})")
    if parity:
        print(f"parity vs torch fp32: max rel err {parity['max_rel_err']:.3g}, top-1 {parity['top1_agreement']:.4f}, "
              f"ppl {parity['ppl_runtime']:.3f} vs {parity['ppl_reference']:.3f} (ratio {parity['ppl_ratio']:.4f}) "
              f"- passed; report {result['path']}.parity.json")
    else:
        print("parity gate skipped (--no-parity)")
    return 0


def add_models_commands(subparsers) -> None:
    models = subparsers.add_parser("models", help="pull pretrained small models into the cache")
    sub = models.add_subparsers(dest="models_command", metavar="ACTION")
    models.set_defaults(func=lambda args: (models.print_help(), 2)[1])
    pull = sub.add_parser("pull", help="download + verify a model's GGUF and dequantize it to an fp32 HF folder")
    pull.add_argument("name", help="model name (see `slmkit models list`)")
    pull.add_argument("--cache", default=None, help="cache folder (default: SLMKIT_CACHE or ~/.cache/slmkit)")
    pull.add_argument("--no-hf", action="store_true", help="only fetch the GGUF, skip the HF folder")
    pull.set_defaults(func=_run_pull)
    lst = sub.add_parser("list", help="known models and whether they are cached")
    lst.add_argument("--cache", default=None)
    lst.set_defaults(func=_run_list)


def _run_pull(args: argparse.Namespace) -> int:
    from slmkit.hub import pull

    info = pull(args.name, cache=args.cache, hf=not args.no_hf)
    print(f"{info['name']}: gguf {info['gguf']} (sha256 ok, from {info['source']})")
    if "hf_dir" in info:
        print(f"{info['name']}: hf   {info['hf_dir']}")
    return 0


def _run_list(args: argparse.Namespace) -> int:
    from slmkit.hub import list_models

    for row in list_models(args.cache):
        state = "cached" if row["cached"] else "not pulled"
        print(f"{row['name']:<24} {state:<11} {row['about']}")
    return 0
