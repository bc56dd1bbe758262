"""lm-eval tasks exactly as stock, with two changes: where the documents come from and the code metric.

Done through lm-eval's public extension point, a folder of task YAML files given to
`TaskManager(include_path=...)`: lm-eval indexes it after its own tasks, and an entry there replaces
the stock entry of the same name (groups and tags pick it up by name). The folder holds one file per
stock task that needs a change, written once per lm-eval install and mode from the stock task index
(under $SLMKIT_CACHE/lm_eval_tasks/):

- offline (`data="local"`, or `"auto"` when $SLMKIT_DATA has benchmarks/): the file `include:`s the
  stock YAML and adds `custom_dataset: !function slmkit.evaluate.tasks.documents` with
  `dataset_kwargs` naming the Hub dataset/config, which returns the staged files in the Hub schema;
  splits the staged copy lacks are dropped (see below);
- HumanEval/MBPP (every task that uses lm-eval's humaneval/mbpp modules): the `code_eval`-backed metric
  becomes `slmkit_pass_at_1` (sandboxed). These files hold the stock config written out in full, its
  `!function`s named by module path (`lm_eval.tasks.humaneval.utils.build_predictions`): including the
  stock YAML instead would make lm-eval execute those modules itself, and at import they load
  `code_eval` from the Hub. code_metric imports them once with `code_eval` stood in for.

Prompts, few-shot samplers, filters and the other metrics are untouched; tests/test_eval_requests.py
proves the requests equal the stock task's.

A split the staged data lacks is dropped from the config; when that was the training split few-shot
examples come from (HellaSwag, WinoGrande), lm-eval's own fallback draws them from the evaluated
split, seeded, excluding the current document (its sampler removes the eval doc when the few-shot
split equals the test split, here both unset). `records` notes this per task so every report says so.
A split a task evaluates on or takes few-shot examples from that the staged data lacks is one
SlmkitError line when the task is built.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import shutil
from importlib import metadata as dist_metadata
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError
from slmkit.evaluate import code_metric, local_data
from slmkit.paths import DATA_ENV, atomic_dir, cache_dir

DATA_MODES = ("auto", "local", "hub")
DOCUMENTS = "slmkit.evaluate.tasks.documents"  # the `custom_dataset` the written configs name
OVERLAY_ROOT = "lm_eval_tasks"  # under $SLMKIT_CACHE
PLAN_FILE = "slmkit_plan.json"
KEEP_FOLDERS = 3  # per mode, in case several slmkit / lm-eval versions share the cache
_MANAGERS: dict[tuple, object] = {}


def fallback_text(folder: str, pool: str, evaluated: bool) -> str:
    where = "the evaluated split, excluding the current document" if evaluated else "not the evaluated split"
    return (f"few-shot examples drawn from the '{pool}' split ({where}), seeded; lm-eval draws them from 'train', "
            f"which ${DATA_ENV}/benchmarks/{folder} does not have")


def documents(slmkit_dataset: str | None = None, slmkit_config: str | None = None, slmkit_task: str | None = None,
              slmkit_error: str | None = None, **_metadata: Any):
    """`custom_dataset` of the written task configs; lm-eval calls it with the task's metadata and dataset_kwargs."""
    if slmkit_error:
        raise SlmkitError(slmkit_error)
    if slmkit_dataset is None:
        raise SlmkitError(f"task '{slmkit_task}': dataset_kwargs lacks slmkit_dataset (a broken slmkit task config)")
    return local_data.to_dataset_dict(local_data.load_local(slmkit_dataset, slmkit_config), task=slmkit_task)


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

    The returned manager has `.slmkit_records`: {task: {"data": ..., "dataset": ..., "fallback_pool": ...}}
    for the tasks slmkit changed; `finalize_records` turns them into the manifest's per-task records.
    """
    mode = _resolve_mode(data)
    key = (mode, repr(sorted((metadata or {}).items())))
    if key in _MANAGERS:  # indexing lm-eval's ~14k task files takes seconds: once per process
        return _MANAGERS[key]
    code_metric.register()
    _add_filter_once("lm_eval.api.task", _QuietCustomDataset())
    # The one non-API name slmkit uses: the logger of lm-eval's task indexer (lm_eval/tasks/_index.py), which
    # warns once per task our folder replaces. A logging.Filter is the public way to drop those records; were
    # the module renamed, lm-eval would print those lines again and nothing else would change.
    _add_filter_once("lm_eval.tasks._index", _QuietOverrides(str(cache_dir() / OVERLAY_ROOT)))
    folder = overlay_folder(mode)
    if not (folder / PLAN_FILE).is_file():
        write_overlays(folder, mode)
    plan = json.loads((folder / PLAN_FILE).read_text(encoding="utf-8"))
    tm = _manager_class()(mode=mode, folder=folder, plan=plan, metadata=metadata)
    _MANAGERS[key] = tm
    return tm


class _QuietCustomDataset(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:  # lm-eval warns once per task about --metadata
        return "Custom kwargs can be passed" not in record.getMessage()


class _QuietOverrides(logging.Filter):
    """lm-eval warns once per replaced task ("Task 'x' from ... overrides existing task"): ours are intended."""

    def __init__(self, root: str):
        super().__init__()
        self.root = root

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("overrides existing task" in msg and self.root in msg)


def _add_filter_once(logger_name: str, new: logging.Filter) -> None:
    logger = logging.getLogger(logger_name)
    if not any(type(f) is type(new) and vars(f) == vars(new) for f in logger.filters):
        logger.addFilter(new)


@functools.lru_cache(maxsize=1)
def _manager_class():
    from lm_eval.api.task import ConfigurableTask
    from lm_eval.tasks import TaskManager

    class SlmkitTaskManager(TaskManager):
        """lm-eval's TaskManager over its own tasks plus slmkit's task folder, guarding local-only runs."""

        def __init__(self, *, mode: str, folder: Path, plan: dict, metadata: dict | None = None):
            super().__init__(include_path=str(folder), metadata=metadata)
            self.slmkit_mode = mode
            self.slmkit_records = plan["records"]
            self.slmkit_code_tasks = set(plan["code_tasks"])

        def load(self, task_list):
            specs = task_list if isinstance(task_list, list) else [task_list]
            leaves = self.slmkit_leaves(specs)
            if leaves is None or leaves & self.slmkit_code_tasks:
                code_metric.import_stock_code_modules()
            if self.slmkit_mode == "local":
                for name in sorted(leaves or ()):
                    entry = self.task_index[name]
                    if entry.kind.name != "TASK" or not entry.cfg:
                        continue
                    path = entry.cfg.get("dataset_path")
                    if entry.cfg.get("custom_dataset") is None and not local_data.has_local(path):
                        raise SlmkitError(_no_local_copy(name, path))
            loaded = super().load(task_list)
            if self.slmkit_mode == "local":
                for name, task in loaded["tasks"].items():
                    _check_local(name, task, ConfigurableTask)
            return loaded

        def slmkit_leaves(self, specs) -> set[str] | None:
            """Registered leaf tasks the names in `specs` stand for; None when some spec is not a name."""
            out: set[str] = set()
            for spec in specs:
                if isinstance(spec, str) and spec in self.task_index:
                    self.slmkit_walk(spec, out, set())
                elif isinstance(spec, str) or isinstance(spec, dict):
                    return None  # a YAML path or inline config: no precheck
            return out

        def slmkit_walk(self, name: str, out: set[str], seen: set[str]) -> None:
            if name in seen or name not in self.task_index:
                return
            seen.add(name)
            entry = self.task_index[name]
            kind = entry.kind.name
            if kind == "TAG":
                for child in entry.tags:
                    self.slmkit_walk(child, out, seen)
            elif kind == "GROUP":
                for item in (entry.cfg or {}).get("task") or []:
                    child = item if isinstance(item, str) else (item.get("task") or item.get("group"))
                    if isinstance(child, str):
                        self.slmkit_walk(child, out, seen)
            elif kind in ("TASK", "PY_TASK"):
                out.add(name)

    return SlmkitTaskManager


def _no_local_copy(task: str, path: str | None) -> str:
    return (f"task '{task}' reads dataset '{path}', which has no local copy under ${DATA_ENV}/benchmarks; "
            f"run with --data hub where the Hugging Face Hub is reachable")


def _check_local(name: str, task, configurable) -> None:
    """After building, in local mode: every stock-configured task reads slmkit's documents, for its own dataset."""
    if type(task) is not configurable:  # Python-defined tasks load their own data
        return
    cfg = task.config
    kwargs = cfg.dataset_kwargs or {}
    if cfg.custom_dataset is documents:
        if (kwargs.get("slmkit_dataset"), kwargs.get("slmkit_config")) != (cfg.dataset_path, cfg.dataset_name):
            raise SlmkitError(f"task '{name}': its group sets dataset {cfg.dataset_path} ({cfg.dataset_name}), slmkit's "
                              f"documents are {kwargs.get('slmkit_dataset')} ({kwargs.get('slmkit_config')}); "
                              f"run with --data hub")
    elif cfg.custom_dataset is None:
        raise SlmkitError(_no_local_copy(name, cfg.dataset_path))


