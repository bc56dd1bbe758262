"""The deploy report: the menu (size, speed, score with CI, paired drop vs the reference), per-task
tables, the accuracy–latency Pareto front, the artifact to ship, and every failure named.

Pick rule: among artifacts with a measured decode speed and every task the reference has, the fastest
whose paired difference in the suite average has a CI lower bound ≥ −max_drop ("within max_drop points
of the reference, with 95% confidence"); the reference itself qualifies. A failed artifact or task is
shown as failed (never as a 0.0 score) and left out of the front.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

from slmkit.deploy import stats as st
from slmkit.deploy.docs import to_task_docs
from slmkit.paths import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json


# ---- numbers ---------------------------------------------------------------------------------------

def _docs_for(state, section: str, names: list[str], task: str) -> tuple[dict, dict[str, str]]:
    """{artifact: TaskDocs} for one task, and {artifact: why it has none}."""
    docs, why = {}, {}
    for name in names:
        rec = state.step(section, name, task)
        if not rec:
            why[name] = "not run"
            continue
        if rec.get("status") != "done":
            why[name] = f"failed: {rec.get('error')}"
            continue
        per_doc = Path(rec["dir"]) / "per_doc.json"
        try:
            d = to_task_docs(read_json(per_doc))
        except Exception as exc:  # noqa: BLE001 - a damaged per-document file costs this cell its CI only
            d, rec = None, {**rec, "stats_problem": f"{per_doc}: {exc}"}
        if d is None:
            why[name] = f"no CI: {rec.get('stats_problem') or 'no per-document values'}"
            continue
        docs[name] = d
    return docs, why


def task_table(state, section: str, names: list[str], task: str, reference: str, iters: int, seed: int,
               min_docs: int = st.MIN_CI_DOCS) -> dict:
    docs, why = _docs_for(state, section, names, task)
    cmp = st.compare_task(docs, reference if reference in docs else None, iters=iters, seed=seed,
                          min_docs=min_docs) if docs else \
        {"artifacts": {}, "replicates": {}, "documents": 0, "dropped_documents": 0}
    cells = {}
    for name in names:
        rec = state.step(section, name, task) or {}
        art = state.step("artifacts", name) or {}
        if art.get("status") != "ok":
            cells[name] = {"status": "failed", "error": "artifact failed (see the menu)"}
        elif name in cmp["artifacts"]:
            cells[name] = {"status": "ok", **cmp["artifacts"][name], "limit": rec.get("limit"),
                           "fallback": rec.get("fallback")}
        elif rec.get("status") == "done":  # scored, but no per-document values to put a CI on
            cells[name] = {"status": "ok", "score": rec.get("value"), "ci": None, "n": rec.get("n"),
                           "limit": rec.get("limit"), "note": why.get(name)}
        else:
            cells[name] = {"status": "failed" if rec else "not run", "error": rec.get("error") if rec else None}
    return {"cells": cells, "documents": cmp["documents"], "dropped_documents": cmp["dropped_documents"],
            "replicates": cmp["replicates"], "metric": next((c.get("metric") for c in [state.step(section, n, task) or {}
                                                                                    for n in names] if c.get("metric")), None)}


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names not dominated (another point at least as fast and as good, and better in one)."""
    front = []
    for name, (speed, score) in points.items():
        dominated = any(s2 >= speed and q2 >= score and (s2 > speed or q2 > score)
                        for other, (s2, q2) in points.items() if other != name)
        if not dominated:
            front.append(name)
    return sorted(front, key=lambda n: points[n][0])


