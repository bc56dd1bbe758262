"""`slmkit export hf|gguf|onnx MODEL OUT`: each export checked against the torch fp32 model before it is kept."""

from __future__ import annotations

import argparse
import json

from slmkit.errors import SlmkitError


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def add_commands(subparsers) -> None:
    export = subparsers.add_parser("export", help="export a checkpoint: hf, gguf, onnx")
    sub = export.add_subparsers(dest="export_format", metavar="FORMAT")
    export.set_defaults(func=lambda args: (export.print_help(), 2)[1])
    add_hf_command(sub)
    add_gguf_command(sub)
    add_onnx_command(sub)


def add_hf_command(export_sub) -> None:
    p = export_sub.add_parser("hf", help="write a plain Hugging Face LlamaForCausalLM folder (µP folded in)")
    p.add_argument("model", help="slmkit checkpoint folder or HF Llama folder")
    p.add_argument("out")
    p.add_argument("--no-parity", action="store_true", help="skip the stock-transformers logit check")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max relative logit error allowed")
    p.set_defaults(func=_export_hf)


def _export_hf(args) -> int:
    from slmkit.export.parity import check_hf_parity
    from slmkit.model.hf import export_hf, load_any, tokenizer_dir_of

    from slmkit.export.parity import carry_gate_text

    model = load_any(args.model)
    out = export_hf(model, args.out, tokenizer_dir_of(args.model))
    carried = carry_gate_text(args.model, out)  # later GGUF/ONNX exports of the folder gate on the same text
    print(f"wrote {out}" + (f" (with the model's gate text {carried.name})" if carried else ""))
    if not args.no_parity:
        report = check_hf_parity(model, out, tolerance=args.tolerance)
        print(f"parity: max relative logit error {report['max_rel_error']:.2e} (≤ {args.tolerance:g}), "
              f"top-1 agreement {report['top1_agreement']:.4f}")
    return 0


def add_gguf_command(export_subparsers) -> None:
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
    _add_gate_text(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_run_export_gguf)


GATE_TEXT_HELP = ("UTF-8 text the parity gate measures perplexity/top-1 on (text the model knows). Default: the "
                  "held-out gate_text.txt stored with the model, else the built-in generic passage")


def _add_gate_text(p) -> None:
    p.add_argument("--gate-text", "--parity-text", dest="gate_text", default=None, metavar="FILE", help=GATE_TEXT_HELP)


def gate_line(parity: dict | None) -> str:
    """'gate text: ...' for the CLI line: which text the parity gate ran on."""
    gate = (parity or {}).get("gate_text") or {}
    return f"gate text: {gate['label']}" if gate.get("label") else "gate text: unknown"


def _run_export_gguf(args: argparse.Namespace) -> int:
    from slmkit.export.gguf import export_gguf

    bounds = {k: v for k, v in (("max_rel_err", args.max_rel_err), ("min_top1", args.min_top1),
                                ("max_ppl_ratio", args.max_ppl_ratio)) if v is not None}
    result = export_gguf(args.model, args.out, args.qtype, parity=not args.no_parity, bounds=bounds or None,
                         tokenizer_dir=args.tokenizer, tokenizer_pre=args.tokenizer_pre, n_threads=args.threads,
                         gate_text=args.gate_text)
    parity = result["parity"]
    if args.json:
        print(json.dumps({k: (str(v) if k == "path" else v) for k, v in result.items() if k != "parity"}
                         | {"parity": {k: v for k, v in (parity or {}).items() if k != "per_batch"}}, indent=2))
        return 0
    print(f"wrote {result['path']} ({result['type']}, {_fmt_bytes(result['bytes'])}; tensors {result['tensor_types']})")
    if parity:
        print(f"parity vs torch fp32: max rel err {parity['max_rel_err']:.3g}, top-1 {parity['top1_agreement']:.4f}, "
              f"ppl {parity['ppl_runtime']:.3f} vs {parity['ppl_reference']:.3f} (ratio {parity['ppl_ratio']:.4f}) "
              f"- passed; {gate_line(parity)}; report {result['path']}.parity.json")
    else:
        print("parity gate skipped (--no-parity)")
    return 0


BOUND_HELP = "int8 parity bound KEY=VALUE (max_rel_err, min_top1, max_ppl_ratio, max_mean_kl; 'none' drops it); repeatable"


