"""The long-context stage: phase `long` after the schedule, its own sequence length, RoPE base, LR and
data (windows inside one document), tokens per step kept; bit-exact resume across the boundary;
the exported HF folder carries the new RoPE base so stock transformers matches at long positions."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from slmkit.train.api import train
from slmkit.train.testing import tiny_config, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("one_thread")

LONG = {"steps": 6, "seq_len": 64, "rope_theta": 80000.0, "lr": 0.003, "warmup": 2, "decay": 2, "align": "within_doc"}


def _cfg(tok, data, **kw):
    # long documents: the shipped corpus (GSM8K problems run to a few hundred tokens here)
    cfg = tiny_config(tok, data, train__steps=12, long_context=LONG,
                      checkpoint__milestones=["stable-end", "decay-end"], **kw)
    cfg["data"]["sources"]["docs"] = {"type": "jsonl", "paths": ["$SLMKIT_DATA/pretrain_corpus/math_gsm8k_train.jsonl.gz"],
                                      "max_docs": 300}
    cfg["data"]["mix"]["long"] = {"docs": 1.0}
    return cfg


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("long")
    tok = tiny_tokenizer(root / "tok")
    full = train(_cfg(tok, root / "data"), root / "full")
    return root, tok, full


def test_stage_runs_after_the_schedule_with_its_own_settings(env):
    root, tok, full = env
    rows = [json.loads(x) for x in (root / "full/metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["stable"] * 8 + ["decay"] * 4 + ["long"] * 6
    tokens = np.diff([0] + [r["tokens"] for r in rows])
    assert set(tokens) == {4 * 32}  # 4 rows x 32 before, 2 rows x 64 in the stage: same tokens per step
    lrs = [r["lr"] for r in rows[12:]]
    assert lrs[0] < lrs[1] == pytest.approx(0.003) and lrs[-1] < lrs[1]  # warmup, plateau, decay
    before = json.loads((root / "full/checkpoints/decay-end/slmkit.json").read_text())["model"]
    after = json.loads((root / "full/checkpoints/final/slmkit.json").read_text())["model"]
    assert (before["rope_theta"], before["max_seq_len"]) == (10000.0, 64)
    assert (after["rope_theta"], after["max_seq_len"]) == (80000.0, 64)
    assert full["optimizers"] == {"adamw": "AdamW", "muon": "Muon"}  # Muon carries on into the stage


@pytest.mark.parametrize("stop", [12, 14])  # exactly at the boundary, and inside the stage
def test_resume_is_bit_exact_across_the_long_context_boundary(env, stop):
    root, tok, full = env
    out = root / f"r{stop}"
    first = train(_cfg(tok, root / "data"), out, stop_after=stop)
    second = train(_cfg(tok, root / "data"), out, resume=True)
    assert second["start_step"] == stop and first["losses"] + second["losses"] == full["losses"]
    assert second["rope_theta"] == 80000.0


def test_windows_stay_inside_one_document(env):
    from slmkit.train.data import MixtureSampler, open_sources

    root, tok, _ = env
    cfg = _cfg(tok, root / "data")
    from slmkit.train.config import load_config

    cfg, _ = load_config(cfg)
    sources = open_sources(cfg, tok, root / "data", progress=False)
    eos = json.loads((sources["docs"].index_files[0].parent.parent / "manifest.json").read_text())["eos_id"]
    inside = MixtureSampler(sources, {"long": {"docs": 1.0}}, 0, 64, align="within_doc")
    packed = MixtureSampler(sources, {"long": {"docs": 1.0}}, 0, 64, align="token")
    rows = np.concatenate([inside.batch(s, "long", 16) for s in range(20)])
    assert not (rows[:, :-1] == eos).any()  # an end-of-text may only close the window
    crossing = np.concatenate([packed.batch(s, "long", 16) for s in range(20)])
    assert (crossing[:, :-1] == eos).any()  # (packed windows do cross documents: the check can fail)


def test_exported_hf_folder_honours_the_new_rope_base_beyond_the_old_length(env, tmp_path):
    from transformers import LlamaForCausalLM

    from slmkit.model.checkpoint import load_checkpoint
    from slmkit.model.hf import export_hf

    root, _, full = env
    model, _ = load_checkpoint(full["checkpoint"])
    export_hf(model, tmp_path / "hf")
    hf = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32).eval()
    ids = torch.randint(0, model.cfg.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4)
    model.cfg.rope_theta = 10000.0  # the old base gives different logits at late positions: the check bites
    with torch.no_grad():
        assert not torch.allclose(model(ids)[:, 40:], theirs[:, 40:], atol=1e-3)


@pytest.mark.slow  # torch.compile on CPU: tens of seconds
def test_compiled_trainer_matches_eager_through_every_phase(env, tmp_path):
    """train.compile=true runs the same computation (to float tolerance) through stable, the Muon
    decay and the long-context stage (a new RoPE base and length: a recompile)."""
    root, tok, full = env
    res = train(_cfg(tok, root / "data", train__compile=True), tmp_path / "c")
    assert res["compiled"] is True, res["compile"]
    assert res["losses"] == pytest.approx(full["losses"], rel=1e-3, abs=1e-3)


def test_compile_auto_decision():
    from slmkit.train.trainer import COMPILE_MIN_CPU_STEPS, want_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert want_compile("auto", cuda, 10)[0] is True
    assert want_compile("auto", cpu, COMPILE_MIN_CPU_STEPS - 1)[0] is False
    assert want_compile(True, cpu, 1)[0] is True and want_compile(False, cuda, 10**6)[0] is False
