"""Model interpolation / task arithmetic (slmkit.merge) and the `slmkit merge` commands."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.merge.core import interpolation, iter_tensors, merge, open_model, parse_lambdas, task_arithmetic
from slmkit.merge.cli import add_commands as add_merge_commands
from slmkit.model.checkpoint import load_checkpoint, save_checkpoint
from slmkit.model.config import ModelConfig
from slmkit.model.hf import export_hf, import_hf
from slmkit.model.transformer import Transformer

CFG = dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=128)


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    from slmkit.corpus.synthetic import training_texts
    from slmkit.model.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tok")
    train_bpe(training_texts(300, seed=1), 320, out)
    return out


def _model(seed: int, **over) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(ModelConfig.from_preset("nano", **{**CFG, **over})).eval()


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tok_dir):
    root = tmp_path_factory.mktemp("ckpt")
    paths = {}
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        paths[name] = save_checkpoint(root / name, _model(seed), tokenizer_dir=tok_dir)
    return paths


def _state(path) -> dict[str, torch.Tensor]:
    return dict(iter_tensors(path))


@pytest.mark.parametrize("lam", [1.0, 0.0, 0.5, 0.8])
def test_interpolation_math_checkpoint(ckpts, tmp_path, lam):
    out = merge(interpolation(ckpts["a"], ckpts["b"], lam), tmp_path / "m", progress=False)
    model, record = load_checkpoint(out)  # verifies the sha256 the merge recorded
    a, b, m = _state(ckpts["a"]), _state(ckpts["b"]), model.state_dict()
    assert set(m) == set(a)
    for name in a:
        if lam == 1.0:
            assert torch.equal(m[name], a[name]), name
        elif lam == 0.0:
            assert torch.equal(m[name], b[name]), name
        else:
            torch.testing.assert_close(m[name], lam * a[name] + (1 - lam) * b[name], rtol=1e-6, atol=1e-7)
    assert record["meta"]["merge"]["coefficients"] == [lam, 1 - lam]
    assert (out / "tokenizer.json").exists()


def test_task_arithmetic(ckpts, tmp_path):
    out = merge(task_arithmetic([ckpts["a"], ckpts["b"]], ckpts["c"], [0.7, 0.4]), tmp_path / "t", progress=False)
    a, b, c, m = _state(ckpts["a"]), _state(ckpts["b"]), _state(ckpts["c"]), _state(out)
    for name in a:
        torch.testing.assert_close(m[name], c[name] + 0.7 * (a[name] - c[name]) + 0.4 * (b[name] - c[name]),
                                   rtol=1e-5, atol=1e-6)
    # one model, λ=1: A's task vector added back to its base gives A
    single = merge(task_arithmetic([ckpts["a"]], ckpts["c"], 1.0), tmp_path / "s", progress=False)
    for name, value in _state(single).items():
        torch.testing.assert_close(value, a[name], rtol=0, atol=1e-6)


def test_sharded_hf_output_loads_with_transformers(tmp_path, tok_dir):
    from transformers import AutoModelForCausalLM

    a = export_hf(_model(1), tmp_path / "hf_a", tok_dir)
    b = export_hf(_model(2), tmp_path / "hf_b", tok_dir)
    out = merge(interpolation(a, b, 0.5), tmp_path / "hf_m", max_shard_bytes=60_000, progress=False)
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) > 2 and (out / "model.safetensors.index.json").exists()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == {s.name for s in shards}
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    sa, sb = _state(a), _state(b)
    hf_state = hf.state_dict()
    for name in sa:
        torch.testing.assert_close(hf_state[name], 0.5 * sa[name] + 0.5 * sb[name], rtol=1e-6, atol=1e-7)
    ids = torch.tensor([[1, 5, 9, 42]])
    native = import_hf(out)  # slmkit's own importer reads the shards too
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, native(ids), rtol=1e-4, atol=1e-4)


def test_mismatched_architecture_is_rejected(ckpts, tmp_path, tok_dir):
    deeper = save_checkpoint(tmp_path / "deep", _model(4, n_layers=3), tokenizer_dir=tok_dir)
    with pytest.raises(SlmkitError, match="field 'n_layers'=3 differs"):
        merge(interpolation(ckpts["a"], deeper, 0.5), tmp_path / "x", progress=False)
    mup = save_checkpoint(tmp_path / "mup", _model(5, scale_emb=6.0), tokenizer_dir=tok_dir)
    with pytest.raises(SlmkitError, match="field 'scale_emb'"):
        merge(interpolation(ckpts["a"], mup, 0.5), tmp_path / "x", progress=False)
    hf = export_hf(_model(2), tmp_path / "hf", tok_dir)
    with pytest.raises(SlmkitError, match="same format"):
        merge(interpolation(ckpts["a"], hf, 0.5), tmp_path / "x", progress=False)
    assert not (tmp_path / "x").exists()


def test_mismatched_tokenizer_is_rejected(ckpts, tmp_path):
    from slmkit.model.tokenizer import train_bpe

    other_tok = tmp_path / "tok2"
    train_bpe(["the quick brown fox jumps over the lazy dog " * 20, "hello world " * 30], 320, other_tok)
    other = save_checkpoint(tmp_path / "o", _model(6), tokenizer_dir=other_tok)
    with pytest.raises(SlmkitError, match="tokenizer differs .*token id"):
        merge(interpolation(ckpts["a"], other, 0.5), tmp_path / "x", progress=False)
    merge(interpolation(ckpts["a"], other, 0.5), tmp_path / "x", progress=False, check_tokenizer=False)


def _cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="slmkit")
    add_merge_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_merge_and_errors(ckpts, tmp_path):
    assert _cli(["merge", "--lambda", "0.25", str(ckpts["a"]), str(ckpts["b"]), str(tmp_path / "m")]) == 0
    assert open_model(tmp_path / "m").kind == "checkpoint"
    from slmkit.cli import main  # the documented order: options between the paths

    assert main(["merge", str(ckpts["a"]), str(ckpts["b"]), "--lambda", "0.25", str(tmp_path / "m1")]) == 0
    assert json.loads((tmp_path / "m1" / "merge.json").read_text())["coefficients"] == [0.25, 0.75]
    with pytest.raises(SlmkitError, match="--lambda is required"):
        _cli(["merge", str(ckpts["a"]), str(ckpts["b"]), str(tmp_path / "m2")])
    with pytest.raises(SlmkitError, match="not found"):
        _cli(["merge", str(ckpts["a"]), str(tmp_path / "nope"), str(tmp_path / "m3"), "--lambda", "0.5"])
    assert parse_lambdas("0:1:0.25") == [0.0, 0.25, 0.5, 0.75, 1.0]
    with pytest.raises(SlmkitError, match="--lambdas"):
        parse_lambdas("0,x")


def test_cli_sweep_builtin_and_command(ckpts, tmp_path):
    out = tmp_path / "sweep"
    assert _cli(["merge", "sweep", str(ckpts["a"]), str(ckpts["b"]), "--lambdas", "0,0.5,1", "--out", str(out),
                 "--limit", "2", "--max-new-tokens", "4"]) == 0
    report = json.loads((out / "sweep.json").read_text())
    assert [r["lambda"] for r in report["rows"]] == [0, 0.5, 1]
    for row in report["rows"]:
        assert row["perplexity"] > 1 and 0 <= row["mean_output_tokens"] <= 4 and 0 <= row["score"] <= 1
    assert (out / "sweep.png").stat().st_size > 1000 and "| lambda |" in (out / "sweep.md").read_text()
    assert not (out / "models").exists()
    script = tmp_path / "ev.py"
    script.write_text(textwrap.dedent("""
        import json, sys
        from pathlib import Path
        rec = json.loads((Path(sys.argv[1]) / "merge.json").read_text())
        print("log line")
        print(json.dumps({"results": {"acc": rec["coefficients"][0]}, "mean_output_tokens": 3}))
    """))
    out2 = tmp_path / "sweep2"
    _cli(["merge", "sweep", str(ckpts["a"]), str(ckpts["b"]), "--lambdas", "0.2,0.6", "--out", str(out2),
          "--eval", f"{sys.executable} {script} {{model}}", "--score-key", "results.acc"])
    rows = json.loads((out2 / "sweep.json").read_text())["rows"]
    assert [r["score"] for r in rows] == pytest.approx([0.2, 0.6])
    with pytest.raises(SlmkitError, match="placeholder"):
        _cli(["merge", "sweep", str(ckpts["a"]), str(ckpts["b"]), "--lambdas", "0.5", "--out", str(out2), "--eval", "true"])


RSS_SCRIPT = """
import resource, sys, json
import torch, safetensors.torch
from slmkit.merge.core import interpolation, merge
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
base = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark (VmHWM) to the current RSS
    f.write("5")
