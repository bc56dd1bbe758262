"""`slmkit agent show`: a run's episode list, or one episode's trajectory as the model saw it."""

from __future__ import annotations

import json
from pathlib import Path

from slmkit.agents.groups import group_scores, group_table
from slmkit.errors import SlmkitError
from slmkit.paths import read_json


def load_records(run: str | Path) -> list[dict]:
    path = Path(run) / "trajectories.jsonl"
    if not path.exists():
        raise SlmkitError(f"{path}: not found (give a folder written by `slmkit agent run`)")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise SlmkitError(f"{path}:{lineno}: corrupt line (rerun `slmkit agent run` on this folder to repair it)") from None
    return sorted(records, key=lambda r: r.get("index", 0))


def _metrics(rec: dict) -> str:
    return " ".join(f"{k}={v:g}" for k, v in rec.get("metrics", {}).items()) or "no score"


def summary(records: list[dict], order=()) -> list[str]:
    """Means over the episodes saved so far, and per task type where tasks have one (ALFWorld)."""
    if not records:
        return ["no episodes yet"]
    keys = sorted({k for r in records for k in r.get("metrics", {})})
    means = ", ".join(f"{k} {100 * sum(r.get('metrics', {}).get(k, 0.0) for r in records) / len(records):.2f}" for k in keys)
    lines = [f"{len(records)} episodes: {means}"]
    groups = group_scores(records, "type", order)
    if groups:
        metric = "success" if "success" in keys else (keys[0] if keys else "")
        lines += ["", *group_table(groups, metric)]
    return lines


def episode_list(records: list[dict], order=()) -> str:
    lines = summary(records, order) + ["", f"{'#':>4}  {'task':<24} {'metrics':<18} steps invalid  end"]
    for r in records:
        lines.append(f"{r.get('index', '?'):>4}  {r['task_id']:<24} {_metrics(r):<18} {r.get('n_steps', 0):>5} "
                     f"{r.get('stats', {}).get('invalid_actions', 0):>7}  {r.get('end') or 'finished'}"
                     + (f"  ERROR {r['error']}" if r.get("error") else ""))
    return "\n".join(lines)


def episode_text(rec: dict, full_prompt: bool = False) -> str:
    info = rec.get("info", {})
    out = [f"episode {rec.get('index')}  {rec['task_id']}  ({rec.get('env')}, {rec.get('mode')})  {_metrics(rec)}  "
           f"steps {rec.get('n_steps')}  tokens {rec.get('n_tokens')}  {rec.get('seconds')} s  end: {rec.get('end') or 'finished'}"]
    if info:
        out.append("  " + "  ".join(f"{k}: {v!r}" for k, v in info.items()))
    if rec.get("error"):
        out.append(f"  ERROR {rec['error']}")
    pieces = rec.get("pieces", [])
    if pieces and pieces[0]["kind"] == "prompt" and not full_prompt:
        prompt = pieces[0]["text"]
        tail = prompt.rstrip("\n").rsplit("\n", 1)[-1]
        out.append(f"--- prompt: {len(prompt)} chars / {pieces[0]['n_tokens']} tokens of instruction + examples, ending:")
        out.append(tail)
        pieces = pieces[1:]
    out.append("--- trajectory (model text marked «»)")
    out.append("".join(f"«{p['text']}»" if p["kind"] == "model" else p["text"] for p in pieces).rstrip("\n"))
    out.append("--- steps")
    for s in rec.get("steps", []):
        calls = "; ".join(f"{c['prompt_tokens']}+{c['new_tokens']} tok {c['finish']} {c['seconds']}s" for c in s.get("calls", []))
        flag = " FORCED" if s.get("forced") else ""
        bad = f"  INVALID ({s.get('malformed')})" if s.get("invalid") else ""
        out.append(f"{s['i']:>2}{flag} action={s.get('action')!r}{bad}  [{calls}]")
    return "\n".join(out)


def show_run(run: str | Path, episode: str | None = None, full_prompt: bool = False) -> str:
    records = load_records(run)
    if episode is None:
        results = Path(run) / "results.json"  # a finished session's results name the group order
        order = tuple(read_json(results).get("per_type", {})) if results.is_file() else ()
        return episode_list(records, order)
    for r in records:
        if str(r.get("index")) == str(episode) or r["task_id"] == episode:
            return episode_text(r, full_prompt)
    raise SlmkitError(f"{run}: no episode {episode!r} (have {len(records)}: indexes "
                      f"{records[0].get('index') if records else '-'}..{records[-1].get('index') if records else '-'})")
