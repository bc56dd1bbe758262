"""`slmkit demo` stages for edge export: GGUF q8_0 + q4_k_m and ONNX int8, each parity-gated."""

from __future__ import annotations

from pathlib import Path


def _in_domain_batches(ctx: dict, n: int = 4, seq_len: int = 96) -> list[list[int]]:
    """Parity inputs the demo model knows (held-out synthetic problems): on generic text a tiny in-domain
    model is near-uniform and quantized top-1 flips are noise, not signal."""
    from slmkit.corpus.synthetic import heldout_problems
    from slmkit.model.tokenizer import load_tokenizer

    tok = load_tokenizer(ctx["checkpoint"])
    ids: list[int] = []
    for p in heldout_problems(40):
        ids += tok.encode(p.text() + (tok.eos_token or ""), add_special_tokens=False)
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]


def demo_gguf(ctx: dict) -> dict:
    from slmkit.export.gguf import export_gguf

    out: dict = {}
    ctx.setdefault("artifacts", {})
    for qtype in ("q8_0", "q4_k_m"):
        path = ctx["run_dir"] / "gguf" / f"demo-{qtype}.gguf"
        result = export_gguf(ctx["checkpoint"], path, qtype=qtype, parity_batches=_in_domain_batches(ctx))
        parity = result.get("parity") or {}
        out[qtype] = {"bytes": result["bytes"], "max_rel_err": parity.get("max_rel_err"),
                      "top1_agreement": parity.get("top1_agreement"), "ppl_ratio": parity.get("ppl_ratio")}
        ctx["artifacts"][f"gguf-{qtype}"] = path
    lines = ["| type | bytes | max rel logit err | top-1 agreement | ppl ratio |", "|---|---|---|---|---|"]
    for q, r in out.items():
        lines.append(f"| {q} | {r['bytes']:,} | {r['max_rel_err']:.3g} | {r['top1_agreement']:.3f} | {r['ppl_ratio']:.4f} |")
    return {"types": out, "table_md": "\n".join(lines)}


def demo_onnx(ctx: dict) -> dict:
    from slmkit.export.onnx import export_onnx

    folder = ctx["run_dir"] / "onnx-int8"
    record = export_onnx(ctx["checkpoint"], folder, int8=True, parity_batches=_in_domain_batches(ctx))
    ctx.setdefault("artifacts", {})["onnx-int8"] = folder
    parity = record.get("parity") or {}
    size = sum(p.stat().st_size for p in Path(folder).glob("model.onnx*"))
    return {"path": str(folder), "bytes": size, "exporter": record.get("exporter"),
            "max_rel_err": parity.get("max_rel_err"), "top1_agreement": parity.get("top1_agreement"),
            "ppl_ratio": parity.get("ppl_ratio")}
