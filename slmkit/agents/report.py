"""Run reports: results.json → report.md, report.html and scores.png, our row beside the published ones."""

from __future__ import annotations

import html
from pathlib import Path

from slmkit.agents.groups import group_table
from slmkit.paths import atomic_write_text

LABELS = {"hotpotqa": "HotpotQA EM", "fever": "FEVER EM", "alfworld": "ALFWorld SR", "webshop": "WebShop SR"}


def _ours_label(results: dict) -> str:
    cfg = results["config"]
    return f"ours: {Path(str(cfg['model'])).name} ({run_backend(results)}, {results['mode']})"


def run_backend(results: dict) -> str:
    """The backend the run asked for, else the one its last session ran on (detected from the artifact)."""
    sessions = (results.get("timing") or {}).get("sessions") or [{}]
    return results["config"].get("backend") or sessions[-1].get("backend") or "auto"


def score_table(results: dict) -> list[list[str]]:
    bench, primary = results["benchmark"], results["primary_metric"]
    rows = [["model", LABELS.get(bench, f"{bench} {primary}"), "source"]]
    rows.append([_ours_label(results), f"{results['scores'].get(primary, 0.0):.2f}", f"{results['episodes']} episodes"])
    for row in results.get("published", []):
        rows.append([row["model"], f"{row[bench]:.2f}", row["group"]])
    return rows


def render_markdown(results: dict) -> str:
    s, t = results["stats"], results["timing"]
    lines = [f"# {results['benchmark']} — ReAct agent run", ""]
    if not results["comparable"]:
        lines += [f"> **Not comparable with ReAct's or Xmodel-2's numbers**: {results['not_comparable_because']}.", ""]
    lines += [f"- mode: `{results['mode']}`; episodes: {results['episodes']}; model: `{results['config']['model']}`",
              f"- scores: " + ", ".join(f"{k.upper()} {v:.2f}" for k, v in results["scores"].items()),
              f"- steps: {s['steps']} (mean {s['mean_steps']}); invalid actions {s['invalid_actions']} "
              f"({100 * s['invalid_action_rate']:.1f}% of steps); ReAct fallback calls {s['fallback_calls']}; "
              f"calls that hit the token budget {s['length_stops']}; episode errors {s['episode_errors']}",
              f"- episode ends: {s['episode_ends'] or '{}'}; invalid-action reasons: {s['invalid_reasons'] or '{}'}",
              f"- wall time {t['wall_seconds']} s; {t['episodes_per_hour']} episodes/h; {t['steps_per_second']} steps/s"
              + _load_note(t.get("sessions", [])), ""]
    table = score_table(results)
    lines += ["| " + " | ".join(table[0]) + " |", "|" + "---|" * len(table[0])]
    lines += ["| " + " | ".join(r) + " |" for r in table[1:]]
    if results.get("per_type"):
        lines += ["", f"Per task type ({results['primary_metric']}, % of the type's episodes):", ""]
        lines += group_table(results["per_type"], results["primary_metric"])
    lines += ["", f"Published rows: {results['published_source']}", "", "![scores](scores.png)", ""]
    return "\n".join(lines)


def _load_note(sessions: list[dict]) -> str:
    loads = [s["mean_load_average"] for s in sessions if s.get("mean_load_average") is not None]
    if not loads:
        return ""
    return f" (load average {min(loads):.1f}–{max(loads):.1f} while it ran: a shared machine's times)"


def render_html(results: dict) -> str:
    table = score_table(results)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in table[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in table[1:])
    warn = "" if results["comparable"] else \
        f"<p><b>Not comparable with ReAct's or Xmodel-2's numbers</b>: {html.escape(str(results['not_comparable_because']))}.</p>"
    stats = html.escape(str(results["stats"]))
    groups = results.get("per_type") or {}
    if groups:
        primary = results["primary_metric"]
        cells = "".join(f"<th>{html.escape(k)}</th>" for k in groups)
        vals = "".join(f"<td>{v.get(primary, 0.0):.2f} (n={v['episodes']})</td>" for v in groups.values())
        stats = f"</p><table><tr><th>type</th>{cells}</tr><tr><td>{html.escape(primary)}</td>{vals}</tr></table><p>" + stats
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(results['benchmark'])} agent run</title>"
            f"<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto}}td,th{{border:1px solid #ccc;padding:4px 8px}}"
            f"table{{border-collapse:collapse}}</style></head><body><h1>{html.escape(results['benchmark'])} — ReAct agent run</h1>"
            f"{warn}<p>mode <code>{html.escape(results['mode'])}</code>, {results['episodes']} episodes, scores "
            f"{html.escape(str(results['scores']))}</p><table><tr>{head}</tr>{body}</table><p>{stats}</p>"
            f"<p><img src='scores.png' alt='scores'></p><p>{html.escape(results['published_source'])}</p></body></html>\n")


def plot_scores(results: dict, path: Path) -> Path | None:
    try:
        from slmkit.plots import pyplot, save_png
    except ImportError:
        return None
    plt = pyplot()
    table = score_table(results)[1:]
    labels, values = [r[0] for r in table], [float(r[1]) for r in table]
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(labels) + 1.2))
    colors = ["#d62728"] + ["#1f77b4"] * (len(labels) - 1)
    ax.barh(range(len(labels)), values, color=colors)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(score_table(results)[0][1] + " (%)")
    title = f"{results['benchmark']}: ours vs published"
    if not results["comparable"]:
        title += " (ours not comparable: " + results["mode"] + ")"
    ax.set_title(title, fontsize=9)
    return save_png(fig, path)


def write_report(out: Path, results: dict) -> None:
    atomic_write_text(out / "report.md", render_markdown(results))
    atomic_write_text(out / "report.html", render_html(results))
    plot_scores(results, out / "scores.png")