def pick(menu: list[dict], reference: str, max_drop: float, ref_tasks: list[str]) -> dict:
    eligible, reasons = [], {}
    for row in menu:
        name = row["name"]
        speed = (row.get("latency") or {}).get("decode_tok_s")
        avg = row.get("average") or {}
        if row["status"] != "ok":
            reasons[name] = "failed"
            continue
        if not speed:
            reasons[name] = "no decode speed measured"
            continue
        if name == reference:
            if not avg:
                reasons[name] = "no task has enough documents for a CI"
                continue
            eligible.append(row)
            continue
        if not avg.get("diff_ci"):
            reasons[name] = "no paired CI (too few documents)"
            continue
        if sorted(avg.get("diff_tasks") or []) != sorted(ref_tasks):
            reasons[name] = "not scored on every task the reference has"
            continue
        if avg["diff_ci"][0] >= -max_drop:
            eligible.append(row)
        else:
            reasons[name] = f"CI lower bound {avg['diff_ci'][0]:+.2f} < −{max_drop:g}"
    if not eligible:
        return {"name": None, "reasons": reasons}
    best = max(eligible, key=lambda r: r["latency"]["decode_tok_s"])
    return {"name": best["name"], "reasons": reasons, "eligible": [r["name"] for r in eligible]}


def state_failures(state, names: list[str], entries, agent_names: list[str]) -> list[str]:
    """One line per failed step the state file records (exports, latency, tasks, agent runs)."""
    lines = []
    for n in names:
        art = state.step("artifacts", n) or {}
        if art.get("status") == "failed":
            lines.append(f"{n}: {art.get('error')}")
            continue
        lat = state.step("latency", n) or {}
        if lat and not lat.get("ok"):
            lines.append(f"{n}: latency bench failed: {lat.get('error')}")
        for e in entries:
            rec = state.step("evals", n, e.name) or {}
            if rec.get("status") == "error":
                lines.append(f"{n} × {e.name}: {rec.get('error')}")
        for b in agent_names:
            rec = state.step("agents", n, b) or {}
            if rec.get("status") == "error":
                lines.append(f"{n} × agent {b}: {rec.get('error')}")
    return lines


def build_report(state, specs, entries, agent_names: list[str], reference: str, cfg, failures: list[str]) -> dict:
    names = [s.name for s in specs]
    iters, seed = cfg.bootstrap, cfg.seed
    min_docs = getattr(cfg, "min_ci_docs", st.MIN_CI_DOCS)
    tasks = {e.name: task_table(state, "evals", names, e.name, reference, iters, seed, min_docs) for e in entries}
    avg = st.compare_average({t: {"artifacts": {n: c for n, c in r["cells"].items()
                                                if c.get("status") == "ok" and c.get("ci") is not None},
                                  "replicates": r["replicates"]} for t, r in tasks.items()}, names, reference)
    agents = {b: task_table(state, "agents", names, b, reference, iters, seed, min_docs) for b in agent_names}
    menu = []
    for spec in specs:
        art = state.step("artifacts", spec.name) or {"status": "not built"}
        lat = state.step("latency", spec.name) or {}
        par = art.get("parity") or {}
        menu.append({
            "name": spec.name, "kind": spec.kind, "backend": spec.backend, "status": art.get("status"),
            "error": art.get("error"), "path": art.get("path"), "bytes": art.get("bytes"),
            "parity": par or None, "gate_text": (par.get("gate_text") or {}).get("label"),
            "bounds_override": art.get("bounds_override"),
            "latency": {k: lat.get(k) for k in ("decode_tok_s", "prefill_tok_s", "ttft_ms", "peak_rss_mb", "bound_tok_s",
                                                "ratio_to_bound", "file_mb", "load_s", "loadavg_1m")} if lat.get("ok") else None,
            "latency_error": None if lat.get("ok") or not lat else lat.get("error"),
            "average": avg.get(spec.name),
        })
    ref_tasks = (avg.get(reference) or {}).get("tasks") or []
    points = {r["name"]: (r["latency"]["decode_tok_s"], r["average"]["score"]) for r in menu
              if r["status"] == "ok" and r.get("latency") and r["latency"].get("decode_tok_s") and r.get("average")
              and sorted(r["average"]["tasks"]) == sorted(ref_tasks)}
    machine = next((lat.get("machine") for lat in (state.step("latency", n) or {} for n in names) if lat.get("machine")), None)
    report = {
        "title": f"Deploy report: {Path(state.data['model']).parent.name if Path(state.data['model']).name == 'hf' else Path(state.data['model']).name}",
        "model": state.data["model"], "reference": reference, "max_drop": cfg.max_drop, "confidence": st.CONFIDENCE,
        "bootstrap_iters": iters, "seed": seed, "suite": cfg.suite, "min_ci_docs": min_docs, "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": machine, "threads": cfg.threads, "plan": state.data.get("plan"),
        "menu": menu,
        "tasks": {t: {k: v for k, v in r.items() if k != "replicates"} | {"task": e.task, "num_fewshot": e.num_fewshot}
                  for (t, r), e in zip(tasks.items(), entries)},
        "average": avg,
        "agents": {b: {k: v for k, v in r.items() if k != "replicates"} for b, r in agents.items()},
        "pareto": pareto_front(points),
        "pick": pick(menu, reference, cfg.max_drop, ref_tasks),
        "failures": list(dict.fromkeys(list(failures) + state_failures(state, names, entries, agent_names))),
        "seconds": round(sum(s.get("seconds") or 0 for s in state.data.get("sessions", [])), 1),
        "sessions": len(state.data.get("sessions", [])),
        "command": " ".join(["slmkit", "deploy", *(state.data["sessions"][-1].get("argv") or [])])
        if state.data.get("sessions") and state.data["sessions"][-1].get("argv") else None,
    }
    return report