def add_onnx_command(export_subparsers) -> None:
    p = export_subparsers.add_parser(
        "onnx", help="ONNX decoder with KV cache (ONNX Runtime / optimum names), parity-gated",
        description="Export an slmkit checkpoint or HF Llama folder to OUTDIR/model.onnx (+ config.json, tokenizer, "
                    "slmkit_onnx.json, parity.json). The float graph must match torch fp32 within 1e-4 relative; "
                    "--int8 adds int8 weights gated by top-1/perplexity bounds.")
    p.add_argument("model", help="slmkit checkpoint folder or HF Llama folder")
    p.add_argument("outdir", help="output folder (replaced atomically after the parity gate passes)")
    p.add_argument("--int8", action="store_true", help="int8 weights for every MatMul (see --int8-method)")
    p.add_argument("--int8-method", choices=("blockwise", "dynamic"), default="blockwise",
                   help="blockwise: 8-bit MatMulNBits, blocks of 32 (default, accurate); dynamic: quantize_dynamic "
                        "(faster, but loses accuracy on models with outlier activations)")
    p.add_argument("--per-tensor", action="store_true", help="--int8-method dynamic: one weight scale per tensor")
    p.add_argument("--bound", action="append", default=[], metavar="KEY=VALUE", help=BOUND_HELP)
    _add_gate_text(p)
    p.add_argument("--no-parity", action="store_true", help="skip the parity gate (not recommended)")
    p.add_argument("--exporter", choices=("auto", "dynamo", "torchscript"), default="auto",
                   help="torch.onnx exporter: dynamo, falling back to TorchScript (default auto)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset for the dynamo exporter (default 18)")
    p.set_defaults(func=run_onnx_export)


def parse_bounds(items: list[str]) -> dict[str, float | None]:
    from slmkit.export.parity import BOUND_KEYS

    bounds: dict[str, float | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in BOUND_KEYS:
            raise SlmkitError(f"--bound {item!r}: expected KEY=VALUE with KEY one of {', '.join(BOUND_KEYS)}")
        if value.strip().lower() in ("none", "off"):
            bounds[key] = None
            continue
        try:
            bounds[key] = float(value)
        except ValueError:
            raise SlmkitError(f"--bound {item!r}: value {value!r} is not a number") from None
    return bounds


def run_onnx_export(args: argparse.Namespace) -> int:
    from slmkit.export.onnx import export_onnx

    bounds = parse_bounds(args.bound)
    if bounds and not args.int8:
        raise SlmkitError("--bound applies to --int8 exports; the float export is always gated at 1e-4 relative")
    batches = None
    if args.gate_text and not args.no_parity:
        from slmkit.export.parity import gate_batches
        from slmkit.model.hf import tokenizer_dir_of
        from slmkit.model.tokenizer import load_tokenizer

        tok_dir = tokenizer_dir_of(args.model)
        if tok_dir is None:
            raise SlmkitError(f"{args.model}: --gate-text needs the model's tokenizer.json")
        vocab, max_len = _model_shape(args.model)
        batches = gate_batches(args.model, load_tokenizer(tok_dir), vocab, args.gate_text, max_len)
    record = export_onnx(args.model, args.outdir, int8=args.int8, parity=not args.no_parity, bounds=bounds,
                         exporter=args.exporter, per_channel=not args.per_tensor, opset=args.opset,
                         parity_batches=batches, int8_method=args.int8_method)
    line = f"wrote {args.outdir}/model.onnx ({record['dtype']}, {record['exporter']} exporter, {record['seconds']}s)"
    if "parity" in record:
        par, kv = record["parity"], record["kv_cache"]
        line += (f"; parity passed: max rel err {par['max_rel_err']:.2e}, top-1 {par['top1_agreement']:.4f}, "
                 f"ppl ratio {par['ppl_ratio']:.4f}; KV-cache path rel err {kv['max_rel_err']:.2e}; "
                 f"{gate_line(_onnx_report(args.outdir))}")
    else:
        line += "; parity gate skipped"
    print(line)
    return 0


def _onnx_report(outdir: str) -> dict | None:
    from pathlib import Path

    from slmkit.export.onnx import REPORT_FILE
    from slmkit.paths import read_json

    path = Path(outdir) / REPORT_FILE
    return read_json(path) if path.exists() else None


def _model_shape(model: str) -> tuple[int, int | None]:
    """(vocab size, max sequence length) from a checkpoint's slmkit.json or an HF folder's config.json."""
    from pathlib import Path

    from slmkit.model.checkpoint import is_checkpoint, read_meta
    from slmkit.paths import read_json

    if is_checkpoint(model):
        cfg = read_meta(model)["model"]
        return int(cfg["vocab_size"]), cfg.get("max_seq_len")
    cfg = read_json(Path(model) / "config.json", missing="missing (not an HF model folder)")
    return int(cfg["vocab_size"]), cfg.get("max_position_embeddings")
