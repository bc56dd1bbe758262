"""kill -9 anywhere loses nothing: a real `slmkit train` process is SIGKILLed again and again (at
random steps, during start-up, and while a checkpoint is being written), resumed each time, and ends
with exactly the loss trajectory of an uninterrupted run. A damaged newest checkpoint is skipped
with a one-line warning, and a torn last metrics line is dropped."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from slmkit.train.api import train
from slmkit.train.state import SAVE_PAUSE_ENV
from slmkit.train.testing import tiny_config, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]
STEPS = 60


def _slmkit() -> list[str]:
    exe = Path(sys.executable).parent / "slmkit"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "slmkit.train"]


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _complete_checkpoints(root: Path) -> dict[str, int]:
    """Visible checkpoint folders whose meta file exists (what a resume may pick), name -> step."""
    out = {}
    for p in root.glob("*") if root.is_dir() else []:
        meta = p / "slmkit.json"
        if p.is_dir() and not p.name.startswith(".") and meta.exists():
            out[p.name] = json.loads(meta.read_text())["meta"]["step"]
    return out


def _temps(root: Path) -> set[str]:
    return {p.name for p in root.glob(".*") if p.name.endswith(".tmp")} if root.is_dir() else set()


def _wait(cond, proc, timeout=60.0) -> bool:
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if cond():
            return True
        time.sleep(0.005)
    return False


@pytest.mark.slow  # ~45-60 s: nine process starts
def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_trajectory(tmp_path):
    seed = int(os.environ.get("SLMKIT_CRASH_SEED", time.time_ns() % 10_000))
    rng = random.Random(seed)
    tok = tiny_tokenizer(tmp_path / "tok")
    cfg = tiny_config(tok, tmp_path / "data", train__steps=STEPS, schedule__decay=10,
                      checkpoint__every=5, checkpoint__keep_last=2)
    ref = train(cfg, tmp_path / "ref")["losses"]  # also prepares the data cache the runs share
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    ckpts, metrics = run / "checkpoints", run / "metrics.jsonl"
    cmd = _slmkit() + ["train", str(cfg_path), "--out", str(run)]
    env = dict(os.environ, PYTHONPATH=str(REPO), **{SAVE_PAUSE_ENV: "0.3"})
    plan = ["save", "step", "save", "startup", "step", "save", "step", "save"]
    landed, damaged, torn_at = [], None, None
    for i, mode in enumerate(plan + ["finish"]):
        before = _complete_checkpoints(ckpts)
        expect = max(before.values(), default=None)
        if damaged is not None and damaged in before:
            expect = max((v for k, v in before.items() if k != damaged), default=None)
        err = tmp_path / f"stderr{i}.txt"
        with open(err, "w") as err_file:
            proc = subprocess.Popen(cmd + (["--resume"] if i else []), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                    stderr=err_file)
            seen, orphans = _lines(metrics), _temps(ckpts)
            if mode == "save":  # the moment a new temp checkpoint folder appears, plus a little
                hit = _wait(lambda: bool(_temps(ckpts) - orphans), proc)
                time.sleep(rng.uniform(0.0, 0.25))
            elif mode == "step":
                k = rng.randint(1, 12)
                hit = _wait(lambda: _lines(metrics) >= seen + k if seen else _lines(metrics) >= k, proc)
                time.sleep(rng.uniform(0.0, 0.05))
            elif mode == "startup":
                hit = True
                time.sleep(rng.uniform(0.3, 2.5))
            if mode != "finish":
                in_save = bool(_temps(ckpts) - orphans)
                proc.send_signal(signal.SIGKILL)
            rc = proc.wait(timeout=120)
        text = err.read_text()
        assert "Traceback" not in text, text
        resumed = [line for line in text.splitlines() if line.startswith("train: resuming from")]
        if expect is None:
            assert not resumed, text
        elif resumed or mode != "startup":  # the newest complete checkpoint, never the damaged one
            assert resumed and resumed[0].endswith(f"(step {expect})"), (seed, mode, text, before, damaged)
        if mode == "finish":
            assert rc == 0, text
            break
        assert rc == -signal.SIGKILL, (mode, rc, text)
        assert hit or mode == "startup", (mode, seed, text)
        landed.append({"mode": mode, "metrics_lines": _lines(metrics), "in_save": in_save, "resumed_from": expect})
        names = _complete_checkpoints(ckpts)
        if damaged is None and i >= 2 and len(names) >= 2:  # damage the newest checkpoint's trainer state
            damaged, torn_at = max(names, key=lambda n: (names[n], n)), i + 1
            state = ckpts / damaged / "trainer" / "state.pt"
            data = bytearray(state.read_bytes())
            data[len(data) // 2] ^= 0xFF
            state.write_bytes(bytes(data))
        if damaged is not None and i == torn_at:  # a torn last line, as a kill in the middle of a write leaves it
            with open(metrics, "a") as f:
                f.write('{"step": 999, "loss": 1.23')
    assert damaged is not None, landed
    if damaged is not None:
        warned = [line for i in range(len(plan) + 1) for line in (tmp_path / f"stderr{i}.txt").read_text().splitlines()
                  if line.startswith("warning: checkpoint") and damaged in line]
        assert warned and "sha256 mismatch" in warned[0], warned
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(STEPS)), landed
    assert [r["loss"] for r in rows] == ref, (seed, landed)  # bit-exact
    assert not [p for p in ckpts.glob(".*")], "orphaned temp folders were not pruned"
    assert sum(x["in_save"] for x in landed) >= 2, landed  # some kills really hit a save in progress
    print(f"seed {seed}: damaged {damaged}; {len(landed)} kills: " + ", ".join(
        f"{x['mode']}@{x['metrics_lines']} lines{' (in save)' if x['in_save'] else ''}" for x in landed))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_units")
    tok = tiny_tokenizer(root / "tok")
    cfg = tiny_config(tok, root / "data", train__steps=6, schedule__decay=2, checkpoint__every=2,
                      checkpoint__keep_last=3)
    res = train(cfg, root / "run")
    return root, cfg, res


def _copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_state_sha256_is_recorded_and_a_damaged_newest_checkpoint_is_skipped(small_run, tmp_path, capsys):
    from slmkit.train import state

    root, cfg, _ = small_run
    run = _copy_run(root / "run", tmp_path / "run")
    ckpts = run / "checkpoints"
    meta = json.loads((ckpts / "step_0000004" / "slmkit.json").read_text())
    assert set(meta["files"]) >= {"model.safetensors", "trainer/state.pt"}
    # newest by step is `final` (6); truncate its weights and flip a byte in step_0000004's state
    weights = ckpts / "final" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    st = ckpts / "step_0000004" / "trainer" / "state.pt"
    data = bytearray(st.read_bytes())
    data[-10] ^= 1
    st.write_bytes(bytes(data))
    path, _, tstate = state.open_resume(run)
    err = capsys.readouterr().err.strip().splitlines()
    assert path.name == "stable-end" and tstate["step"] == 4  # stable-end: saved at step 4 (decay start)
    assert len(err) == 2 and all(line.startswith("warning: checkpoint") for line in err), err
    assert "truncated" in err[0] and "sha256 mismatch" in err[1]
    from slmkit.errors import SlmkitError

    with pytest.raises(SlmkitError, match="sha256 mismatch"):  # asked for by name: no fallback
        state.load_verified(ckpts / "step_0000004")


def test_orphans_pruned_and_an_interrupted_replacement_restored(small_run, tmp_path):
    from slmkit.train import state

    root, cfg, _ = small_run
    run = _copy_run(root / "run", tmp_path / "run")
    ckpts = run / "checkpoints"
    (ckpts / ".step_0000008.abcd.tmp").mkdir()  # a save killed before its rename
    os.replace(ckpts / "final", ckpts / ".final.old-4242")  # killed between moving aside and swapping in
    notes = state.prune_orphans(ckpts)
    assert sorted(notes) == ["removed .step_0000008.abcd.tmp", "restored final"]
    assert (ckpts / "final" / "slmkit.json").exists() and not list(ckpts.glob(".*"))
    state.load_verified(ckpts / "final")


def test_torn_metrics_line_is_dropped_on_resume(small_run, tmp_path):
    root, cfg, full = small_run
    out = tmp_path / "r"
    train(cfg, out, stop_after=2)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 2, "loss": 4.')
    res = train(cfg, out, resume=True)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert res["start_step"] == 2 and [r["loss"] for r in rows] == full["losses"]
