"""Latency bench (slmkit.bench.latency*): end-to-end runs on a tiny model, bound arithmetic, shape sweep, CLI.

No timing assertions: the machine is shared; we check that every number is present and sane.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.model.checkpoint import save_checkpoint
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer

CFG = dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=256)
HAS_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """Bench artifacts and random models go to a private cache (workers inherit the setting)."""
    old = os.environ.get("SLMKIT_CACHE")
    path = tmp_path_factory.mktemp("cache")
    os.environ["SLMKIT_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SLMKIT_CACHE", None)
    else:
        os.environ["SLMKIT_CACHE"] = old


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, cache) -> Path:
    from slmkit.corpus.synthetic import training_texts
    from slmkit.model.tokenizer import train_bpe

    root = tmp_path_factory.mktemp("tiny")
    train_bpe(training_texts(300, seed=1), 320, root / "tok")
    torch.manual_seed(0)
    return save_checkpoint(root / "ckpt", Transformer(ModelConfig.from_preset("nano", **CFG)), tokenizer_dir=root / "tok")


def _check_row(row: dict, prompt_tokens: int, new_tokens: int) -> None:
    assert row["ok"], row.get("error")
    assert row["ttft_ms"] > 0 and row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0
    assert row["new_tokens_done"] == [new_tokens] * len(row["new_tokens_done"])  # EOS ignored
    assert 30 < row["peak_rss_mb"] < 4000
    assert row["file_mb"] > 0 and row["bytes_per_token"] > 0 and row["bound_tok_s"] > 0
    assert row["ratio_to_bound"] == pytest.approx(row["decode_tok_s"] / row["bound_tok_s"], rel=1e-2, abs=1e-4)
    for rep in row["repeats"]:  # prefill speed is the prompt over the time to first token
        assert rep["prefill_tok_s"] * rep["ttft_s"] == pytest.approx(prompt_tokens, rel=0.02)
    assert row["best_decode_tok_s"] >= row["decode_tok_s"]


def _check_files(report: dict) -> None:
    files = report["files"]
    data = json.loads(Path(files["json"]).read_text())
    assert data["results"] == json.loads(json.dumps(report["results"]))
    assert "| backend |" in Path(files["markdown"]).read_text()
    assert Path(files["plot"]).read_bytes()[:4] == b"\x89PNG"


def test_bench_latency_torch(tiny, tmp_path):
    from slmkit.bench.latency import bench_latency

    report = bench_latency([tiny], "torch", prompt_tokens=24, new_tokens=8, repeats=2, threads=1,
                           out_dir=tmp_path / "out", progress=False, bandwidth_mb=64)
    (row,) = report["results"]
    _check_row(row, 24, 8)
    assert row["backend"] == "torch" and row["qtype"] == "f32"
    n = Transformer(ModelConfig.from_preset("nano", **CFG)).num_params()
    assert row["weight_bytes_per_token"] == 4 * n  # tied embedding: read once for the logits
    assert row["kv_bytes_per_token"] == int(2 * 2 * 2 * 16 * 4 * (24 + 8 / 2))
    bw = report["machine"]["bandwidth"]
    assert 0 < bw["copy_gbps"] < 10_000 and len(bw["readings_copy_gbps"]) == 2  # a measurement, not a speed target (it ran at 0.24 GB/s starved under nice 19)
    assert report["summary"][str(tiny)]["best_per_backend"]["torch"]["decode_tok_s"] == row["decode_tok_s"]
    _check_files(report)


@pytest.mark.skipif(not (HAS_LLAMA and HAS_ORT), reason="llama-cpp-python / onnxruntime not installed")
def test_bench_latency_llamacpp_and_onnx(tiny, tmp_path):
    from slmkit.export.onnx import export_onnx
    from slmkit.bench.latency import bench_latency

    # an ONNX folder is benchmarked as it is (TorchScript exporter: 4x faster to build than dynamo here)
    onnx_dir = tmp_path / "onnx"
    export_onnx(tiny, onnx_dir, int8=False, parity=False, exporter="torchscript")
    report = bench_latency([tiny, onnx_dir], "llama.cpp", prompt_tokens=16, new_tokens=6, repeats=1, threads=1,
                           gguf_types=["f16", "q8_0", "q8_0:norepack", "q4_0:repack"], raw_llama=["q8_0"],
                           parity=False, out_dir=tmp_path / "out", progress=False, bandwidth_mb=64)
    rows = {(r["backend"], r["qtype"]): r for r in report["results"]}
    assert set(rows) == {("llama.cpp", "f16"), ("llama.cpp", "q8_0"), ("raw-llama.cpp", "q8_0"),
                         ("llama.cpp", "q8_0:norepack"), ("llama.cpp", "q4_0:repack"), ("onnxruntime", "fp32")}
    for row in rows.values():
        _check_row(row, 16, 6)
    assert rows[("llama.cpp", "q8_0")]["file_mb"] < rows[("llama.cpp", "f16")]["file_mb"]
    assert rows[("llama.cpp", "q8_0:norepack")]["runtime"]["extra_bufts"] is False
    repack = rows[("llama.cpp", "q4_0:repack")]["runtime"]  # CPU_REPACK placement without AMX
    assert repack["repack_only"] is True and repack["repacked_tensors"] == 2 * 7
    assert rows[("onnxruntime", "fp32")]["model"] == str(onnx_dir)
    summary = report["summary"][str(tiny)]
    assert summary["fastest_gguf"]["qtype"] in ("f16", "q8_0", "q8_0:norepack", "q4_0:repack")
    (pair,) = summary["runtime_vs_raw_llama_cpp"]
    assert pair["qtype"] == "q8_0" and pair["ratio"] > 0
    _check_files(report)


def test_bound_arithmetic(tiny, tmp_path):
    from slmkit.model.hf import export_hf
    from slmkit.bench.bound import decode_bound, inspect_artifact

    info = inspect_artifact(tiny, "torch")
    assert (info.n_layers, info.n_kv_heads, info.head_dim, info.kv_dtype_bytes) == (2, 2, 16, 4)
    assert info.kv_bytes_per_position() == 2 * 2 * 2 * 16 * 4
    b = decode_bound(info, 10.0, 100, 20)
    assert b["bytes_per_token"] == info.weight_bytes_per_token + info.kv_bytes_per_position() * 110
    assert b["bound_tok_s"] == pytest.approx(10e9 / b["bytes_per_token"], rel=1e-3)
    torch.manual_seed(1)
    untied = Transformer(ModelConfig.from_preset("nano", **CFG, tie_embeddings=False))
    hf = export_hf(untied, tmp_path / "hf")
    info = inspect_artifact(hf, "torch")  # untied: the embedding is gathered one row at a time
    assert info.weight_bytes_per_token == 4 * (untied.num_params() - 320 * 64 + 64)


def test_shape_configs_have_equal_size():
    from slmkit.bench.shapes import parse_count, shape_config

    assert parse_count("20M") == 20_000_000 and parse_count("1.3B") == 1_300_000_000
    sizes = [shape_config(20_000_000, L, 32000).num_params() for L in (4, 8, 16, 32)]
    assert max(abs(s - 20_000_000) for s in sizes) < 0.03 * 20_000_000
    widths = [shape_config(20_000_000, L, 32000).d_model for L in (4, 32)]
    assert widths[0] > widths[1]
    with pytest.raises(SlmkitError, match="--params"):
        parse_count("lots")


def test_bench_shapes_end_to_end(cache, tmp_path):
    from slmkit.bench.shapes import bench_shapes

    report = bench_shapes("1M", depths=[2, 6], vocab_size=320, prompt_tokens=8, new_tokens=4, repeats=1, threads=1,
                          out_dir=tmp_path / "shapes", progress=False, bandwidth_mb=64)
    assert [r["config"]["n_layers"] for r in report["results"]] == [2, 6]
    assert all(r["ok"] and r["decode_tok_s"] > 0 for r in report["results"])
    assert report["results"][0]["config"]["d_model"] > report["results"][1]["config"]["d_model"]
    assert (tmp_path / "shapes" / "shapes.png").read_bytes()[:4] == b"\x89PNG"
    assert "| layers |" in (tmp_path / "shapes" / "shapes.md").read_text()


def test_cli_and_errors(tiny, tmp_path, capsys):
    from slmkit.bench.latency import bench_latency
    from slmkit.bench.cli import add_commands

    parser = argparse.ArgumentParser(prog="slmkit")
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["bench", "latency", str(tiny), "--backends", "torch", "--prompt-tokens", "8",
                              "--new-tokens", "4", "--repeats", "1", "--threads", "1", "--out", str(tmp_path / "cli"),
                              "--bandwidth-mb", "64"])
    assert args.func(args) == 0
    assert "| torch | f32 |" in capsys.readouterr().out
    with pytest.raises(SlmkitError, match="unknown --backends entry 'tensorrt'"):
        bench_latency([tiny], "torch,tensorrt", progress=False)
    with pytest.raises(SlmkitError, match="not found"):
        bench_latency([tmp_path / "missing"], "torch", progress=False)
    with pytest.raises(SlmkitError, match="--new-tokens"):
        bench_latency([tiny], "torch", new_tokens=1, progress=False)
    args = parser.parse_args(["bench", "latency"])
    with pytest.raises(SlmkitError, match="MODEL or --preset"):
        args.func(args)
