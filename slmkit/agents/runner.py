"""`slmkit agent run`: one benchmark, one model, resumable, with trajectories, results and a report.

Files in the run folder:
- `config.json` — what the run is (benchmark, mode, model, backend, options, sampling); a rerun with a
  different config is refused, a rerun with the same config skips finished episodes;
- `trajectories.jsonl` — one line per finished episode (appended and fsynced as each ends; a torn last
  line from a killed run is dropped on resume): every piece of text with its token ids, each step's
  model output, action, observation, calls (prompt/new tokens, finish reason, seconds), metrics;
- `results.json`, `report.md`, `report.html`, `scores.png` — written at the end from the episodes of the
  selected tasks, in task order, so an interrupted-and-resumed run reports what one uninterrupted run does
  (scores: means over all episodes; `per_type`: the same per task type where tasks have one, ALFWorld);
- `runs.json` — one entry per session: episodes run, wall seconds, mean load average, engine counters.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Callable

from slmkit.agents.groups import group_scores
from slmkit.agents.react import Sampling, run_episodes
from slmkit.agents.registry import load_environment
from slmkit.errors import SlmkitError
from slmkit.paths import atomic_write_json, atomic_write_text, read_json

PRIMARY_METRIC = {"hotpotqa": "em", "fever": "em", "alfworld": "success", "webshop": "success"}
NOT_COMPARABLE = {
    "offline-distractor": "offline: 198 HotpotQA dev questions searched in their own distractor paragraphs "
                          "(not ReAct's 500-question sample on all of Wikipedia)",
    "closed-book": "closed-book: no Wikipedia text, the model answers with Thought + Finish only",
    "local-corpus": "tools over a local corpus, not live Wikipedia",
}


def published_rows() -> dict:
    return json.loads(resources.files("slmkit.agents").joinpath("published.json").read_text(encoding="utf-8"))


def _check_limit(limit) -> int | None:
    if limit is None:
        return None
    try:
        value = int(limit)
    except (TypeError, ValueError):
        raise SlmkitError(f"--limit {limit!r}: must be a whole number of episodes") from None
    if value < 1:
        raise SlmkitError(f"--limit {limit}: must be at least 1")
    return value


def resolve_model(model: str, backend: str | None) -> Path:
    """A model path, or a name `slmkit models pull` knows (its GGUF for llama.cpp, else its fp32 HF folder)."""
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve()
    from slmkit.hub import MODELS, list_models

    if model in MODELS:
        row = next(r for r in list_models() if r["name"] == model)
        folder = Path(row["path"])
        if backend in ("llama.cpp", "gguf") and row["cached"]:
            return folder / MODELS[model]["file"]
        if row["hf_dir"]:
            return folder / "hf"
        raise SlmkitError(f"model '{model}' is not pulled yet: run `slmkit models pull {model}`")
    raise SlmkitError(f"{model}: model not found (a checkpoint / HF folder / .gguf / ONNX folder, or a pulled model name)")


PREFIX_CACHE_MB = 1024  # an episode's whole trajectory stays cached between its steps: 8-16 episodes of 2-4k tokens


def load_llm(model: Path, backend: str | None, threads: int | None, naive: bool, parallel: int,
             prefix_cache_mb: float = PREFIX_CACHE_MB):
    from slmkit import serve
    from slmkit.agents.llm import AgentLLM, NaiveLLM

    name = serve.canonical(backend) if backend else serve.detect(model)
    opts: dict[str, Any] = {}
    if threads:
        opts["n_threads" if name == "llama.cpp" else "threads"] = int(threads)
    runtime = serve.load(model, name, **opts)
    if runtime.tokenizer is None:
        raise SlmkitError(f"{model}: no tokenizer next to the model (the agent loop works on token ids)")
    if naive:
        return NaiveLLM(runtime), name
    return AgentLLM(runtime, max_batch=parallel, engine_options={"prefix_cache_mb": prefix_cache_mb}), name


class _Trajectories:
    """Append-only, fsynced JSONL of finished episodes; a torn last line (killed run) is dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records: dict[str, dict] = {}
        if path.exists():
            good, lines = [], path.read_text(encoding="utf-8").splitlines(keepends=True)
            for line in lines:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    break  # torn write: everything after it is untrusted
                if not line.endswith("\n"):
                    break
                good.append(line)
                self.records[rec["task_id"]] = rec
            if len(good) != len(lines):
                atomic_write_text(path, "".join(good))

    def append(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records[record["task_id"]] = record


def run_agent(benchmark: str, model: str | Path | None, out_dir: str | Path, *, backend: str | None = None,
              limit: int | None = None, options: dict | None = None, parallel: int = 8, sampling: Sampling | None = None,
              threads: int | None = None, naive: bool = False, progress: bool = True, llm=None,
              prefix_cache_mb: float = PREFIX_CACHE_MB,
              on_episode: Callable[[dict], None] | None = None) -> dict:
    """Run (or resume) `benchmark` on `model`; returns results.json's content. `llm` replaces the model
    (tests: scripted outputs); `on_episode(record)` runs after each episode is saved."""
    limit = _check_limit(limit)
    if parallel < 1:
        raise SlmkitError(f"--parallel {parallel}: must be at least 1")
    if not prefix_cache_mb >= 0:
        raise SlmkitError(f"--prefix-cache-mb {prefix_cache_mb}: must be 0 (off) or more")
    sampling = sampling or Sampling()
    options = {k: v for k, v in (options or {}).items() if v is not None}
    model_path = resolve_model(str(model), backend) if llm is None else None
    env, fmt = load_environment(benchmark, **options)
    all_tasks = env.tasks()
    if limit is not None and limit > len(all_tasks):
        raise SlmkitError(f"--limit {limit}: {benchmark} ({env.mode}) has only {len(all_tasks)} tasks")
    tasks = all_tasks[:limit] if limit else all_tasks
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = {"benchmark": benchmark, "mode": env.mode, "comparable": env.comparable,
              "model": str(model_path) if model_path else getattr(llm, "name", "scripted"),
              "backend": backend, "options": {k: str(v) for k, v in options.items()}, "sampling": asdict(sampling),
              "naive": naive, "max_steps": fmt.max_steps}
    config_path = out / "config.json"
    if config_path.exists():
        old = read_json(config_path)
        if old != config:
            diff = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
            raise SlmkitError(f"{config_path}: this run folder holds a different run ({', '.join(diff)} differ); "
                              f"use another --out")
    else:
        atomic_write_json(config_path, config)
    store = _Trajectories(out / "trajectories.jsonl")
    todo = [t for t in tasks if t.id not in store.records]
    position = {t.id: i for i, t in enumerate(tasks)}
    t0 = time.perf_counter()
    backend_name = backend
    loads = [os.getloadavg()[0]]  # the machine's load as episodes end (shared machines: read timings with it)
    if todo:
        if llm is None:
            llm, backend_name = load_llm(model_path, backend, threads, naive, parallel, prefix_cache_mb)
        bar = _progress(len(tasks), len(tasks) - len(todo), benchmark, progress)
        done_steps = [0]
        log = _RunLog(out, backend_name)

        def saved(index: int, record: dict) -> None:
            loads.append(os.getloadavg()[0])
            record["index"] = position[todo[index].id]
            record["task"] = todo[index].data
            store.append(record)
            done_steps[0] += record.get("n_steps", 0)
            log.update(len(loads) - 1, time.perf_counter() - t0, sum(loads) / len(loads))  # a killed session keeps its time
            if bar is not None:
                key = PRIMARY_METRIC.get(benchmark)
                scores = [r["metrics"].get(key, 0.0) for r in store.records.values() if key]
                elapsed = max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix({key or "score": f"{100 * sum(scores) / max(len(scores), 1):.1f}",
                                 "steps/s": f"{done_steps[0] / elapsed:.2f}"}, refresh=False)
                bar.update(1)
            if on_episode is not None:
                on_episode(record)

        try:
            run_episodes(env, fmt, todo, llm, sampling, parallel=1 if naive else parallel, on_done=saved)
        finally:
            if bar is not None:
                bar.close()
    wall = time.perf_counter() - t0
    if todo:
        runs = log.update(len(todo), wall, sum(loads) / len(loads), _engine_summary(llm))
    else:
        runs = read_json(out / "runs.json") if (out / "runs.json").exists() else []
    records = [store.records[t.id] for t in tasks]
    results = summarize(benchmark, env, records, config, runs)
    atomic_write_json(out / "results.json", results)
    from slmkit.agents.report import write_report

    write_report(out, results)
    env.close()
    return results


def _progress(total: int, initial: int, name: str, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=f"agent {name}", unit="episode", dynamic_ncols=True)


def _engine_summary(llm) -> dict:
    """What the engine did for this session: prompt tokens sent, served by the prefix cache, prefilled."""
    stats = llm.engine_stats() if hasattr(llm, "engine_stats") else {}
    if not stats:
        return {}
    cache = stats.get("prefix_cache", {})
    return {"prompt_tokens": stats.get("prompt_tokens"), "cached_tokens": stats.get("cached_tokens"),
            "prefill_tokens": stats.get("prefill_tokens"), "generated_tokens": stats.get("generated_tokens"),
            "mean_rows_per_step": stats.get("mean_rows_per_step"), "prefix_cache_evicted": cache.get("evicted_blocks", cache.get("evicted"))}


class _RunLog:
    """This session's entry in runs.json, rewritten as episodes end (so a killed session's episodes and time
    still count in the resumed run's timing) and completed with the engine's counters at the end."""

    def __init__(self, out: Path, backend) -> None:
        self.path = out / "runs.json"
        self.previous = read_json(self.path) if self.path.exists() else []
        self.entry = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "episodes": 0, "seconds": 0.0, "backend": backend}

    def update(self, episodes: int, seconds: float, load: float, engine: dict | None = None) -> list[dict]:
        self.entry.update(episodes=episodes, seconds=round(seconds, 2), mean_load_average=round(load, 2))
        if engine:
            self.entry["engine"] = engine
        runs = self.previous + ([self.entry] if self.entry["episodes"] else [])
        atomic_write_json(self.path, runs)
        return runs


