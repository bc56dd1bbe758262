"""GGUF export: f32 matches torch within 1e-4 on odd shapes, lossy types pass their gates, bad files fail cleanly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import llama_cpp  # noqa: E402  (a core dependency: missing fails, not skips)
import gguf  # noqa: E402

from slmkit.corpus.synthetic import training_texts  # noqa: E402
from slmkit.errors import SlmkitError  # noqa: E402
from slmkit.export.gguf import export_gguf  # noqa: E402
from slmkit.formats.gguf import open_gguf, permute_rope, tensor_types, unpermute_rope  # noqa: E402
from slmkit.model.checkpoint import save_checkpoint  # noqa: E402
from slmkit.model.config import ModelConfig  # noqa: E402
from slmkit.model.tokenizer import train_bpe  # noqa: E402
from slmkit.model.transformer import Transformer  # noqa: E402

SHAPES = {
    # odd width, GQA 6/2, µP multipliers folded on export, tokenizer (≈620 ids) padded to vocab 1000
    "d96-gqa-mup": dict(vocab_size=1000, d_model=96, n_layers=3, n_heads=6, n_kv_heads=2, d_ff=200,
                        scale_emb=12.0, scale_depth=1.4, dim_model_base=32, init_std=0.1),
    # head_dim 24 != d_model/n_heads (key_length metadata), MHA, untied output, other rope/eps
    "d64-hd24-untied": dict(vocab_size=700, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=24, d_ff=160,
                            tie_embeddings=False, rope_theta=500000.0, norm_eps=1e-6),
    # MQA, one layer, rows multiples of 256, so K-quants need no fallback
    "d256-mqa": dict(vocab_size=640, d_model=256, n_layers=1, n_heads=8, n_kv_heads=1, d_ff=512),
}


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    texts = training_texts(200, seed=3) + ["The lighthouse keeper climbed 1887 stairs; photosynthesis, def fibonacci(n):"] * 4
    out = tmp_path_factory.mktemp("tok")
    train_bpe(texts, 600, out)
    return out


def make_checkpoint(root, tok_dir, name, seed=0):
    cfg = ModelConfig(max_seq_len=128, name=name, **SHAPES[name])
    torch.manual_seed(seed)
    model = Transformer(cfg).eval()
    path = root / name
    save_checkpoint(path, model, tok_dir)
    return path, model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory, tok_dir):
    root = tmp_path_factory.mktemp("ckpt")
    return {name: make_checkpoint(root, tok_dir, name, seed=i) for i, name in enumerate(SHAPES)}


@pytest.mark.parametrize("name", list(SHAPES))
def test_f32_matches_torch(tmp_path, ckpts, name):
    path, model = ckpts[name]
    out = tmp_path / f"{name}.gguf"
    result = export_gguf(path, out, "f32", model=model)
    report = result["parity"]
    assert out.exists() and report["passed"]
    assert report["max_rel_err"] < 1e-4
    assert report["top1_agreement"] == 1.0
    assert report["tokenizer_check"]["mismatches"] == 0
    on_disk = json.loads(out.with_name(out.name + ".parity.json").read_text())
    assert on_disk["passed"] and on_disk["max_rel_err"] == report["max_rel_err"]
    assert set(result["tensor_types"]) == {"F32"}
    names = {t.name for t in open_gguf(out).tensors}
    assert ("output.weight" in names) == (not model.cfg.tie_embeddings)


@pytest.mark.parametrize("qtype,ggml", [("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0"), ("q4_k_m", "Q4_K")])
def test_lossy_types_pass_their_gate(tmp_path, ckpts, qtype, ggml):
    path, model = ckpts["d256-mqa"]
    out = tmp_path / f"m-{qtype}.gguf"
    result = export_gguf(path, out, qtype, model=model)
    report = result["parity"]
    assert report["passed"] and report["type"] == qtype and report["bounds"]
    assert ggml in result["tensor_types"]
    assert report["top1_agreement"] >= 0.9 and report["ppl_ratio"] < 1.1
    print(f"{qtype}: rel {report['max_rel_err']:.2e} top1 {report['top1_agreement']:.3f} ppl ratio {report['ppl_ratio']:.4f}")


def test_failed_gate_exits_nonzero_and_keeps_no_file(tmp_path, ckpts, capsys):
    from slmkit.cli import main

    path, _ = ckpts["d256-mqa"]
    out = tmp_path / "strict.gguf"
    code = main(["export", "gguf", str(path), str(out), "--type", "f16", "--max-rel-err", "1e-9"])
    assert code == 2
    err = capsys.readouterr().err
    assert "parity gate failed" in err and "max relative logit error" in err
    assert not out.exists() and not list(tmp_path.glob(".strict*"))
    report = json.loads((tmp_path / "strict.gguf.parity.json").read_text())
    assert report["passed"] is False and report["failures"]


def test_cli_export_and_no_parity(tmp_path, ckpts, capsys):
    from slmkit.cli import main

    path, _ = ckpts["d96-gqa-mup"]
    assert main(["export", "gguf", str(path), str(tmp_path / "a.gguf")]) == 0
    assert "passed" in capsys.readouterr().out
    assert main(["export", "gguf", str(path), str(tmp_path / "b.gguf"), "--type", "q4_0", "--no-parity"]) == 0
    assert (tmp_path / "b.gguf").exists() and not (tmp_path / "b.gguf.parity.json").exists()
    assert "Q4_0" in tensor_types(tmp_path / "b.gguf")


def test_bad_inputs_give_slmkit_errors(tmp_path, ckpts):
    path, model = ckpts["d96-gqa-mup"]
    with pytest.raises(SlmkitError, match="unknown type 'q9_9'"):
        export_gguf(path, tmp_path / "x.gguf", "q9_9", model=model)
    with pytest.raises(SlmkitError, match=r"must end in \.gguf"):
        export_gguf(path, tmp_path / "x.bin", "f32", model=model)
    bare = tmp_path / "bare"
    save_checkpoint(bare, model)  # no tokenizer files
    with pytest.raises(SlmkitError, match="no tokenizer.json"):
        export_gguf(bare, tmp_path / "x.gguf", "f32", model=model)


def test_truncated_or_corrupt_gguf_is_a_clear_error(tmp_path, ckpts):
    from slmkit.serve.llamacpp_backend import LlamaCppRuntime

    path, model = ckpts["d96-gqa-mup"]
    good = tmp_path / "good.gguf"
    export_gguf(path, good, "f32", parity=False, model=model)
    data = good.read_bytes()
    cases = {
        "truncated": (data[: int(len(data) * 0.6)], "truncated"),
        "header-cut": (data[:200], "corrupt or truncated|truncated"),
        "bad-magic": (b"GGUX" + data[4:], "not a GGUF file"),
        "garbage-counts": (data[:8] + b"\xff" * 16 + data[24:], "corrupt or truncated|truncated"),
        "empty": (b"", "not a GGUF file"),
    }
    for name, (blob, pattern) in cases.items():
        bad = tmp_path / f"{name}.gguf"
        bad.write_bytes(blob)
        with pytest.raises(SlmkitError, match=pattern):
            LlamaCppRuntime(bad)
    with pytest.raises(SlmkitError, match="not found"):
        LlamaCppRuntime(tmp_path / "missing.gguf")


def test_rope_permutation_round_trips_and_matches_llama_layout():
    w = torch.arange(6 * 8 * 5, dtype=torch.float32).reshape(6 * 8, 5).numpy()
    p = permute_rope(w, 6)
    assert (unpermute_rope(p, 6) == w).all()
    # head 0, HF rows [0..3] are the first halves, [4..7] the second; llama.cpp wants pairs (0,4),(1,5),...
    assert [int(r) for r in p[:8, 0] // 5] == [0, 4, 1, 5, 2, 6, 3, 7]


def test_same_file_twice_is_identical(tmp_path, ckpts):
    path, model = ckpts["d256-mqa"]
    a, b = tmp_path / "a.gguf", tmp_path / "b.gguf"
    export_gguf(path, a, "bf16", parity=False, model=model)
    export_gguf(path, b, "bf16", parity=False, model=model)
    assert a.read_bytes() == b.read_bytes()
    shutil.rmtree(tmp_path, ignore_errors=True)
