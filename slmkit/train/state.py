"""Trainer checkpoints: model via slmkit.model.checkpoint, trainer state in `trainer/` of the same folder.

`trainer/state.pt` holds the step to run next, which optimizer owns which parameter, each
optimizer's state, RNG states, FP8 scaler histories, the bad-step streak and the config; all of it
is written inside the checkpoint's atomic swap. Layout of a run folder:

    RUN/checkpoints/step_0000200/    keep-last-N rolling checkpoints
    RUN/checkpoints/stable-end/      named milestones (never pruned)
    RUN/checkpoints/LATEST           name of the newest checkpoint (what --resume picks)
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from slmkit.errors import SlmkitError
from slmkit.model.checkpoint import save_checkpoint
from slmkit.paths import atomic_write_text

STATE_FILE = "trainer/state.pt"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(ckpt_root: Path, name: str, model, trainer_state: dict, tokenizer_dir=None, meta=None) -> Path:
    def extra(tmp: Path) -> None:
        (tmp / "trainer").mkdir()
        torch.save(trainer_state, tmp / STATE_FILE)

    path = save_checkpoint(ckpt_root / name, model, tokenizer_dir=tokenizer_dir, meta=meta, extra=extra)
    atomic_write_text(ckpt_root / "LATEST", name + "\n")
    return path


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Drop rolling step_* checkpoints beyond the newest `keep_last` (milestones are kept)."""
    if keep_last <= 0:
        return
    latest = (ckpt_root / "LATEST").read_text().strip() if (ckpt_root / "LATEST").exists() else None
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        if old.name != latest:
            shutil.rmtree(old, ignore_errors=True)


def prune_orphans(ckpt_root: Path) -> list[Path]:
    """Remove temp folders a killed save left behind (`.NAME.*.tmp`, `.NAME.old-PID`)."""
    removed = []
    if not ckpt_root.is_dir():
        return removed
    for p in ckpt_root.iterdir():
        if p.name.startswith(".") and p.is_dir() and (p.name.endswith(".tmp") or ".old-" in p.name):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def find_resume(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    latest = root / "LATEST"
    if latest.exists():
        path = root / latest.read_text().strip()
        if (path / STATE_FILE).exists():
            return path
    candidates = sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists())
    return candidates[-1] if candidates else None


def load(path: Path) -> dict:
    file = Path(path) / STATE_FILE
    if not file.exists():
        raise SlmkitError(f"{file}: missing (not a trainer checkpoint; resume needs one written by `slmkit train`)")
    try:
        return torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise SlmkitError(f"{file}: cannot read trainer state ({str(exc).splitlines()[0]})") from None


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
