"""Declarative suites: a YAML file lists lm-eval tasks with their shots and the metric to report.

Built-in suites ship as package data in slmkit/evaluate/suites/; a path to any YAML file works too.
`--tasks a,b` picks suite entries by task or display name, or adds any other lm-eval task name
(reported with its first metric).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from slmkit.errors import SlmkitError

SUITES_DIR = Path(__file__).parent / "suites"
PUBLISHED_FILE = Path(__file__).parent / "published_scores.json"


@dataclass
class SuiteTask:
    name: str  # display name, also the key into published scores
    task: str  # lm-eval task or group
    num_fewshot: int | None = None  # None: the task's own default
    metric: str | None = None  # None: first metric lm-eval reports
    filter: str = "none"

    @property
    def key(self) -> str:
        return f"{self.metric},{self.filter}" if self.metric else ""


@dataclass
class Suite:
    name: str
    tasks: list[SuiteTask]
    description: str = ""


def available() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def load_suite(name_or_path: str) -> Suite:
    import yaml

    path = Path(name_or_path)
    if not path.suffix:
        path = SUITES_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise SlmkitError(f"unknown suite '{name_or_path}' (built-in: {', '.join(available())}; or a path to a suite YAML)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SlmkitError(f"{path}: cannot parse YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise SlmkitError(f"{path}: field 'tasks' must be a non-empty list")
    tasks = []
    for i, item in enumerate(data["tasks"]):
        if not isinstance(item, dict) or not isinstance(item.get("task"), str):
            raise SlmkitError(f"{path}: tasks[{i}] needs a 'task' (lm-eval task or group name)")
        unknown = sorted(set(item) - {"name", "task", "num_fewshot", "metric", "filter"})
        if unknown:
            raise SlmkitError(f"{path}: tasks[{i}] has unknown field '{unknown[0]}'")
        shots = item.get("num_fewshot")
        if shots is not None and (not isinstance(shots, int) or shots < 0):
            raise SlmkitError(f"{path}: tasks[{i}].num_fewshot={shots!r} must be a non-negative integer")
        tasks.append(SuiteTask(name=str(item.get("name") or item["task"]), task=item["task"], num_fewshot=shots,
                               metric=item.get("metric"), filter=str(item.get("filter") or "none")))
    return Suite(name=str(data.get("name") or path.stem), tasks=tasks, description=str(data.get("description") or ""))


def select(suite: Suite, tasks: str | list[str] | None) -> list[SuiteTask]:
    """Suite entries named in `tasks` (task or display name); unknown names become plain lm-eval tasks."""
    if not tasks:
        return list(suite.tasks)
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    out = []
    for name in names:
        hit = next((t for t in suite.tasks if name in (t.task, t.name)), None)
        out.append(hit or SuiteTask(name=name, task=name))
    return out


def published() -> dict:
    """Published rows (facts with a cited source) shipped as package data."""
    return json.loads(PUBLISHED_FILE.read_text(encoding="utf-8"))