def summarize(benchmark: str, env, records: list[dict], config: dict, runs: list[dict]) -> dict:
    """Benchmark scores (means ×100), action statistics and timing from per-episode records."""
    n = len(records)
    keys = sorted({k for r in records for k in r.get("metrics", {})})
    scores = {k: round(100 * sum(r.get("metrics", {}).get(k, 0.0) for r in records) / max(n, 1), 2) for k in keys}
    stat = lambda key: sum(r.get("stats", {}).get(key, 0) for r in records)  # noqa: E731
    steps = sum(r.get("n_steps", 0) for r in records)
    wall = sum(r["seconds"] for r in runs) if runs else 0.0
    ends: dict[str, int] = {}
    reasons: dict[str, int] = {}
    for r in records:
        if r.get("end"):
            ends[r["end"]] = ends.get(r["end"], 0) + 1
        for s in r.get("steps", []):
            if s.get("invalid"):
                why = str(s.get("malformed") or "invalid")
                why = why.split("'")[0].strip() if why.startswith("unknown tool") else why
                reasons[why] = reasons.get(why, 0) + 1
    primary = PRIMARY_METRIC.get(benchmark, keys[0] if keys else None)
    note = None if env.comparable else (getattr(env, "not_comparable_because", None) or NOT_COMPARABLE.get(
        env.mode, f"mode '{env.mode}' is not comparable with published numbers"))
    return {
        "benchmark": benchmark, "mode": env.mode, "comparable": env.comparable, "not_comparable_because": note,
        "details": getattr(env, "details", {}), "config": config, "episodes": n, "primary_metric": primary,
        "scores": scores,
        "per_type": group_scores(records, "type", getattr(env, "group_order", ())),
        "stats": {
            "steps": steps, "mean_steps": round(steps / max(n, 1), 3),
            "invalid_actions": stat("invalid_actions"), "invalid_action_rate": round(stat("invalid_actions") / max(steps, 1), 4),
            "invalid_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
            "fallback_calls": stat("fallback_calls"), "length_stops": stat("length_stops"), "odd_text_actions": stat("odd_text"),
            "model_calls": stat("calls"), "generated_tokens": stat("generated_tokens"), "env_errors": stat("env_errors"),
            "episode_errors": sum(1 for r in records if r.get("error")), "episode_ends": ends,
        },
        "timing": {"wall_seconds": round(wall, 2), "episodes_per_hour": round(3600 * n / wall, 2) if wall else None,
                   "steps_per_second": round(steps / wall, 4) if wall else None, "sessions": runs},
        "published": [row for row in published_rows()["rows"] if benchmark in row],
        "published_source": published_rows()["source"],
    }