merge(interpolation(sys.argv[1], sys.argv[2], 0.3), sys.argv[3], max_shard_bytes=50_000_000, progress=False)
peak = status("VmHWM")
print(json.dumps({"base_kib": base, "peak_kib": peak}))
"""


def test_merge_peak_rss_is_a_few_tensors(tmp_path):
    """A ~200 MB model merges with a peak RSS increase far below 3× the model (one tensor per input at a time)."""
    from safetensors.torch import save_file

    n_tensors, shape = 24, (1024, 2048)  # 8 MiB fp32 each → 192 MiB per model
    for name, seed in (("a", 0), ("b", 1)):
        g = torch.Generator().manual_seed(seed)
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 2048}))
        save_file({f"model.layers.{i}.w": torch.randn(shape, generator=g) for i in range(n_tensors)},
                  str(folder / "model.safetensors"))
    model_bytes = n_tensors * shape[0] * shape[1] * 4
    proc = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "m")],
                          capture_output=True, text=True, check=True)
    rss = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"merge peak RSS growth {(rss['peak_kib'] - rss['base_kib']) / 1024:.0f} MiB for a {model_bytes / 2**20:.0f} MiB model")
    grew = (rss["peak_kib"] - rss["base_kib"]) * 1024
    assert grew < model_bytes, f"peak RSS grew {grew / 2**20:.0f} MiB for a {model_bytes / 2**20:.0f} MiB model"
    assert len(list((tmp_path / "m").glob("model-*.safetensors"))) == 5  # 5 × 8 MiB per 50 MB shard
    a, b, m = open_model(tmp_path / "a"), open_model(tmp_path / "b"), dict(iter_tensors(tmp_path / "m"))
    first = dict(iter_tensors(tmp_path / "a"))["model.layers.0.w"], dict(iter_tensors(tmp_path / "b"))["model.layers.0.w"]
    torch.testing.assert_close(m["model.layers.0.w"], 0.3 * first[0] + 0.7 * first[1])
    assert a.nbytes == b.nbytes == model_bytes
