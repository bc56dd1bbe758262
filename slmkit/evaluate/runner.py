"""Run a suite through lm-eval's own evaluator and write results.json, samples.jsonl and the reports.

`run_eval` builds the suite's tasks (stock configs, local documents, sandboxed code metric), sets each
entry's shots, wraps the chosen backend as an lm-eval model, and calls `lm_eval.simple_evaluate` with
the request cache in the run folder (rerunning the same command resumes where it stopped).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.evaluate import manifest as manifest_mod
from slmkit.evaluate.suites import Suite, SuiteTask, load_suite, select
from slmkit.paths import atomic_write_json, atomic_write_text
from slmkit.serve.backends import BACKENDS as SERVE_BACKENDS, canonical, detect

SEED = 1234  # lm-eval's default seeds (fewshot, random)
# the serve vocabulary, plus lm-eval's own `hf` model as the reference implementation to compare against
BACKENDS = {**{name: desc for name, (_, desc) in SERVE_BACKENDS.items()},
            "lm-eval-hf": "lm-eval's own `hf` model (stock transformers), the reference"}


def eval_backend(name: str | None, model: str) -> str:
    """The backend name in the one vocabulary (default: detected from the artifact)."""
    return canonical(name, BACKENDS) if name else detect(model)


def make_lm(backend: str, model: str, batch_size: int | None = None, threads: int | None = None,
            tokenizer: str | None = None):
    """An lm-eval LM for `backend`: our torch / llama.cpp / onnxruntime runtimes, a served model (remote: an
    OpenAI-compatible URL, with its tokenizer folder), lm-eval's own vllm, or the stock `hf` reference.

    threads: CPU threads for torch, llama.cpp (decode and prompt) and onnxruntime; None = the runtime's default."""
    backend = canonical(backend, BACKENDS)
    if backend != "remote" and not Path(model).exists():
        raise SlmkitError(f"{model}: model not found (an HF folder, slmkit checkpoint, .gguf file or ONNX folder)")
    from slmkit.evaluate import lm

    if backend == "remote":
        if tokenizer is not None and not Path(tokenizer).is_dir():
            raise SlmkitError(f"--tokenizer {tokenizer}: not a folder")
        return lm.RemoteLM(str(model), batch_size=batch_size, tokenizer=tokenizer)
    if backend == "torch":
        return lm.TorchLM(str(model), batch_size=batch_size or 8, threads=threads)
    if backend == "llama.cpp":
        return lm.LlamaCppLM(str(model), batch_size=batch_size, **({"n_threads": threads} if threads else {}))
    if backend == "onnxruntime":
        return lm.OnnxRuntimeLM(str(model), batch_size=batch_size, **({"threads": threads} if threads else {}))
    if backend not in ("lm-eval-hf", "vllm"):
        raise SlmkitError(f"backend '{backend}' does not evaluate (eval backends: torch, llama.cpp, onnxruntime, "
                          "remote, vllm, lm-eval-hf)")
    from lm_eval.api.registry import get_model

    name = "hf" if backend == "lm-eval-hf" else "vllm"
    try:
        cls = get_model(name)
    except Exception as exc:  # noqa: BLE001 - registry raises various errors when the extra is missing
        raise SlmkitError(f"backend '{backend}' is unavailable ({exc}); vllm needs a GPU and `pip install slmkit[vllm]`") from None
    args = {"pretrained": str(model), "dtype": "float32" if backend == "lm-eval-hf" else "auto"}
    if backend == "lm-eval-hf":
        args.update(device="cpu", batch_size=batch_size or 1)
    return cls(**args)


def build_tasks(entries: list[SuiteTask], data: str):
    """(task manager, top-level Task/Group objects, {entry name: leaf task names})."""
    from slmkit.evaluate.tasks import make_task_manager

    tm = make_task_manager(data)
    objects, leaves = [], {}
    for entry in entries:
        if entry.task not in tm.all_tasks:
            raise SlmkitError(f"unknown lm-eval task '{entry.task}' (see `lm_eval ls tasks` for names)")
        loaded = tm.load([entry.task])
        for task in loaded["tasks"].values():
            if entry.num_fewshot is not None:
                task.set_config(key="num_fewshot", value=entry.num_fewshot)
        top = loaded["groups"].get(entry.task) or loaded["tasks"].get(entry.task)
        objects.extend([top] if top is not None else list(loaded["tasks"].values()))
        leaves[entry.name] = sorted(loaded["tasks"])
    return tm, objects, leaves


