"""Bad input through the real CLI (a subprocess of `slmkit`): exit code 2, ONE line `error: ...` that names
the file, field or value, no traceback, and nothing already written is damaged."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SLMKIT = [sys.executable, "-m", "slmkit.cli"]


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_tokenizer_dir):
    """A tiny checkpoint, its HF folder, GGUF and ONNX export, damaged copies of each, and bad text files."""
    import torch

    from slmkit.export.gguf import write_gguf
    from slmkit.export.onnx import export_onnx
    from slmkit.model.checkpoint import save_checkpoint
    from slmkit.model.config import ModelConfig
    from slmkit.model.hf import export_hf
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.model.transformer import Transformer

    root = tmp_path_factory.mktemp("bad")
    tok = load_tokenizer(tiny_tokenizer_dir)
    cfg = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=128,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Transformer(cfg)
    save_checkpoint(root / "ckpt", model, tokenizer_dir=tiny_tokenizer_dir)
    export_hf(model, root / "hf", tiny_tokenizer_dir)
    write_gguf(model, root / "m.gguf", tiny_tokenizer_dir)
    export_onnx(root / "ckpt", root / "onnx", parity=False)

    (root / "trunc.gguf").write_bytes((root / "m.gguf").read_bytes()[:5000])
    shutil.copytree(root / "ckpt", root / "ckpt_trunc")
    st = (root / "ckpt" / "model.safetensors").read_bytes()
    (root / "ckpt_trunc" / "model.safetensors").write_bytes(st[: len(st) // 3])
    shutil.copytree(root / "hf", root / "hf_trunc")
    (root / "hf_trunc" / "model.safetensors").write_bytes(st[:7])  # shorter than a safetensors header
    shutil.copytree(root / "onnx", root / "onnx_trunc")
    onnx_bytes = (root / "onnx" / "model.onnx").read_bytes()
    (root / "onnx_trunc" / "model.onnx").write_bytes(onnx_bytes[: len(onnx_bytes) // 2])
    shutil.copytree(root / "ckpt", root / "ckpt_future")
    meta = json.loads((root / "ckpt_future" / "slmkit.json").read_text())
    meta["format_version"] = 99
    (root / "ckpt_future" / "slmkit.json").write_text(json.dumps(meta))
    (root / "empty.txt").write_text("")
    (root / "latin1.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    (root / "bad.yaml").write_text("train: [1, 2\n")
    (root / "future.yaml").write_text("model: {preset: nano, frobnicate: 3}\n")
    (root / "notarun").mkdir()
    (root / "notarun" / "notes.txt").write_text("keep me")
    (root / "keep.gguf").write_bytes(b"previous export, must survive")
    (root / "keep_out").mkdir()
    (root / "keep_out" / "tokenizer.json").write_text('{"previous": true}')
    return root


def _cases(r: Path) -> list[tuple[str, list[str], str]]:
    """(name, argv, a fragment the error line must contain)."""
    return [
        ("no arguments", [], "no command"),
        ("unknown command", ["frobnicate"], "frobnicate"),
        ("eval: missing model", ["eval", str(r / "nope")], "nope: model not found"),
        ("eval: --limit not a number", ["eval", str(r / "hf"), "--limit", "abc"], "--limit"),
        ("eval: --limit negative", ["eval", str(r / "hf"), "--limit", "-3"], "--limit -3"),
        ("eval: extra arguments", ["eval", str(r / "hf"), "x1", "x2"], "x1 x2"),
        ("eval: unknown backend", ["eval", str(r / "hf"), "--backend", "tensorrt"], "tensorrt"),
        ("eval: unknown suite", ["eval", str(r / "hf"), "--suite", "nosuch"], "nosuch"),
        ("eval: truncated GGUF", ["eval", str(r / "trunc.gguf"), "--tasks", "arc_easy", "--limit", "1",
                                  "--out", str(r / "ev1")], "trunc.gguf"),
        ("eval compare: not a run", ["eval", "compare", str(r / "notarun")], "notarun"),
        ("data prepare: no sources", ["data", "prepare", "--out", str(r / "dp")], "no sources"),
        ("data prepare: no tokenizer", ["data", "prepare", "--source", "a=synthetic:10", "--out", str(r / "dp")],
         "--tokenizer"),
        ("data prepare: non-UTF-8 JSONL", ["data", "prepare", "--source", f"a={r / 'latin1.jsonl'}", "--tokenizer",
                                           str(r / "hf"), "--out", str(r / "dp2")], "latin1.jsonl"),
        ("train: malformed --set", ["train", "nano-demo", "--set", "foo"], "'foo'"),
        ("train: bad --set value", ["train", "nano-demo", "--set", "train.steps=abc", "--out", str(r / "t1")],
         "train.steps"),
        ("train: missing config", ["train", str(r / "missing.yaml")], "missing.yaml"),
        ("train: unparsable YAML", ["train", str(r / "bad.yaml")], "bad.yaml"),
        ("train: unknown model field", ["train", str(r / "future.yaml"), "--out", str(r / "t2")], "frobnicate"),
        ("train: --resume on a folder that is not a run", ["train", "nano-demo", "--resume", "--out",
                                                           str(r / "notarun")], "notarun"),
        ("tokenizer train: empty file", ["tokenizer", "train", str(r / "empty.txt"), "--out", str(r / "keep_out")],
         "empty.txt"),
        ("tokenizer train: non-UTF-8 line", ["tokenizer", "train", str(r / "latin1.jsonl"), "--out",
                                             str(r / "keep_out")], "latin1.jsonl:2"),
        ("bench shapes: --depths x", ["bench", "shapes", "--depths", "x"], "--depths"),
        ("bench latency: nothing to bench", ["bench", "latency"], "MODEL"),
        ("export onnx: --bound without --int8", ["export", "onnx", str(r / "hf"), str(r / "o1"), "--bound",
                                                 "min_top1=0.9"], "--int8"),
        ("export gguf: unknown type", ["export", "gguf", str(r / "hf"), str(r / "x.gguf"), "--type", "q9"], "q9"),
        ("export gguf: not a .gguf name", ["export", "gguf", str(r / "hf"), str(r / "x.txt")], "x.txt"),
        ("export gguf: truncated safetensors", ["export", "gguf", str(r / "ckpt_trunc"), str(r / "keep.gguf")],
         "model.safetensors"),
        ("export hf: checkpoint from a newer format", ["export", "hf", str(r / "ckpt_future"), str(r / "h1")],
         "format_version 99"),
        ("export onnx: truncated safetensors", ["export", "onnx", str(r / "hf_trunc"), str(r / "o2")],
         "model.safetensors"),
        ("generate: missing model", ["generate", str(r / "nope"), "hi"], "nope"),
        ("generate: truncated GGUF", ["generate", str(r / "trunc.gguf"), "hi"], "trunc.gguf"),
        ("generate: truncated ONNX", ["generate", str(r / "onnx_trunc"), "hi"], "model.onnx"),
        ("generate: truncated safetensors", ["generate", str(r / "ckpt_trunc"), "hi"], "model.safetensors"),
        ("merge: bad --lambda", ["merge", str(r / "hf"), str(r / "hf"), "--lambda", "2x", str(r / "m1")], "2x"),
        ("merge: truncated input", ["merge", str(r / "hf"), str(r / "hf_trunc"), "--lambda", "0.5", str(r / "m2")],
         "hf_trunc"),
        ("models pull: unknown model", ["models", "pull", "nope"], "nope"),
        ("agent run: unknown environment", ["agent", "run", "nosuchenv", str(r / "hf")], "nosuchenv"),
        ("agent run: missing corpus", ["agent", "run", "hotpotqa", str(r / "hf"), "--corpus", str(r / "nocorpus")],
         "nocorpus"),
        ("agent run: truncated GGUF", ["agent", "run", "hotpotqa", str(r / "trunc.gguf"), "--limit", "1", "--out",
                                       str(r / "a1")], "trunc.gguf"),
        ("agent show: not a run", ["agent", "show", str(r / "notarun")], "notarun"),
        ("repro: unknown experiment", ["repro", "nosuch"], "nosuch"),
    ]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(SLMKIT + argv, capture_output=True, text=True, timeout=600, env=env)


def test_bad_inputs_give_one_error_line_and_exit_2(files):
    cases = _cases(files)
    assert len(cases) >= 30
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        procs = list(pool.map(lambda c: _run(c[1]), cases))
    problems = []
    for (name, argv, fragment), proc in zip(cases, procs):
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        why = []
        if proc.returncode != 2:
            why.append(f"exit {proc.returncode}")
        if "Traceback" in proc.stderr:
            why.append("traceback")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            why.append(f"{len(lines)} stderr lines")
        elif fragment not in lines[0]:
            why.append(f"does not name {fragment!r}")
        if why:
            problems.append(f"{name}: {', '.join(why)}: {proc.stderr.strip()[-400:]!r}")
    assert not problems, "\n".join(problems)
    # nothing already written was damaged by the failed commands
    assert (files / "keep.gguf").read_bytes() == b"previous export, must survive"
    assert (files / "keep_out" / "tokenizer.json").read_text() == '{"previous": true}'
    assert (files / "notarun" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (files / "notarun").iterdir()) == ["notes.txt"]