# ---- the task folder ---------------------------------------------------------------------------


class FunctionRef(str):
    """A `!function module.attribute` value in a written task YAML."""


def _dump_yaml(cfg: dict) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper, value: str):  # multi-line prompts and stop strings stay readable, escaped exactly
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style='"' if "\n" in value else None)

    Dumper.add_representer(str, text)
    Dumper.add_representer(FunctionRef, lambda dumper, ref: dumper.represent_scalar("!function", str(ref)))
    return yaml.dump(cfg, Dumper=Dumper, sort_keys=False, allow_unicode=True, width=1 << 30)


def _stock_tasks_dir() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def overlay_folder(mode: str) -> Path:
    """Where the task files for `mode` live: one folder per lm-eval install and version of this code."""
    stamp = hashlib.sha256()
    for part in (dist_metadata.version("lm_eval"), str(_stock_tasks_dir()), mode):
        stamp.update(part.encode() + b"\0")
    for module in (__file__, local_data.__file__, code_metric.__file__):  # a change here rewrites the files
        stamp.update(Path(module).read_bytes())
    return cache_dir() / OVERLAY_ROOT / f"{mode}-{stamp.hexdigest()[:16]}"


def write_overlays(folder: Path, mode: str) -> None:
    """Write one task YAML per stock task slmkit changes, and the plan (records, code tasks) beside them."""
    from lm_eval.tasks import TaskManager

    stock = TaskManager()  # the stock index: every task's config with its includes merged
    tasks_dir = _stock_tasks_dir()
    plan: dict[str, Any] = {"records": {}, "code_tasks": []}
    used: set[str] = set()
    with atomic_dir(folder) as tmp:
        for name, entry in sorted(stock.task_index.items()):
            if entry.kind.name != "TASK" or not entry.cfg or entry.yaml_path is None:
                continue
            made = _overlay(name, entry, mode, tasks_dir)
            if made is None:
                continue
            cfg, record, is_code = made
            file = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            if file in used or file != name:
                file += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
            used.add(file)
            (tmp / f"{file}.yaml").write_text(_dump_yaml(cfg), encoding="utf-8")
            plan["records"][name] = record
            if is_code:
                plan["code_tasks"].append(name)
        if "humaneval" in stock.task_index and "humaneval" not in plan["code_tasks"]:
            raise SlmkitError(f"lm-eval {dist_metadata.version('lm_eval')} keeps task functions in its index differently; "
                              "slmkit cannot find HumanEval's code_eval metric to replace it")
        (tmp / PLAN_FILE).write_text(json.dumps(plan, indent=1), encoding="utf-8")
    others = sorted((p for p in folder.parent.glob(f"{mode}-*") if p != folder and p.is_dir()),
                    key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in others[KEEP_FOLDERS - 1:]:  # other lm-eval / slmkit versions: keep the latest few
        shutil.rmtree(stale, ignore_errors=True)


def _overlay(name: str, entry, mode: str, tasks_dir: Path) -> tuple[dict, dict, bool] | None:
    """(the task file's config, its record, whether it is a code task), or None when stock is used as is."""
    stock = entry.cfg
    refs: dict[str, FunctionRef] = {}
    _collect_function_refs(stock, tasks_dir, refs)
    is_code = any(ref.rpartition(".")[0] in code_metric.STOCK_CODE_MODULES for ref in refs.values())
    local = mode == "local" and stock.get("custom_dataset") is None and local_data.has_local(stock.get("dataset_path"))
    if not (is_code or local):
        return None
    error = None
    if is_code:
        cfg = _with_refs(stock, refs)
        error = _use_code_metric(name, cfg)
    else:
        cfg = {"include": str(entry.yaml_path)}
    cfg.update(task=name, tag=None)  # tag: the stock tag entries keep listing this task (by name)
    record: dict[str, Any] = {"data": "hub", "dataset": stock.get("dataset_path")}
    if local:
        record.update(_use_local_documents(name, stock, cfg))
    if error:
        cfg["custom_dataset"] = FunctionRef(DOCUMENTS)
        cfg["dataset_kwargs"] = {**(cfg.get("dataset_kwargs") or {}), "slmkit_error": error}
    return cfg, record, is_code


def _use_local_documents(name: str, stock: dict, cfg: dict) -> dict:
    """Point the config at the staged copy; drop the splits it lacks that lm-eval would otherwise read."""
    path, config = stock["dataset_path"], stock.get("dataset_name")
    have = set(local_data.local_splits(path))
    split = {k: stock.get(k) for k in ("test_split", "validation_split", "training_split", "fewshot_split")}
    eval_key = "test_split" if split["test_split"] else "validation_split"
    for key in ("test_split", "validation_split"):
        if split[key] and split[key] not in have and key != eval_key:
            cfg[key] = split[key] = None
    record: dict[str, Any] = {"data": "local", "dataset": path, "config": config}
    train = split["training_split"]
    if train and train not in have:
        cfg["training_split"] = None
        fs = stock.get("fewshot_config") or {}
        if not split["fewshot_split"] and not (isinstance(fs, dict) and (fs.get("samples") or fs.get("split"))):
            pool = split["validation_split"] or split["test_split"]
            record.update(fallback_pool=pool, fallback_evaluated=pool == split[eval_key])
    cfg["custom_dataset"] = FunctionRef(DOCUMENTS)
    cfg["dataset_kwargs"] = {"slmkit_dataset": path, "slmkit_config": config, "slmkit_task": name}
    return record


def _collect_function_refs(value, tasks_dir: Path, out: dict[str, FunctionRef]) -> None:
    """`!function`s in a stock index config (lm-eval leaves them as '<yaml folder>/<module>.<attr>')."""
    if isinstance(value, dict):
        for v in value.values():
            _collect_function_refs(v, tasks_dir, out)
    elif isinstance(value, list):
        for v in value:
            _collect_function_refs(v, tasks_dir, out)
    elif isinstance(value, str) and value.startswith(f"{tasks_dir}/"):
        module, dot, attr = value[len(str(tasks_dir)) + 1:].rpartition(".")
        module = module.replace(".", "/")
        dotted = "lm_eval.tasks." + module.replace("/", ".")
        if dot and (tasks_dir / f"{module}.py").is_file() and all(p.isidentifier() for p in dotted.split(".") + [attr]):
            out[value] = FunctionRef(f"{dotted}.{attr}")


def _with_refs(value, refs: dict[str, FunctionRef]):
    if isinstance(value, dict):
        return {k: _with_refs(v, refs) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_refs(v, refs) for v in value]
    return refs.get(value, value) if isinstance(value, str) else value


def _use_code_metric(name: str, cfg: dict) -> str | None:
    """Swap the stock code_eval-backed pass@1 for the sandboxed one; an error line for pass@k, k > 1."""
    for i, m in enumerate(cfg.get("metric_list") or []):
        fn = m.get("metric") if isinstance(m, dict) else None
        if isinstance(fn, FunctionRef) and fn.rpartition(".")[0] in code_metric.STOCK_CODE_MODULES:
            k = m.get("k", [1])
            if (k if isinstance(k, list) else [k]) != [1]:
                return f"task '{name}': pass@{k} is not supported by the sandboxed metric (pass@1 only)"
            cfg["metric_list"][i] = {"metric": code_metric.METRIC, "aggregation": "mean", "higher_is_better": True}
    return None


def finalize_records(records: dict[str, dict], tasks: dict) -> dict[str, dict]:
    """Per built task: where its documents came from (with file hashes) and the few-shot fallback it used."""
    out = {}
    for name, task in tasks.items():
        cfg = getattr(task, "config", None)
        plan = records.get(name, {})
        shots = task.get_config("num_fewshot") or 0
        if cfg is not None and getattr(cfg, "custom_dataset", None) is documents:
            kwargs = cfg.dataset_kwargs or {}
            local = local_data.load_local(kwargs["slmkit_dataset"], kwargs.get("slmkit_config"))
            rec = {"data": "local", "dataset": kwargs["slmkit_dataset"], "config": kwargs.get("slmkit_config"),
                   "folder": local.folder, "files": local.sha256()}
            pool = plan.get("fallback_pool")
            rec["fallback"] = fallback_text(local.folder, pool, plan["fallback_evaluated"]) if pool and shots > 0 else None
        else:
            custom = cfg is not None and getattr(cfg, "custom_dataset", None) is not None
            rec = {"data": "custom" if custom else "hub", "dataset": getattr(cfg, "dataset_path", None),
                   "config": getattr(cfg, "dataset_name", None), "files": {}, "fallback": None}
        rec["num_fewshot"] = shots
        out[name] = rec
    return out
