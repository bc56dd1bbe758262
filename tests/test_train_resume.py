"""Exact resume (in-process and after a real SIGTERM), across the AdamW→Muon switch; NaN handling;
milestones; FP8 training on CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from slmkit.errors import SlmkitError
from slmkit.train.api import train
from slmkit.train.testing import tiny_config, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    tok = tiny_tokenizer(root / "tok")
    return root, tok


@pytest.fixture(scope="module")
def baseline(env):
    """One uninterrupted 12-step run: 2 warmup, 6 stable, 4 decay steps on Muon (switch at step 8)."""
    root, tok = env
    return train(tiny_config(tok, root / "data"), root / "full")


def test_baseline_trains_and_switches(baseline, env):
    root, _ = env
    losses = baseline["losses"]
    assert len(losses) == 12 and losses[-1] < losses[0]
    assert baseline["optimizers"] == {"adamw": "AdamW", "muon": "Muon"}
    assert Path(baseline["milestones"]["stable-end"]).is_dir()
    state = torch.load(root / "full/checkpoints/stable-end/trainer/state.pt", weights_only=False)
    assert state["step"] == 8 and set(state["owners"].values()) == {"adamw"}
    final = torch.load(root / "full/checkpoints/final/trainer/state.pt", weights_only=False)
    assert final["owners"]["layers.0.mlp.up_proj.weight"] == "muon"
    assert final["owners"]["embed_tokens.weight"] == "adamw" and set(final["optimizers"]) == {"adamw", "muon"}
    rows = [json.loads(x) for x in (root / "full/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(12)) and rows[8]["phase"] == "decay"


@pytest.mark.parametrize("stop", [5, 8, 10])  # before, exactly at, and after the AdamW→Muon switch
def test_resume_is_bit_exact(baseline, env, stop):
    root, tok = env
    out = root / f"resume{stop}"
    first = train(tiny_config(tok, root / "data"), out, stop_after=stop)
    assert first["interrupted"] == "stop_after" and len(first["losses"]) == stop
    second = train(tiny_config(tok, root / "data"), out, resume=True)
    assert second["start_step"] == stop
    assert first["losses"] + second["losses"] == baseline["losses"]  # exact float equality
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in rows] == baseline["losses"]


def test_branch_decay_from_stable_end_milestone(baseline, env):
    """Branching from `stable-end` with the same settings reproduces the decay; AdamW-only differs."""
    root, tok = env
    ckpt = Path(baseline["milestones"]["stable-end"])
    same = train(tiny_config(tok, root / "data"), root / "branch_muon", resume=ckpt)
    assert same["losses"] == baseline["losses"][8:]
    adam = train(tiny_config(tok, root / "data", optimizer__decay="adamw"), root / "branch_adam", resume=ckpt)
    assert adam["losses"][0] == baseline["losses"][8]  # same weights and batch at the branch point
    assert adam["losses"][1:] != baseline["losses"][9:]
    assert adam["optimizers"] == {"adamw": "AdamW"}


def test_sigterm_saves_and_resume_matches(env, tmp_path):
    """A real `slmkit train` process killed with SIGTERM mid-run, then `--resume`d."""
    root, tok = env
    cfg = tiny_config(tok, root / "data", train__steps=60, schedule__decay=10)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ref = train(cfg, tmp_path / "ref")
    cmd = [sys.executable, "-m", "slmkit.train", "train", str(path), "--out", str(tmp_path / "run")]
    envv = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=envv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 8:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0]
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, out
    done = len(metrics.read_text().splitlines())
    assert 8 <= done < 60, out
    assert (tmp_path / "run/checkpoints/LATEST").read_text().strip() == f"step_{done:07d}"
    rc = subprocess.run(cmd + ["--resume"], cwd=REPO, env=envv, capture_output=True, text=True, timeout=300)
    assert rc.returncode == 0, rc.stderr
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [r["loss"] for r in rows] == ref["losses"]


def test_nan_steps_are_skipped_then_stop(env, tmp_path):
    root, tok = env
    cfg = tiny_config(tok, root / "data", train__steps=8, train___inject_nan_steps=[2, 3])
    res = train(cfg, tmp_path / "skip")
    rows = [json.loads(x) for x in (tmp_path / "skip/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r.get("skipped")] == [2, 3] and res["completed"]
    cfg = tiny_config(tok, root / "data", train__steps=12, train__max_bad_steps=3, checkpoint__every=2,
                      train___inject_nan_steps=[5, 6, 7])
    with pytest.raises(SlmkitError, match=r"step 7: 3 consecutive non-finite.*step_0000004"):
        train(cfg, tmp_path / "stop")
    assert (tmp_path / "stop/checkpoints/step_0000004").is_dir()


def test_keep_last_prunes_rolling_but_not_milestones(env, tmp_path):
    root, tok = env
    train(tiny_config(tok, root / "data", checkpoint__every=2, checkpoint__keep_last=2), tmp_path / "k")
    names = sorted(p.name for p in (tmp_path / "k/checkpoints").iterdir() if p.is_dir())
    assert names == ["final", "stable-end", "step_0000008", "step_0000010"]


def test_fp8_emulated_training_decreases_loss(env, tmp_path):
    root, tok = env
    cfg = tiny_config(tok, root / "data", train__steps=30, train__precision="fp8", fp8__min_dim=0,
                      optimizer__decay="adamw")
    res = train(cfg, tmp_path / "fp8")
    assert res["fp8_backend"] == "emulate" and res["fp8_layers"] == 14
    first, last = sum(res["losses"][:3]) / 3, sum(res["losses"][-3:]) / 3
    assert last < first - 0.5, res["losses"]
    # the checkpoint is a plain model (FP8 is a training-time detail)
    from slmkit.model.checkpoint import load_checkpoint

    model, _ = load_checkpoint(res["checkpoint"])
    assert type(model.layers[0].mlp.up_proj) is torch.nn.Linear


def test_bf16_autocast_and_cosine_run(env, tmp_path):
    root, tok = env
    res = train(tiny_config(tok, root / "data", train__steps=2, train__precision="bf16", schedule__type="cosine",
                            optimizer__decay="adamw"), tmp_path / "bf16")
    assert res["completed"] and all(map(lambda x: x == x, res["losses"])) and res["optimizers"] == {"adamw": "AdamW"}
