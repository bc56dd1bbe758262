"""`slmkit export onnx MODEL OUTDIR [--int8]`: registered under `slmkit export` by slmkit.cli."""

from __future__ import annotations

import argparse

from slmkit.errors import SlmkitError

BOUND_HELP = "int8 parity bound KEY=VALUE (max_rel_err, min_top1, max_ppl_ratio, max_mean_kl; 'none' drops it); repeatable"


def add_onnx_commands(export_subparsers) -> None:
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
    p.add_argument("--parity-text", default=None, metavar="FILE",
                   help="gate on this UTF-8 text (in-domain held-out text) instead of the built-in generic passage")
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
    if args.parity_text:
        from pathlib import Path

        from slmkit.export.onnx import text_batches

        path = Path(args.parity_text)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SlmkitError(f"{path}: cannot read parity text ({exc.__class__.__name__})") from None
        batches = text_batches(args.model, text)
    record = export_onnx(args.model, args.outdir, int8=args.int8, parity=not args.no_parity, bounds=bounds,
                         exporter=args.exporter, per_channel=not args.per_tensor, opset=args.opset,
                         parity_batches=batches, int8_method=args.int8_method)
    line = f"wrote {args.outdir}/model.onnx ({record['dtype']}, {record['exporter']} exporter, {record['seconds']}s)"
    if "parity" in record:
        par, kv = record["parity"], record["kv_cache"]
        line += (f"; parity passed: max rel err {par['max_rel_err']:.2e}, top-1 {par['top1_agreement']:.4f}, "
                 f"ppl ratio {par['ppl_ratio']:.4f}; KV-cache path rel err {kv['max_rel_err']:.2e}")
    else:
        line += "; parity gate skipped"
    print(line)
    return 0