# ---- text ------------------------------------------------------------------------------------------

def _n(v, spec=".2f") -> str:
    return "—" if v is None else format(v, spec)


def _signed(v) -> str:
    return "—" if v is None else f"{v:+.2f}".replace("-", "−")


def _ci(ci) -> str:
    return "" if not ci else f" [{ci[0]:.2f}, {ci[1]:.2f}]"


def _dci(ci) -> str:
    return "" if not ci else f" [{_signed(ci[0])}, {_signed(ci[1])}]"


def _cell(c: dict | None) -> str:
    if not c or c.get("status") == "not run":
        return "not run"
    if c.get("status") != "ok":
        return f"FAILED: {str(c.get('error'))[:80]}".replace("|", "/")
    return f"{_n(c.get('score'))}{_ci(c.get('ci'))}" + (" †" if c.get("fallback") else "") + (
        "" if c.get("ci") else f" (n={c.get('n')}: no CI)")


def _reason(error, path) -> str:
    """An error line without the artifact path it starts with (the row already names the artifact)."""
    text = str(error or "")
    head, sep, rest = text.partition(": ")
    if sep and ("/" in head or head.endswith((".gguf", "onnx-int8", "onnx-fp32"))):
        text = rest
    return text[:220].replace("|", "/")


def _dcell(c: dict | None) -> str:
    if not c or c.get("status") != "ok" or c.get("diff") is None:
        return "—"
    p = c.get("mcnemar_p")
    return f"{_signed(c['diff'])}{_dci(c.get('diff_ci'))}" + (f" p={p:.3g}" if p is not None else "") + (
        "" if c.get("diff_ci") else " (no CI)")


def pick_sentence(report: dict) -> str:
    p = report["pick"]
    ref = report["reference"]
    if not p.get("name"):
        why = "; ".join(f"{k}: {v}" for k, v in p.get("reasons", {}).items())
        return f"No artifact qualifies to ship ({why})."
    row = next(r for r in report["menu"] if r["name"] == p["name"])
    ref_row = next((r for r in report["menu"] if r["name"] == ref), None)
    lat, avg = row["latency"], row["average"]
    text = f"Ship **{p['name']}** ({row['backend']}): {lat['decode_tok_s']:.1f} tok/s decode"
    if ref_row and ref_row.get("latency") and p["name"] != ref:
        text += f" ({lat['decode_tok_s'] / ref_row['latency']['decode_tok_s']:.2f}× {ref})"
    if row.get("bytes") and ref_row and ref_row.get("bytes") and p["name"] != ref:
        text += f", {row['bytes'] / 1e6:.0f} MB ({ref_row['bytes'] / row['bytes']:.1f}× smaller)"
    if p["name"] == ref:
        text += f"; it is the reference (average {avg['score']:.2f}{_ci(avg['ci'])})"
    else:
        word = "worse than" if avg["diff"] < 0 else ("better than" if avg["diff"] > 0 else "from")
        text += (f"; average {abs(avg['diff']):.2f} points {word} {ref}, paired 95% CI {_dci(avg['diff_ci']).strip()} "
                 f"— within --max-drop {report['max_drop']:g}")
    return text + "."