def run_eval(model: str, suite: str | Suite = "xmodel13", tasks: str | list[str] | None = None, backend: str | None = None,
             limit: int | float | None = None, out: str | Path | None = None, data: str = "auto", seed: int = SEED,
             batch_size: int | None = None, use_cache: bool = True, lm=None, label: str | None = None,
             write_reports: bool = True, threads: int | None = None, tokenizer: str | None = None) -> dict:
    """Evaluate `model` on the suite (or the chosen tasks); returns the results record (also written to `out`).
    `model` may be a server URL (backend remote; `tokenizer`: the served model's tokenizer folder)."""
    import lm_eval
    from lm_eval.tasks import TaskManager  # noqa: F401 - import early: clear error if lm-eval is missing

    from slmkit.evaluate.tasks import finalize_records

    backend = eval_backend(backend, model)
    if lm is None and detect(model) != "remote" and not Path(model).exists():  # before lm-eval's slow imports
        raise SlmkitError(f"{model}: model not found (an HF folder, slmkit checkpoint, .gguf file or ONNX folder)")
    os.environ.setdefault("HF_ALLOW_CODE_EVAL", "0")  # stock code_eval is never used: ours is sandboxed
    suite_obj = suite if isinstance(suite, Suite) else load_suite(suite)
    entries = select(suite_obj, tasks)
    stem = "remote" if detect(model) == "remote" else Path(str(model)).stem
    out = Path(out) if out else Path("runs") / f"{stem}-{backend}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    import datasets

    datasets.disable_progress_bars()  # lm-eval's own bars (requests, model calls) stay
    tm, objects, leaves = build_tasks(entries, data)
    lm = lm or make_lm(backend, model, batch_size, threads, tokenizer)
    t0 = time.time()
    res = lm_eval.simple_evaluate(
        model=lm, tasks=objects, task_manager=tm, limit=limit, log_samples=True, bootstrap_iters=1000,
        use_cache=str(out / "requests_cache") if use_cache else None, confirm_run_unsafe_code=True,
        random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed)
    wall = time.time() - t0
    if res is None:
        raise SlmkitError("lm-eval returned no results (non-zero rank?)")
    all_tasks = {}
    for obj in objects:
        for t in (obj.get_all_tasks() if hasattr(obj, "get_all_tasks") else [obj]):
            all_tasks[t.task_name] = t
    records = finalize_records(tm.slmkit_records, all_tasks)
    record = {
        "label": label or f"{Path(str(model)).name} [{backend}]",
        "manifest": manifest_mod.build(backend=backend, model=str(model), seed=seed, limit=limit,
                                       suite=suite_obj.name, data_mode=data, tasks=records),
        "wall_seconds": round(wall, 1),
        "scores": scores_from(res, entries, leaves, records),
    }
    record["average"] = average(record["scores"], len(entries))
    record["lm_eval"] = {k: res.get(k) for k in ("results", "groups", "group_subtasks", "n-shot", "n-samples", "versions", "higher_is_better")}
    record["lm_eval"]["configs"] = {k: _jsonable(v) for k, v in (res.get("configs") or {}).items()}
    atomic_write_json(out / "results.json", record)
    write_samples(out / "samples.jsonl", res.get("samples") or {})
    if write_reports:
        from slmkit.evaluate import report

        report.write_all(record, out)
    record["out"] = str(out)
    return record


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def scores_from(res: dict, entries: list[SuiteTask], leaves: dict[str, list[str]], records: dict[str, dict]) -> list[dict]:
    """One row per suite entry: the reported metric (×100), its stderr, sample count, fallbacks."""
    table = {**(res.get("results") or {}), **(res.get("groups") or {})}
    rows = []
    for e in entries:
        r = table.get(e.task, {})
        key = e.key or next((k for k in r if "," in k and not k.split(",")[0].endswith("_stderr")), "")
        value = r.get(key)
        stderr = r.get(key.replace(",", "_stderr,", 1)) if key else None
        n = sum(int((res.get("n-samples") or {}).get(t, {}).get("effective", 0)) for t in leaves.get(e.name, []))
        fallbacks = sorted({records[t]["fallback"] for t in leaves.get(e.name, []) if records.get(t, {}).get("fallback")})
        rows.append({
            "name": e.name, "task": e.task, "num_fewshot": e.num_fewshot, "metric": key,
            "value": None if not isinstance(value, (int, float)) else round(100.0 * value, 2),
            "stderr": None if not isinstance(stderr, (int, float)) else round(100.0 * stderr, 2),
            "n": n, "fallback": fallbacks[0] if fallbacks else None,
        })
    return rows


def average(scores: list[dict], expected: int) -> dict:
    vals = [s["value"] for s in scores if s["value"] is not None]
    return {"value": round(sum(vals) / len(vals), 2) if vals else None, "tasks": len(vals), "of": expected}


def write_samples(path: Path, samples: dict) -> None:
    """Per-sample JSON Lines: task, doc id, prompt arguments, responses, filtered responses, metrics."""
    lines = []
    for task, rows in samples.items():
        for s in rows:
            row = {"task": task}
            row.update({k: s.get(k) for k in ("doc_id", "target", "arguments", "resps", "filtered_resps", "filter",
                                                "metrics", "doc_hash", "prompt_hash")})
            for m in s.get("metrics") or []:
                row[m] = s.get(m)
            lines.append(json.dumps(row, default=str, ensure_ascii=False))
    atomic_write_text(path, "\n".join(lines) + ("\n" if lines else ""))


def combine(records: list[dict], label: str, expected: int | None = None) -> dict:
    """One record from per-task runs of the same model/backend (a suite run task by task)."""
    if not records:
        raise SlmkitError("combine: no runs to combine")
    base = json.loads(json.dumps(records[0], default=str))
    man = base["manifest"]
    for rec in records[1:]:
        m = rec["manifest"]
        man["tasks"].update(m.get("tasks") or {})
        man["fallbacks"].update(m.get("fallbacks") or {})
        man["data_sha256"].update(m.get("data_sha256") or {})
    base["label"] = label
    base["scores"] = [s for rec in records for s in rec["scores"]]
    base["average"] = average(base["scores"], expected or len(base["scores"]))
    base["wall_seconds"] = round(sum(r.get("wall_seconds") or 0 for r in records), 1)
    base["parts"] = [r.get("out") for r in records]
    base.pop("lm_eval", None)
    base.pop("out", None)
    return base
