"""`slmkit eval` killed with SIGKILL mid-run and rerun continues from lm-eval's request cache and ends with the
same scores and per-sample outputs as one uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, tiny_tokenizer_dir):
    from slmkit.model.config import ModelConfig
    from slmkit.model.hf import export_hf
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.model.transformer import Transformer

    tok = load_tokenizer(tiny_tokenizer_dir)
    cfg = ModelConfig.from_preset("nano", vocab_size=512, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("killeval") / "model"
    export_hf(Transformer(cfg).eval(), out, tiny_tokenizer_dir)
    return out


def _argv(model, out):
    return [sys.executable, "-m", "slmkit.cli", "eval", str(model), "--tasks", "arc_easy,gsm8k", "--limit", "6",
            "--out", str(out), "--threads", "1", "--batch-size", "2"]


def _cached_rows(db) -> int:
    """Committed rows of lm-eval's request cache. Opened read-write: after a SIGKILL mid-commit the database has a
    hot journal that only a writing connection rolls back (a read-only one fails and would count 0)."""
    if not db.is_file():
        return 0
    try:
        con = sqlite3.connect(str(db), timeout=5)
        try:
            return sum(con.execute(f"select count(*) from '{t}'").fetchone()[0]
                       for (t,) in con.execute("select name from sqlite_master where type='table'"))
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _outputs(run):
    rec = json.loads((run / "results.json").read_text())
    samples = sorted(((s["task"], s["doc_id"], s.get("filter"), json.dumps(s["resps"])) for s in
                      map(json.loads, (run / "samples.jsonl").read_text().splitlines())))
    return [(s["name"], s["value"]) for s in rec["scores"]], samples


@pytest.mark.slow
def test_sigkilled_eval_resumes_to_the_uninterrupted_result(tiny_model, tmp_path, data_dir):
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    whole = tmp_path / "whole"
    subprocess.run(_argv(tiny_model, whole), check=True, capture_output=True, env=env, timeout=1200)

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_argv(tiny_model, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    db = killed / "requests_cache_rank0.db"
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and _cached_rows(db) < 1:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before any kill could land (make it longer)"
    assert _cached_rows(db) >= 1, "no request reached lm-eval's cache within 900 s"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _cached_rows(db)
    assert done_before >= 1 and not (killed / "results.json").exists()

    rerun = subprocess.run(_argv(tiny_model, killed), capture_output=True, text=True, env=env, timeout=1200)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert _outputs(killed) == _outputs(whole)
    assert _cached_rows(db) >= done_before
