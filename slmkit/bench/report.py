"""Bench reports for people: Markdown tables and PNG plots beside the JSON (all written atomically)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slmkit.paths import atomic_write_bytes, atomic_write_json, atomic_write_text


def _f(value, spec: str = ".2f", missing: str = "–") -> str:
    if value is None:
        return missing
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _short(model: str) -> str:
    p = Path(model)
    return p.parent.name if p.name == "checkpoint" else p.name


def _parity_cell(parity: dict | None) -> str:
    if not parity:
        return "–"
    bits = []
    if parity.get("ppl_ratio") is not None:
        bits.append(f"ppl×{parity['ppl_ratio']:.4f}")
    if parity.get("top1_agreement") is not None:
        bits.append(f"top1 {parity['top1_agreement']:.3f}")
    if parity.get("passed") is not None:
        bits.append("pass" if parity["passed"] else "FAIL")
    return ", ".join(bits) or "–"


def latency_markdown(report: dict[str, Any]) -> str:
    s, m = report["settings"], report["machine"]
    bw = m["bandwidth"]
    lines = [f"# {report['title']}", "",
             f"{m['cpu']}, {s['threads']} threads; prompt {s['prompt_tokens']} tokens, {s['new_tokens']} new tokens "
             f"(EOS ignored), median of {s['repeats']} repeats.",
             f"Copy bandwidth {bw['copy_gbps']} GB/s (read-only {bw['read_gbps']} GB/s; {bw['method']}); "
             f"load average at start {m.get('loadavg_at_start')}.", "",
             "| model | backend | type | file MB | load s | TTFT ms | prefill tok/s | decode tok/s | best decode "
             "| bound tok/s | decode/bound | peak RSS MB | parity |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        if not r.get("ok"):
            lines.append(f"| {_short(r['model'])} | {r['backend']} | {r.get('qtype', '')} | {_f(r.get('file_mb'), '.1f')} "
                         f"| | | | failed: {str(r.get('error'))[:120].replace('|', '/')} | | | | | |")
            continue
        lines.append(
            f"| {_short(r['model'])} | {r['backend']} | {r['qtype']} | {_f(r.get('file_mb'), '.1f')} | {_f(r.get('load_s'), '.1f')} "
            f"| {_f(r.get('ttft_ms'), '.0f')} | {_f(r.get('prefill_tok_s'), '.1f')} | {_f(r.get('decode_tok_s'), '.2f')} "
            f"| {_f(r.get('best_decode_tok_s'), '.2f')} | {_f(r.get('bound_tok_s'), '.1f')} | {_f(r.get('ratio_to_bound'), '.2f')} | {_f(r.get('peak_rss_mb'), '.0f')} "
            f"| {_parity_cell(r.get('parity'))} |")
    for model, entry in report.get("summary", {}).items():
        lines += ["", f"## {_short(model)}"]
        fast = entry.get("fastest_gguf")
        if fast:
            lines.append(f"- fastest GGUF type: **{fast['qtype']}** at {fast['decode_tok_s']} tok/s decode "
                         f"({_f(fast.get('ratio_to_bound'))} of its bound); parity: {_parity_cell(fast.get('parity'))}")
        for backend, best in entry.get("best_per_backend", {}).items():
            lines.append(f"- best {backend}: {best['qtype']} {best['decode_tok_s']} tok/s")
        for pair in entry.get("runtime_vs_raw_llama_cpp", []):
            lines.append(f"- LlamaCppRuntime vs raw llama-cpp-python ({pair['qtype']}): {pair['runtime_decode_tok_s']} vs "
                         f"{pair['raw_decode_tok_s']} tok/s decode = {pair['ratio']:.3f} "
                         f"({'within' if pair['within_5pct'] else 'outside'} 5%)")
    lines += ["", "Notes:"] + [f"- {n}" for n in report.get("notes", [])] + [""]
    return "\n".join(lines)


def latency_plot(report: dict[str, Any]) -> bytes:
    from slmkit.plots import png_bytes, pyplot

    plt = pyplot()

    rows = [r for r in report["results"] if r.get("ok") and r.get("decode_tok_s")]
    labels = [f"{_short(r['model'])[:24]} {r['backend']} {r['qtype']}" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(3.0, 0.45 * len(rows) + 1.5)))
    y = range(len(rows))
    ax1.barh(list(y), [r["decode_tok_s"] for r in rows], color="tab:blue", label="measured decode")
    ax1.scatter([r.get("bound_tok_s") or 0 for r in rows], list(y), marker="|", s=300, color="tab:red",
                label="bandwidth bound", zorder=3)
    ax1.set_yticks(list(y))
    ax1.set_yticklabels(labels, fontsize=8)
    ax1.invert_yaxis()
    ax1.set_xlabel("decode tokens/s")
    ax1.set_xscale("log")
    ax1.legend(fontsize=8, loc="lower right")
    ax1.set_title("decode speed vs bound")
    ax2.barh(list(y), [r.get("prefill_tok_s") or 0 for r in rows], color="tab:green")
    ax2.set_yticks(list(y))
    ax2.set_yticklabels([])
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("prefill tokens/s")
    ax2.set_title(f"prefill ({report['settings']['prompt_tokens']}-token prompt)")
    fig.tight_layout()
    return png_bytes(fig, tight=False)


def write_report(report: dict[str, Any], out_dir: Path, stem: str = "latency") -> dict[str, str]:
    out_dir = Path(out_dir)
    files = {"json": str(out_dir / f"{stem}.json"), "markdown": str(out_dir / f"{stem}.md"), "plot": str(out_dir / f"{stem}.png")}
    report["files"] = files
    if stem.startswith("shapes"):
        md, png = shapes_markdown(report), shapes_plot(report)
    else:
        md, png = latency_markdown(report), latency_plot(report)
    atomic_write_text(files["markdown"], md)
    atomic_write_bytes(files["plot"], png)
    atomic_write_json(files["json"], report)
    return files


# ---- shape sweep ------------------------------------------------------------------------------------

def shapes_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    lines = [f"# {report['title']}", "",
             f"Equal total parameters (~{s['params'] / 1e6:.1f}M incl. a {s['vocab_size']}-entry tied embedding), "
             f"backend {s['backend']}{' ' + s['qtype'] if s.get('qtype') else ''}, {s['threads']} threads, prompt "
             f"{s['prompt_tokens']}, {s['new_tokens']} new tokens, median of {s['repeats']}.", "",
             "| layers | d_model | heads/kv | d_ff | params M | non-emb M | TTFT ms | prefill tok/s | decode tok/s "
             "| ms/token | bound tok/s | decode/bound | peak RSS MB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["results"]:
        c = r["config"]
        dec = r.get("decode_tok_s")
        lines.append(f"| {c['n_layers']} | {c['d_model']} | {c['n_heads']}/{c['n_kv_heads']} | {c['d_ff']} "
                     f"| {r['params'] / 1e6:.2f} | {r['non_embedding_params'] / 1e6:.2f} | {_f(r.get('ttft_ms'), '.0f')} "
                     f"| {_f(r.get('prefill_tok_s'), '.0f')} | {_f(dec, '.1f')} | {_f(1000 / dec if dec else None, '.2f')} "
                     f"| {_f(r.get('bound_tok_s'), '.0f')} | {_f(r.get('ratio_to_bound'), '.2f')} "
                     f"| {_f(r.get('peak_rss_mb'), '.0f')} |" if r.get("ok") else
                     f"| {c['n_layers']} | {c['d_model']} | | | {r['params'] / 1e6:.2f} | | failed: "
                     f"{str(r.get('error'))[:100]} | | | | | | |")
    lines += ["", "Notes:"] + [f"- {n}" for n in report.get("notes", [])] + [""]
    return "\n".join(lines)


def shapes_plot(report: dict[str, Any]) -> bytes:
    from slmkit.plots import png_bytes, pyplot

    plt = pyplot()

    rows = [r for r in report["results"] if r.get("ok") and r.get("decode_tok_s")]
    depth = [r["config"]["n_layers"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(depth, [r["decode_tok_s"] for r in rows], "o-", label="decode tok/s")
    if any(r.get("bound_tok_s") for r in rows):
        ax1.plot(depth, [r.get("bound_tok_s") for r in rows], "s--", color="tab:red", label="bandwidth bound")
        ax1.set_yscale("log")
    for r in rows:
        ax1.annotate(f"d={r['config']['d_model']}", (r["config"]["n_layers"], r["decode_tok_s"]), fontsize=7,
                     textcoords="offset points", xytext=(3, 4))
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("layers (width shrinks to keep parameters equal)")
    ax1.set_ylabel("tokens/s")
    ax1.legend(fontsize=8)
    ax1.set_title("decode speed vs depth")
    ax2.plot(depth, [r.get("prefill_tok_s") for r in rows], "o-", color="tab:green")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("layers")
    ax2.set_ylabel("prefill tokens/s")
    ax2.set_title("prefill speed vs depth")
    fig.suptitle(report["title"], fontsize=10)
    fig.tight_layout()
    return png_bytes(fig, tight=False)