def markdown(report: dict) -> str:
    from slmkit.evaluate.suites import published

    names = [r["name"] for r in report["menu"]]
    ref = report["reference"]
    m = report.get("machine") or {}
    lines = [f"# {report['title']}", "",
             f"Model `{report['model']}` · reference **{ref}** · suite `{report['suite']}` · {m.get('cpu', '?')}, "
             f"{report['threads']} threads · {report['seconds'] / 60:.0f} min over {report['sessions']} session(s) · "
             f"bootstrap {report['bootstrap_iters']} × (seed {report['seed']}), 95% percentile CIs", ""]
    if report.get("command"):
        lines += [f"`{report['command']}`", ""]
    lines += ["## The pick", "", pick_sentence(report), ""]
    reasons = report["pick"].get("reasons") or {}
    if reasons and report["pick"].get("name"):
        lines += ["Not picked: " + "; ".join(f"{k} ({v})" for k, v in reasons.items()) + ".", ""]
    lines += ["![accuracy vs decode speed](pareto.png)", "",
              "## The menu", "",
              "| artifact | backend | file MB | decode tok/s | prefill tok/s | TTFT ms | peak RSS MB | decode/bound "
              f"| parity gate | average [95% CI] | Δ vs {ref} [95% CI] | Pareto |",
              "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
    for r in report["menu"]:
        if r["status"] != "ok":
            lines.append(f"| {r['name']} | {r['backend']} | | | | | | | FAILED: {_reason(r.get('error'), r.get('path'))} "
                         f"| — | — | |")
            continue
        lat = r.get("latency") or {}
        par = r.get("parity") or {}
        gate = "n/a (source model)" if r["kind"] == "torch" else (
            f"ppl ×{par.get('ppl_ratio', 0):.4f}, top-1 {par.get('top1_agreement', 0):.3f} "
            f"({(par.get('gate_text') or {}).get('kind', '?')} text)" if par else "—")
        if r.get("bounds_override"):
            gate += " · bounds overridden: " + ", ".join(f"{k}={v}" for k, v in r["bounds_override"].items())
        avg = r.get("average") or {}
        tasks_note = "" if not avg or len(avg.get("tasks", [])) == len(report["tasks"]) else \
            f" ({len(avg.get('tasks', []))} of {len(report['tasks'])} tasks)"
        lat_cell = (lambda k, f: _n(lat.get(k), f)) if lat else (lambda k, f: "—")
        lines.append(
            f"| {r['name']}{' (ref)' if r['name'] == ref else ''} | {r['backend']} | {_n((r.get('bytes') or 0) / 1e6, '.1f')} "
            f"| {lat_cell('decode_tok_s', '.1f')} | {lat_cell('prefill_tok_s', '.0f')} | {lat_cell('ttft_ms', '.0f')} "
            f"| {lat_cell('peak_rss_mb', '.0f')} | {lat_cell('ratio_to_bound', '.2f')} | {gate} "
            f"| {_n(avg.get('score'))}{_ci(avg.get('ci'))}{tasks_note} "
            f"| {_signed(avg.get('diff')) if r['name'] != ref else '0 (reference)'}{_dci(avg.get('diff_ci'))} "
            f"| {'★ pick' if report['pick'].get('name') == r['name'] else ('front' if r['name'] in report['pareto'] else '')} |")
        if r.get("latency_error"):
            lines.append(f"| ↳ {r['name']} latency | | | FAILED: {str(r['latency_error'])[:120]} | | | | | | | | |")
    loads = [r["latency"]["loadavg_1m"] for r in report["menu"] if r.get("latency") and r["latency"].get("loadavg_1m")]
    cores = (report.get("machine") or {}).get("cores")
    if loads:
        text = (f"Latency measured in a fresh process per artifact at a 1-minute load average of "
                f"{min(loads):.1f}–{max(loads):.1f} on {cores or '?'} cores")
        if cores and max(loads) > cores:
            text += (": the machine was shared and oversubscribed, so absolute speeds are far below a quiet "
                     "machine's; artifacts measured at similar load are comparable with each other only roughly")
        lines += ["", text + "."]
    gates = {r.get("gate_text") for r in report["menu"] if r.get("gate_text")}
    if gates:
        lines += ["", "Parity gates ran on " + "; ".join(sorted(gates)) + "."]

    pub = published()
    pub_models = list(pub["models"])
    index = {n: i for i, n in enumerate(pub["tasks"])}
    lines += ["", "## Scores per task [95% CI]", "",
              "| task | setting | n | " + " | ".join(names) + " | " + " | ".join(f"{p} (published)" for p in pub_models) + " |",
              "|---|---|---:|" + "---|" * len(names) + "---:|" * len(pub_models)]
    for t, r in report["tasks"].items():
        setting = f"{'default' if r['num_fewshot'] is None else r['num_fewshot']}-shot {(r.get('metric') or '').split(',')[0]}"
        i = index.get(t)
        lines.append(f"| {t} | {setting} | {r['documents'] or '—'} | " + " | ".join(_cell(r["cells"].get(n)) for n in names)
                     + " | " + " | ".join(_n(pub["models"][p]["scores"][i]) if i is not None else "—" for p in pub_models) + " |")
    avg = report["average"]
    lines.append("| **Average** | | | " + " | ".join(
        (f"**{_n(avg[n]['score'])}**{_ci(avg[n]['ci'])}" + ("" if len(avg[n]["tasks"]) == len(report["tasks"])
                                                            else f" ({len(avg[n]['tasks'])} of {len(report['tasks'])})"))
        if n in avg else "—" for n in names) + " | " + " | ".join(_n(pub["models"][p]["average"]) for p in pub_models) + " |")

    others = [n for n in names if n != ref]
    if others:
        lines += ["", f"## Paired difference to {ref} on the same documents (points) [95% CI], McNemar exact p", "",
                  "| task | " + " | ".join(others) + " |", "|---|" + "---|" * len(others)]
        for t, r in report["tasks"].items():
            lines.append(f"| {t} | " + " | ".join(_dcell(r["cells"].get(n)) for n in others) + " |")
        lines.append("| **Average** | " + " | ".join(
            f"**{_signed(avg[n]['diff'])}**{_dci(avg[n].get('diff_ci'))}" if n in avg and avg[n].get("diff") is not None
            else "—" for n in others) + " |")
    if report.get("agents"):
        lines += ["", "## Agents [95% CI]", "", "| benchmark | metric | n | " + " | ".join(names) + " |",
                  "|---|---|---:|" + "---|" * len(names)]
        for b, r in report["agents"].items():
            lines.append(f"| {b} | {r.get('metric') or ''} | {r['documents'] or '—'} | "
                         + " | ".join(_cell(r["cells"].get(n)) + (f"; Δ {_dcell(r['cells'].get(n))}" if n != ref and
                                      (r['cells'].get(n) or {}).get('diff') is not None else "") for n in names) + " |")
    lines += _plan_lines(report)
    if report["failures"]:
        lines += ["", "## Failures", ""] + [f"- {f}" for f in report["failures"]]
    lines += ["", "## Notes", "",
              "- Every artifact is scored on the same documents (same `--limit`, seed, few-shot draws); a document's "
              "identity is checked by lm-eval's doc hash. CIs resample documents within each (sub)task; paired CIs "
              "apply the same draws to both artifacts. McNemar's exact test counts documents one artifact gets right "
              "and the other wrong (pooled over a group's subtasks; shown only where every document weighs the same).",
              "- The average is the unweighted mean of the task scores (Xmodel-2.5's headline); its CI combines the "
              "tasks' bootstrap replicates. A task with fewer than "
              f"{report.get('min_ci_docs', st.MIN_CI_DOCS)} documents gets no CI (a bootstrap of so few 0/1 values "
              "is degenerate) and is left out of the average's CI, the Pareto front and the pick.",
              "- Published rows are full-set numbers from the Xmodel-2.5 release; with a `--limit` ours use the first "
              "documents of each (sub)task and are not directly comparable. † few-shot fallback (see the eval folders).",
              f"- Pick rule: the fastest decode among artifacts whose paired average difference to {ref} has a 95% CI "
              f"lower bound ≥ −{report['max_drop']:g} points; decode speed from `slmkit bench latency` on this machine.",
              ""]
    return "\n".join(lines)


def _plan_lines(report: dict) -> list[str]:
    plan = report.get("plan") or {}
    if plan.get("mode") != "budget":
        limit = plan.get("limit")
        return ["", f"Documents: `--limit {limit}` per (sub)task." if limit else "", ""] if limit else []
    p = plan["precision"]
    lines = ["", f"## Budget: {plan['budget_minutes']:g} min", "",
             f"Pilot at `--limit {plan['pilot_limit']}` on every task and artifact; {plan['spent_before_plan_s'] / 60:.1f} min "
             f"spent before planning (exports, latency, pilot), {max(plan['left_for_plan_s'], 0) / 60:.1f} min left for "
             f"the rest. Documents per task ∝ 1/√(seconds per document) (minimises the variance of the average).", "",
             "| task | limit | documents | s/doc (all artifacts) | planned s | worst-case ±95% | measured ±95% (ref) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    cost = {c["name"]: c for c in plan.get("costs", [])}
    ref = report["reference"]
    for t, row in p["tasks"].items():
        cell = (report["tasks"].get(t) or {}).get("cells", {}).get(ref) or {}
        measured = (cell["ci"][1] - cell["ci"][0]) / 2 if cell.get("ci") else None
        lines.append(f"| {t} | {row['limit']}{' (all)' if row['full'] else ''} | {row['documents']} "
                     f"| {cost.get(t, {}).get('per_doc_s', 0):.2f} | {row['planned_seconds']:.0f} | ±{row['half_width']:.1f} "
                     f"| {'±' + format(measured, '.1f') if measured is not None else '—'} |")
    lines.append(f"| **Average** | | | | {p['planned_seconds']:.0f} | ±{p['average_half_width']} | "
                 + (f"±{(lambda a: (a['ci'][1] - a['ci'][0]) / 2)(report['average'][ref]):.1f}"
                    if report["average"].get(ref) else "—") + " |")
    lines.append("")
    lines.append("Worst case = a 0/1 metric at 50%; the measured half-widths are the reference's bootstrap CIs. Paired "
                 "differences are much tighter than either score when two artifacts agree on most documents.")
    return lines


def html_report(report: dict, markdown_text: str) -> str:
    """The Markdown tables as HTML (a small renderer: headings, tables, lists, paragraphs, the image)."""
    esc = html.escape
    out, table = [], []

    def inline(text: str) -> str:
        t = esc(text)
        import re

        t = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", t)
        t = re.sub(r"`(.+?)`", r"<code>\1</code>", t)
        return t

    def flush():
        if table:
            rows = [r for r in table if not set(r.replace("|", "").strip()) <= set("-: ")]
            head, body = rows[0], rows[1:]
            cells = lambda r: [c.strip() for c in r.strip().strip("|").split("|")]  # noqa: E731
            out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells(head)) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in cells(r)) + "</tr>" for r in body)
                       + "</table>")
            table.clear()

    for line in markdown_text.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush()
        if line.startswith("# "):
            out.append(f"<h1>{inline(line[2:])}</h1>")
        elif line.startswith("## "):
            out.append(f"<h2>{inline(line[3:])}</h2>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1:line.rindex(")")]
            out.append(f'<p><img src="{esc(src)}" alt="pareto" style="max-width:100%"></p>')
        elif line.startswith("- "):
            out.append(f"<ul><li>{inline(line[2:])}</li></ul>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return ("<!doctype html><html><head><meta charset='utf-8'><title>" + esc(report["title"]) + "</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
            "td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}th{background:#f4f4f4}</style></head><body>"
            + "\n".join(out) + "</body></html>\n")


