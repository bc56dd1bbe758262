"""Parity gates on text that fits the model: the held-out gate_text.txt stored with a checkpoint, then
--gate-text FILE, the generic passage last — and every report and CLI line says which one was used.

An in-domain model (the demo recipe on the synthetic arithmetic corpus) is confidently wrong on generic
prose (perplexity in the hundreds of thousands), where q4_k_m rounding noise moves perplexity and top-1
a lot and says nothing about the export; on its own held-out problems the same file is within 0.3%.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from slmkit.errors import SlmkitError


def _train(out: Path, steps: int, quick: bool) -> Path:
    from slmkit.corpus.synthetic import training_texts
    from slmkit.model.tokenizer import train_bpe
    from slmkit.train.api import demo_config, train

    train_bpe(training_texts(5000, seed=0), 1024, out / "tok")
    cfg = demo_config(tokenizer_dir=out / "tok", quick=quick, steps=None if quick else steps)
    cfg["train"]["steps"] = steps
    return Path(train(cfg, out / "train")["checkpoint"])


def _heldout_text(checkpoint: Path) -> str:
    """What the trainer records as gate_text.txt: held-out problems in the training format."""
    from slmkit.corpus.synthetic import heldout_problems
    from slmkit.model.tokenizer import load_tokenizer

    tok = load_tokenizer(checkpoint)
    return "".join(p.text() + (tok.eos_token or "") for p in heldout_problems(40))


@pytest.fixture(scope="module")
def in_domain(tmp_path_factory):
    """The demo recipe, 150 quick steps (about a minute on 2 cores); the trainer records its gate text."""
    root = tmp_path_factory.mktemp("indomain")
    ckpt = _train(root, 150, quick=True)
    model = root / "model"
    shutil.copytree(ckpt, model)
    return model


@pytest.mark.slow
def test_the_trainer_records_held_out_problems_as_every_checkpoints_gate_text(in_domain):
    from slmkit.corpus.synthetic import heldout_problems, is_heldout_question
    from slmkit.model.checkpoint import read_meta

    text = (in_domain / "gate_text.txt").read_text(encoding="utf-8")
    assert text == _heldout_text(in_domain)
    assert all(is_heldout_question(p.question) for p in heldout_problems(40))
    assert "held-out problems" in read_meta(in_domain)["meta"]["gate_text"]


@pytest.mark.slow
def test_gate_uses_the_checkpoint_text_and_says_so(in_domain, tmp_path, capsys):
    from slmkit.cli import main
    from slmkit.export.gguf import export_gguf

    res = export_gguf(in_domain, tmp_path / "own.gguf", "q4_k_m", n_threads=2)
    own = res["parity"]
    assert own["passed"] and own["gate_text"]["kind"] == "checkpoint"
    assert own["gate_text"]["path"] == str(in_domain / "gate_text.txt")
    stored = json.loads((tmp_path / "own.gguf.parity.json").read_text())
    assert stored["gate_text"]["label"].startswith("the held-out text stored with the model")

    # the same model gated on the generic passage (no gate_text.txt): a far noisier measurement
    bare = tmp_path / "bare"
    shutil.copytree(in_domain, bare)
    (bare / "gate_text.txt").unlink()
    generic = export_gguf(bare, tmp_path / "generic.gguf", "q4_k_m", n_threads=2,
                          bounds={"min_top1": None, "max_ppl_ratio": None})["parity"]
    assert generic["gate_text"]["kind"] == "generic"
    assert generic["ppl_reference"] > 1000 * own["ppl_reference"]  # the model does not know generic text
    assert abs(generic["ppl_ratio"] - 1) > 10 * abs(own["ppl_ratio"] - 1)
    assert generic["top1_agreement"] < own["top1_agreement"] - 0.1

    # --gate-text FILE wins over the stored text, and the CLI line names it
    text = tmp_path / "mine.txt"
    text.write_text((in_domain / "gate_text.txt").read_text()[:3000])
    assert main(["export", "gguf", str(in_domain), str(tmp_path / "cli.gguf"), "--type", "q8_0", "--gate-text", str(text)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"gate text: --gate-text {text}" in line
    assert main(["export", "gguf", str(in_domain), str(tmp_path / "cli2.gguf"), "--type", "q8_0"]) == 0
    assert "gate text: the held-out text stored with the model" in capsys.readouterr().out


@pytest.mark.slow
def test_export_hf_carries_the_gate_text_and_onnx_picks_it_up(in_domain, tmp_path, capsys):
    from slmkit.cli import main
    from slmkit.export.onnx import _default_batches
    from slmkit.export.parity import gate_batches
    from slmkit.model.hf import load_any
    from slmkit.model.tokenizer import load_tokenizer

    hf = tmp_path / "hf"
    assert main(["export", "hf", str(in_domain), str(hf)]) == 0
    assert "with the model's gate text gate_text.txt" in capsys.readouterr().out
    assert (hf / "gate_text.txt").read_text() == (in_domain / "gate_text.txt").read_text()
    model = load_any(hf)
    batches = _default_batches(model, hf, hf)  # what `slmkit export onnx` gates on by default
    assert batches.source["kind"] == "checkpoint" and batches.source["path"] == str(hf / "gate_text.txt")
    tok = load_tokenizer(hf)
    expected = tok.encode((hf / "gate_text.txt").read_text(), add_special_tokens=False)
    assert [t for b in batches for t in b] == expected[:sum(map(len, batches))]
    assert len(batches) == 8 and all(len(b) == 64 for b in batches)
    generic = gate_batches(None, tok, model.cfg.vocab_size)
    assert generic.source["kind"] == "generic"


def test_gate_text_errors_are_one_line(tmp_path, tiny_tokenizer_dir):
    from slmkit.export.parity import gate_batches
    from slmkit.model.tokenizer import load_tokenizer

    tok = load_tokenizer(tiny_tokenizer_dir)
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(SlmkitError, match="gate text file is empty"):
        gate_batches(None, tok, 512, empty)
    with pytest.raises(SlmkitError, match="gate text file not found"):
        gate_batches(None, tok, 512, tmp_path / "missing.txt")
    binary = tmp_path / "bin.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(SlmkitError, match="UTF-8 text expected"):
        gate_batches(None, tok, 512, binary)
    one = tmp_path / "one.txt"
    one.write_text("7")
    with pytest.raises(SlmkitError, match="fewer than 2 tokens"):
        gate_batches(None, tok, 512, one)


@pytest.mark.long
def test_the_demo_model_passes_q4_k_m_on_its_own_text_where_the_generic_text_fails(tmp_path):
    """The issue's case: the full demo recipe (2,100 steps, ~10 min) fails its q4_k_m gate on the generic
    passage (ratio 1.43 > 1.15 in the report) and passes on its held-out problems."""
    from slmkit.demo import DEMO_STEPS
    from slmkit.export.gguf import export_gguf

    steps = int(os.environ.get("SLMKIT_DEMO_STEPS", DEMO_STEPS))
    ckpt = _train(tmp_path, steps, quick=False)
    stored = (ckpt / "gate_text.txt").read_text(encoding="utf-8")  # the trainer wrote it
    (ckpt / "gate_text.txt").unlink()
    with pytest.raises(SlmkitError, match="parity gate failed on the built-in generic text"):
        export_gguf(ckpt, tmp_path / "generic.gguf", "q4_k_m", n_threads=2)
    (ckpt / "gate_text.txt").write_text(stored, encoding="utf-8")
    res = export_gguf(ckpt, tmp_path / "own.gguf", "q4_k_m", n_threads=2)
    assert res["parity"]["passed"] and res["parity"]["gate_text"]["kind"] == "checkpoint"
