"""Reports for people: Markdown and HTML tables beside the published rows, plus a bar chart (PNG).

Every report lists the fallbacks a run used (e.g. HellaSwag/WinoGrande few-shot pools) and its
--limit, so a partial or non-standard run can never pass for a stock one.
"""

from __future__ import annotations

import html
from pathlib import Path

from slmkit.evaluate.suites import published
from slmkit.paths import atomic_write_bytes, atomic_write_text


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.2f}"


def table_rows(record: dict) -> tuple[list[str], list[list[str]]]:
    """Header and rows: task | setting | ours (n) | published models..."""
    pub = published()
    models = list(pub["models"])
    index = {name: i for i, name in enumerate(pub["tasks"])}
    header = ["task", "setting", record.get("label", "this run"), "n"] + models
    rows = []
    for s in record["scores"]:
        i = index.get(s["name"])
        mark = " †" if s.get("fallback") else ""
        shots = "default" if s["num_fewshot"] is None else s["num_fewshot"]
        setting = f"{shots}-shot {s['metric'].split(',')[0] if s['metric'] else ''}".strip()
        rows.append([s["name"], setting, _fmt(s["value"]) + mark, str(s["n"])]
                    + [_fmt(pub["models"][m]["scores"][i]) if i is not None else "—" for m in models])
    avg = record["average"]
    label = "**Average**" if avg["tasks"] == avg["of"] else f"**Average** ({avg['tasks']} of {avg['of']})"
    rows.append([label, "", _fmt(avg["value"]), ""] + [_fmt(pub["models"][m]["average"]) for m in models])
    return header, rows


def notes(record: dict) -> list[str]:
    m = record["manifest"]
    out = []
    if m.get("limit"):
        out.append(f"--limit {m['limit']}: at most {m['limit']} documents per (sub)task; not comparable to full-set published numbers.")
    for task, text in sorted((m.get("fallbacks") or {}).items()):
        out.append(f"† {task}: {text}.")
    out.append(f"Published rows: {published()['source']}.")
    for name, row in published()["models"].items():
        if row.get("note"):
            out.append(f"{name}: {row['note']}.")
    return out


def markdown(record: dict) -> str:
    m = record["manifest"]
    header, rows = table_rows(record)
    lines = [f"# {record.get('label', 'evaluation')}", "",
             f"suite `{m['suite']}` · backend `{m['backend']}` · lm-eval {m['lm_eval']} · slmkit {m['slmkit']} · "
             f"git {m.get('git_commit') or 'n/a'} · seed {m['seed']} · data {m['data']} · {record.get('wall_seconds', '?')} s", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    lines += [""] + [f"- {n}" for n in notes(record)]
    model_files = m.get("model", {}).get("files", {})
    for name, info in model_files.items():
        lines.append(f"- model file `{name}`: {info['bytes']:,} bytes, sha256 `{info['sha256'][:16]}…`")
    return "\n".join(lines) + "\n"


def html_report(record: dict, chart: str | None = "scores.png") -> str:
    header, rows = table_rows(record)
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{esc(c.replace('**', ''))}</td>" for c in r) + "</tr>" for r in rows)
    items = "".join(f"<li>{esc(n)}</li>" for n in notes(record))
    m = record["manifest"]
    img = f'<p><img src="{esc(chart)}" alt="scores" style="max-width:100%"></p>' if chart else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(record.get('label', 'evaluation'))}</title>"
            "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;"
            "padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}</style></head><body>"
            f"<h1>{esc(record.get('label', 'evaluation'))}</h1><p>suite {esc(m['suite'])} · backend {esc(m['backend'])} · "
            f"lm-eval {esc(str(m['lm_eval']))} · git {esc(str(m.get('git_commit')))} · seed {m['seed']}</p>"
            f"<table><tr>{head}</tr>{body}</table><ul>{items}</ul>{img}</body></html>\n")


def chart_png(record: dict) -> bytes:
    """Grouped bars: this run beside the published models, per task and the average."""
    import io

    from slmkit.plots import png_bytes, pyplot

    plt = pyplot()
    import numpy as np

    pub = published()
    index = {name: i for i, name in enumerate(pub["tasks"])}
    names = [s["name"] for s in record["scores"]] + ["Average"]
    series = {record.get("label", "this run"): [s["value"] or 0.0 for s in record["scores"]] + [record["average"]["value"] or 0.0]}
    for model, row in pub["models"].items():
        series[model] = [row["scores"][index[n]] if n in index else 0.0 for n in names[:-1]] + [row["average"]]
    x = np.arange(len(names))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 1.1), 4.5))
    for k, (label, vals) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, vals, width, label=label)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("score (%)")
    ax.legend(fontsize=8)
    ax.set_title(record.get("label", "evaluation"))
    return png_bytes(fig, dpi=110)


def write_all(record: dict, out: str | Path) -> dict[str, Path]:
    out = Path(out)
    paths = {"md": out / "report.md", "html": out / "report.html", "png": out / "scores.png"}
    atomic_write_text(paths["md"], markdown(record))
    atomic_write_bytes(paths["png"], chart_png(record))
    atomic_write_text(paths["html"], html_report(record, paths["png"].name))
    return paths
