"""`slmkit train` under torchrun (2 gloo processes on CPU) gives the one-process loss curve."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from slmkit.train.api import train
from slmkit.train.testing import tiny_config, tiny_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _torchrun(cfg: dict, tmp_path: Path, name: str) -> list[float]:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "slmkit.train", "train", str(path), "--out", str(tmp_path / name)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    rc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert rc.returncode == 0, rc.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows]


def _close(a: list[float], b: list[float], rel: float) -> None:
    assert len(a) == len(b)
    worst = max(abs(x - y) / abs(y) for x, y in zip(a, b))
    assert worst < rel, (worst, a, b)


def test_ddp_two_gloo_processes_match_one(tmp_path):
    """Same global batch (4 rows: 2 per rank), WSD with the AdamW→Muon switch at step 8."""
    tok = tiny_tokenizer(tmp_path / "tok")
    cfg = tiny_config(tok, tmp_path / "data")
    one = train(cfg, tmp_path / "one")["losses"]
    two = _torchrun(cfg, tmp_path, "two")
    _close(two, one, 1e-5)
    state = tmp_path / "two/checkpoints/final/trainer/state.pt"
    assert state.exists()


@pytest.mark.slow
def test_fsdp2_two_gloo_processes_match_one(tmp_path):
    tok = tiny_tokenizer(tmp_path / "tok")
    cfg = tiny_config(tok, tmp_path / "data", optimizer__decay="adamw", distributed__strategy="fsdp")
    one = train(cfg, tmp_path / "one")["losses"]
    two = _torchrun(cfg, tmp_path, "two")
    _close(two, one, 1e-5)