# ---- the plot ----------------------------------------------------------------------------------------

def pareto_png(report: dict) -> bytes:
    from slmkit.plots import png_bytes, pyplot

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    rows = [r for r in report["menu"] if r["status"] == "ok" and r.get("latency") and r["latency"].get("decode_tok_s")
            and r.get("average")]
    sizes = [max(r.get("bytes") or 0, 1) / 1e6 for r in rows]
    biggest = max(sizes) if sizes else 1
    speeds = [r["latency"]["decode_tok_s"] for r in rows]
    if speeds and max(speeds) / max(min(speeds), 1e-9) > 4:
        ax.set_xscale("log")
    for i, (r, mb) in enumerate(zip(rows, sizes)):
        x, y = r["latency"]["decode_tok_s"], r["average"]["score"]
        lo, hi = r["average"]["ci"]
        front = r["name"] in report["pareto"]
        ax.errorbar([x], [y], yerr=[[y - lo], [hi - y]], fmt="none", ecolor="0.6", capsize=3, zorder=1)
        ax.scatter([x], [y], s=60 + 900 * mb / biggest, alpha=0.55, zorder=2,
                   color="tab:orange" if front else "tab:blue", edgecolors="k")
        ax.annotate(f"{r['name']}\n{mb:.0f} MB", (x, y), textcoords="offset points", fontsize=8,
                    xytext=(8, 6 if i % 2 == 0 else -22))  # alternate sides: equal scores do not overprint
    front = [r for r in rows if r["name"] in report["pareto"]]
    front.sort(key=lambda r: r["latency"]["decode_tok_s"])
    if len(front) > 1:
        ax.plot([r["latency"]["decode_tok_s"] for r in front], [r["average"]["score"] for r in front], "--",
                color="tab:orange", lw=1, label="Pareto front")
    chosen = report["pick"].get("name")
    for r in rows:
        if r["name"] == chosen:
            ax.scatter([r["latency"]["decode_tok_s"]], [r["average"]["score"]], marker="*", s=320, color="tab:red",
                       zorder=3, label=f"pick: {chosen}")
    failed = [r["name"] for r in report["menu"] if r["status"] != "ok"]
    missing = [r["name"] for r in report["menu"] if r["status"] == "ok" and r not in rows]
    note = []
    if failed:
        note.append("failed: " + ", ".join(failed))
    if missing:
        note.append("not plotted (no decode speed, or no average with a CI yet): " + ", ".join(missing))
    ax.set_xlabel("decode tokens/s (this machine, batch 1)")
    ax.set_ylabel("suite average (%) with 95% CI")
    ax.set_title(report["title"] + ("\n" + "; ".join(note) if note else ""), fontsize=10)
    if rows:
        ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return png_bytes(fig, dpi=110)


def write_report(report: dict, out: Path) -> dict[str, str]:
    out = Path(out)
    md = markdown(report)
    files = {"markdown": str(out / "report.md"), "html": str(out / "report.html"), "png": str(out / "pareto.png"),
             "json": str(out / "report.json")}
    atomic_write_bytes(files["png"], pareto_png(report))
    atomic_write_text(files["markdown"], md)
    atomic_write_text(files["html"], html_report(report, md))
    atomic_write_json(files["json"], report)
    return files


def summary_lines(report: dict) -> list[str]:
    """What the CLI prints at the end."""
    lines = [pick_sentence(report).replace("**", "")]
    for f in report["failures"]:
        lines.append(f"failed: {f}")
    return lines
