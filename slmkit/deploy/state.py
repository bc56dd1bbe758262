"""The deploy run's state file (OUT/state.json): what is done, so a rerun continues where it stopped.

Written atomically after every step (an export, a latency run, one task of one artifact), so a killed
run loses at most the step in flight — and lm-eval's request cache in that task's folder keeps the
requests it had answered. A rerun for a different model is refused; everything else (types, tasks,
limits) may change: finished (artifact, task, limit) steps are reused, the rest is done.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError
from slmkit.paths import atomic_write_json, read_json

STATE_FILE = "state.json"
VERSION = 1


class State:
    def __init__(self, out: Path, data: dict[str, Any]):
        self.out, self.data = out, data

    @classmethod
    def open(cls, out: Path, model: Path) -> "State":
        path = out / STATE_FILE
        if path.exists():
            data = read_json(path)
            if data.get("model") != str(model):
                raise SlmkitError(f"{path}: this folder holds a deploy run of {data.get('model')}, not {model}; "
                                  f"use another --out")
        else:
            data = {"version": VERSION, "model": str(model), "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for key in ("artifacts", "latency", "evals", "agents", "sessions"):
            data.setdefault(key, {} if key != "sessions" else [])
        return cls(out, data)

    def save(self) -> None:
        atomic_write_json(self.out / STATE_FILE, self.data)

    # ---- sessions (the budget counts every session's time) ------------------------------------------
    def start_session(self, argv: list[str] | None) -> None:
        self.data["sessions"].append({"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": 0.0,
                                      "argv": argv})
        self._t0 = time.time()
        self.save()

    def tick(self) -> None:
        if self.data["sessions"] and hasattr(self, "_t0"):
            self.data["sessions"][-1]["seconds"] = round(time.time() - self._t0, 1)

    def spent_seconds(self) -> float:
        self.tick()
        return float(sum(s.get("seconds") or 0 for s in self.data["sessions"]))

    # ---- steps ---------------------------------------------------------------------------------------
    def step(self, section: str, *keys: str) -> dict | None:
        node: Any = self.data[section]
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    def record(self, section: str, *keys: str, value: dict) -> None:
        node = self.data[section]
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        node[keys[-1]] = value
        self.tick()
        self.save()
