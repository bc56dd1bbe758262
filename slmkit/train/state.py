"""Trainer checkpoints: model via slmkit.model.checkpoint, trainer state in `trainer/` of the same folder.

`trainer/state.pt` holds the step to run next, which optimizer owns which parameter, each
optimizer's state, RNG states, FP8 scaler histories, the bad-step streak and the config; all of it
is written inside the checkpoint's atomic, fsynced swap, and its sha256 is in the checkpoint's meta
file (checked on load). Layout of a run folder:

    RUN/checkpoints/step_0000200/    keep-last-N rolling checkpoints
    RUN/checkpoints/stable-end/      named milestones (never pruned)
    RUN/checkpoints/LATEST           name of the newest checkpoint

Surviving kill -9 anywhere: `--resume` takes the newest checkpoint that loads cleanly (every file
against its recorded sha256), falling back past a damaged one with a one-line warning;
`prune_orphans` (run at start) removes temp folders of interrupted saves and puts back a checkpoint
whose replacement was interrupted; pruning renames a folder away before deleting it, so a
half-deleted checkpoint never looks like a checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch

from slmkit.errors import SlmkitError
from slmkit.model.checkpoint import GATE_TEXT_FILE, read_meta, save_checkpoint, verify_files
from slmkit.paths import atomic_write_text

STATE_FILE = "trainer/state.pt"
SAVE_PAUSE_ENV = "SLMKIT_TEST_SAVE_PAUSE"  # tests: seconds to sleep inside a save (to kill it mid-write)


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


def save(ckpt_root: Path, name: str, model, trainer_state: dict, tokenizer_dir=None, meta=None,
         gate_text: str | None = None) -> Path:
    """`gate_text`: written as the checkpoint's gate_text.txt (what its exports' parity gates run on)."""
    def extra(tmp: Path) -> None:
        if gate_text is not None:
            (tmp / GATE_TEXT_FILE).write_text(gate_text, encoding="utf-8")
        (tmp / "trainer").mkdir()
        torch.save(trainer_state, tmp / STATE_FILE)
        pause = float(os.environ.get(SAVE_PAUSE_ENV) or 0)
        if pause > 0:  # weights and state are in the temp folder, the meta file and the rename are not
            time.sleep(pause)

    path = save_checkpoint(ckpt_root / name, model, tokenizer_dir=tokenizer_dir, meta=meta, extra=extra)
    atomic_write_text(ckpt_root / "LATEST", name + "\n")
    return path


def _discard(folder: Path) -> None:
    """Rename away, then delete: a kill mid-delete leaves a hidden temp folder, not half a checkpoint."""
    gone = folder.with_name(f".{folder.name}.deleting-{os.getpid()}.tmp")
    try:
        os.replace(folder, gone)
    except OSError:
        return
    shutil.rmtree(gone, ignore_errors=True)


def prune(ckpt_root: Path, keep_last: int) -> None:
    """Drop rolling step_* checkpoints beyond the newest `keep_last` (milestones are kept)."""
    if keep_last <= 0:
        return
    latest = (ckpt_root / "LATEST").read_text().strip() if (ckpt_root / "LATEST").exists() else None
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep_last]:
        if old.name != latest:
            _discard(old)


def prune_orphans(ckpt_root: Path) -> list[str]:
    """Clean up after a killed save: delete `.NAME.*.tmp` temp folders; a `.NAME.old-PID` (the previous
    NAME, moved aside while a replacement was swapped in) goes back to NAME if NAME is missing."""
    notes: list[str] = []
    if not ckpt_root.is_dir():
        return notes
    for p in sorted(ckpt_root.iterdir()):
        if not (p.name.startswith(".") and p.is_dir()):
            continue
        if ".old-" in p.name:
            name = p.name[1:].rsplit(".old-", 1)[0]
            if name and not (ckpt_root / name).exists():
                os.replace(p, ckpt_root / name)
                notes.append(f"restored {name}")
            else:
                shutil.rmtree(p, ignore_errors=True)
                notes.append(f"removed {p.name}")
        elif p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True)
            notes.append(f"removed {p.name}")
    return notes


def load_verified(path: Path) -> tuple[dict, dict]:
    """(model tensors, trainer state) of a checkpoint, every file checked against its recorded sha256."""
    from slmkit.model.checkpoint import load_state

    path = Path(path)
    _, tensors, record = load_state(path)
    return tensors, load(path, record)


def _step_of(path: Path) -> int:
    try:
        return int(read_meta(path).get("meta", {}).get("step", -1))
    except (SlmkitError, TypeError, ValueError):
        return -1


def resume_candidates(run_dir: Path) -> list[Path]:
    """Checkpoints of a run, newest first (by step; LATEST first among equals)."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    latest = (root / "LATEST").read_text().strip() if (root / "LATEST").exists() else None
    found = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / "trainer").is_dir()]
    return sorted(found, key=lambda p: (_step_of(p), p.name == latest, p.name), reverse=True)


def open_resume(run_dir: Path) -> tuple[Path, dict, dict] | None:
    """(path, tensors, trainer state) of the newest checkpoint that loads cleanly; a damaged one is
    skipped with a one-line warning. None when the run has no checkpoint."""
    damaged: list[tuple[Path, str]] = []
    for path in resume_candidates(run_dir):
        try:
            tensors, tstate = load_verified(path)
        except SlmkitError as exc:
            damaged.append((path, str(exc)))
            continue
        for bad, why in damaged:
            print(f"warning: checkpoint {bad} is damaged ({why}); resuming from {path.name} instead", file=sys.stderr)
        return path, tensors, tstate
    for bad, why in damaged:
        print(f"warning: checkpoint {bad} is damaged ({why}); no usable checkpoint, starting fresh", file=sys.stderr)
    return None


def find_resume(run_dir: Path) -> Path | None:
    found = open_resume(run_dir)
    return found[0] if found else None


def load(path: Path, record: dict | None = None) -> dict:
    """The trainer state of a checkpoint; its sha256 is checked when the meta file records one."""
    file = Path(path) / STATE_FILE
    if not file.exists():
        raise SlmkitError(f"{file}: missing (not a trainer checkpoint; resume needs one written by `slmkit train`)")
    record = read_meta(path) if record is None else record
    verify_files(path, record, [STATE_FILE])
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for a bad file
        raise SlmkitError(f"{file}: cannot read trainer state ({str(exc).splitlines()[0]})") from None
    step = record.get("meta", {}).get("step")
    if not isinstance(state, dict) or "step" not in state or (step is not None and int(state["step"]) != int(step)):
        raise SlmkitError(f"{file}: trainer state does not match its checkpoint (step {step})")
    return state


def write_summary(run_dir: Path, summary: dict) -> None:
    atomic_write_text(run_dir / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
