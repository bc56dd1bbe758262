"""lm-eval tasks exactly as stock, with two changes: where the documents come from and the code metric.

A `TaskManager` whose factory adjusts each leaf task's config after lm-eval has assembled it from its
own YAML: offline (`data="local"`, or `"auto"` when $SLMKIT_DATA has the files) the task gets a
`custom_dataset` that returns the staged files in the Hub schema; HumanEval/MBPP's `code_eval`
metric becomes `slmkit_pass_at_1` (sandboxed). Prompts, few-shot samplers, filters and the other
metrics are untouched; tests/test_eval_requests.py proves the requests equal the stock task's.

A split the staged data lacks is dropped from the config; when that was the training split few-shot
examples come from (HellaSwag, WinoGrande), lm-eval's own fallback draws them from the evaluated
split, seeded, excluding the current document (its sampler removes the eval doc when the few-shot
split equals the test split, here both unset). `records` notes this per task so every report says so.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from slmkit.errors import SlmkitError
from slmkit.evaluate import code_metric, local_data
from slmkit.paths import DATA_ENV

DATA_MODES = ("auto", "local", "hub")
_MANAGERS: dict[tuple, object] = {}
CODE_MODULES = ("lm_eval.tasks.humaneval.utils", "lm_eval.tasks.mbpp.utils")


def fallback_text(folder: str, pool: str, evaluated: bool) -> str:
    where = "the evaluated split, excluding the current document" if evaluated else "not the evaluated split"
    return (f"few-shot examples drawn from the '{pool}' split ({where}), seeded; lm-eval draws them from 'train', "
            f"which ${DATA_ENV}/benchmarks/{folder} does not have")


def _local_dataset(dataset_path: str, dataset_name: str | None, **_ignored: Any):
    """`custom_dataset` for a task: lm-eval calls it with the task metadata as keyword arguments."""
    return local_data.to_dataset_dict(local_data.load_local(dataset_path, dataset_name))


class _QuietCustomDataset(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # lm-eval warns once per task about --metadata
        return "Custom kwargs can be passed" not in record.getMessage()


def _resolve_mode(data: str) -> str:
    if data not in DATA_MODES:
        raise SlmkitError(f"unknown data mode '{data}' (known: {', '.join(DATA_MODES)})")
    if data == "auto":
        from slmkit.paths import data_dir

        root = data_dir(required=False)
        return "local" if root is not None and (root / "benchmarks").is_dir() else "hub"
    return data


def make_task_manager(data: str = "auto", metadata: dict | None = None):
    """A TaskManager building stock tasks with local documents and the sandboxed code metric.

    The returned manager has `.slmkit_records`: {task: {"data": ..., "files": {path: sha256}, "fallback": ...}}.
    """
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._factory import TaskFactory

    mode = _resolve_mode(data)
    key = (mode, repr(sorted((metadata or {}).items())))
    if key in _MANAGERS:  # indexing lm-eval's ~10k task files takes seconds: once per process
        return _MANAGERS[key]
    code_metric.register()
    code_metric.preload_stock_code_modules()
    logging.getLogger("lm_eval.api.task").addFilter(_QuietCustomDataset())
    records: dict[str, dict] = {}

    class SlmkitTaskFactory(TaskFactory):
        def _load_full_config(self, entry, overrides=None):
            cfg = super()._load_full_config(entry, overrides)
            if isinstance(cfg.get("task"), str) and "class" not in cfg:
                records[cfg["task"]] = _adjust(cfg, mode)
            return cfg

    tm = TaskManager(metadata=metadata)
    if not isinstance(getattr(tm, "_factory", None), TaskFactory):
        raise SlmkitError("this lm-eval version builds tasks differently; slmkit needs lm-eval 0.4.13's TaskFactory")
    tm._factory = SlmkitTaskFactory(meta=metadata)
    tm.slmkit_records = records
    _MANAGERS[key] = tm
    return tm


def _adjust(cfg: dict, mode: str) -> dict:
    """Patch one leaf task config in place; return what was done (for the manifest)."""
    record: dict[str, Any] = {"data": "hub", "dataset": cfg.get("dataset_path"), "files": {}, "fallback": None}
    _use_code_metric(cfg)
    path, name = cfg.get("dataset_path"), cfg.get("dataset_name")
    if mode == "hub" or cfg.get("custom_dataset") is not None:
        return record
    if not local_data.has_local(path):
        raise SlmkitError(f"task '{cfg['task']}' reads dataset '{path}', which has no local copy under "
                          f"${DATA_ENV}/benchmarks; run with --data hub where the Hugging Face Hub is reachable")
    local = local_data.load_local(path, name)
    have = set(local.splits)
    eval_key = "test_split" if cfg.get("test_split") else "validation_split"
    for key in ("test_split", "validation_split", "fewshot_split"):
        split = cfg.get(key)
        if split and split not in have and (key == eval_key or key == "fewshot_split"):
            raise SlmkitError(f"task '{cfg['task']}': split '{split}' is missing from "
                              f"${DATA_ENV}/benchmarks/{local.folder} (has: {', '.join(sorted(have))})")
        if split and split not in have:
            cfg[key] = None
    train = cfg.get("training_split")
    if train and train not in have:
        cfg["training_split"] = None
        fs = cfg.get("fewshot_config") or {}
        if not cfg.get("fewshot_split") and not (isinstance(fs, dict) and (fs.get("samples") or fs.get("split"))):
            pool = cfg.get("validation_split") or cfg.get("test_split")
            record["fallback_candidate"] = fallback_text(local.folder, pool, pool == cfg.get(eval_key))
    cfg["custom_dataset"] = functools.partial(_local_dataset, path, name)
    cfg["dataset_kwargs"] = None
    record.update(data="local", folder=local.folder, files=local.sha256())
    return record


def _use_code_metric(cfg: dict) -> None:
    """Swap the stock code_eval-backed pass@1 for the sandboxed one (pass@1 only)."""
    metrics = cfg.get("metric_list") or []
    for i, m in enumerate(metrics):
        fn = m.get("metric") if isinstance(m, dict) else None
        if callable(fn) and getattr(fn, "__module__", "") in CODE_MODULES:
            k = m.get("k", [1])
            if (k if isinstance(k, list) else [k]) != [1]:
                raise SlmkitError(f"task '{cfg['task']}': pass@{k} is not supported by the sandboxed metric (pass@1 only)")
            metrics[i] = {"metric": code_metric.METRIC, "aggregation": "mean", "higher_is_better": True}


def finalize_records(records: dict[str, dict], tasks: dict) -> dict[str, dict]:
    """Fallbacks actually used: a fallback pool matters only when the task draws few-shot examples."""
    out = {}
    for name, task in tasks.items():
        rec = dict(records.get(name, {"data": "unknown", "files": {}, "fallback": None}))
        candidate = rec.pop("fallback_candidate", None)
        shots = task.get_config("num_fewshot") or 0
        rec["num_fewshot"] = shots
        rec["fallback"] = candidate if (candidate and shots > 0) else None
        out[name] = rec
    return out
