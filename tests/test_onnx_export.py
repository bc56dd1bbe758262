"""ONNX export: fp32 parity with torch on odd shapes, KV-cache path, int8 gate, runtime behaviour, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import onnxruntime  # noqa: E402,F401  (a core dependency: missing fails, not skips)
import onnx  # noqa: E402,F401  (a core dependency: missing fails, not skips)

from slmkit.errors import SlmkitError  # noqa: E402
from slmkit.export.onnx import export_graph, export_onnx  # noqa: E402
from slmkit.model.checkpoint import save_checkpoint  # noqa: E402
from slmkit.model.config import ModelConfig  # noqa: E402
from slmkit.model.transformer import Transformer  # noqa: E402
from slmkit.serve.base import SamplingParams  # noqa: E402

ODD = dict(vocab_size=1000, d_model=96, n_heads=6, n_kv_heads=2, n_layers=3, d_ff=200, max_seq_len=128,
           scale_emb=7.0, scale_depth=1.3, dim_model_base=32, rope_theta=5000.0, scale_output=1.7)


def random_model(seed: int = 0, **fields) -> Transformer:
    torch.manual_seed(seed)
    model = Transformer(ModelConfig(**fields)).eval()
    with torch.no_grad():  # non-trivial norm gains so folding mistakes would show
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory, tiny_tokenizer_dir):
    folder = tmp_path_factory.mktemp("ckpt") / "odd"
    save_checkpoint(folder, random_model(0, **ODD), tokenizer_dir=tiny_tokenizer_dir)
    return folder


@pytest.fixture(scope="module")
def odd_export(odd_checkpoint, tmp_path_factory):
    """The real default path: dynamo exporter, parity gate on."""
    out = tmp_path_factory.mktemp("onnx") / "odd-fp32"
    record = export_onnx(odd_checkpoint, out, exporter="dynamo")
    return out, record


def test_fp32_export_matches_torch_and_has_expected_io(odd_export, odd_checkpoint):
    from slmkit.model.hf import load_any
    from slmkit.serve.onnx_backend import OnnxRuntime

    out, record = odd_export
    assert record["exporter"] == "dynamo"
    for name in ("model.onnx", "config.json", "generation_config.json", "tokenizer.json", "slmkit_onnx.json", "parity.json"):
        assert (out / name).exists(), name
    report = json.loads((out / "parity.json").read_text())
    assert report["passed"] and report["max_rel_err"] < 1e-4 and report["top1_agreement"] == 1.0
    assert report["kv_cache"]["passed"] and report["kv_cache"]["max_rel_err"] < 1e-4
    rt = OnnxRuntime(out)
    names = [i.name for i in rt.session.get_inputs()]
    assert names[:3] == ["input_ids", "attention_mask", "position_ids"]
    assert names[3:5] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [o.name for o in rt.session.get_outputs()][:3] == ["logits", "present.0.key", "present.0.value"]
    assert rt.session.get_inputs()[3].shape[1:] == [2, "past_sequence_length", 16]
    model = load_any(odd_checkpoint)
    ids = list(range(3, 120, 3))
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].numpy()
    assert rel_err(rt.logits(ids), ref) < 1e-4
    # batched, left-padded call through attention_mask/position_ids matches the unpadded rows
    ids2 = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5]])
    mask = np.array([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    pos = np.clip(np.cumsum(mask, 1) - 1, 0, None)
    logits, _ = rt.run(ids2, attention_mask=mask, position_ids=pos)
    with torch.no_grad():
        ref0 = model(torch.tensor([[5, 6, 7]]))[0].numpy()
    assert rel_err(logits[0, 2:], ref0) < 1e-4


@pytest.mark.parametrize("fields", [
    dict(vocab_size=300, d_model=64, n_heads=4, n_kv_heads=4, n_layers=2, d_ff=96, tie_embeddings=False,
         scale_depth_attn=0.7, scale_depth_ffn=2.0),  # MHA, untied, separate residual scales
    dict(vocab_size=517, d_model=48, n_heads=3, n_kv_heads=1, n_layers=1, d_ff=130, head_dim=20,
         rope_theta=123456.0, norm_eps=1e-6),  # MQA, head_dim != d_model / n_heads
])
def test_fp32_parity_on_other_shapes(tmp_path, fields):
    from slmkit.serve.onnx_backend import OnnxRuntime

    model = random_model(1, **fields)
    export_graph(model, tmp_path / "model.onnx", exporter="torchscript")
    rt = OnnxRuntime(tmp_path)
    ids = np.random.default_rng(0).integers(0, fields["vocab_size"], 40).tolist()
    with torch.no_grad():
        ref = model(torch.tensor([ids]))[0].numpy()
    assert rel_err(rt.logits(ids), ref) < 1e-4
    logits, past = rt.forward(ids[:30])  # KV path: prefill + 10 single-token steps
    rows = [logits[0]]
    for t in ids[30:]:
        step, past = rt.forward([t], past)
        rows.append(step[0])
    assert rel_err(np.concatenate(rows), ref) < 1e-4


def test_onnx_runtime_greedy_matches_torch_and_loglikelihood(odd_export, odd_checkpoint):
    from slmkit.serve.base import Runtime
    from slmkit.serve.onnx_backend import OnnxRuntime
    from slmkit.serve.torch_backend import TorchRuntime

    out, _ = odd_export
    ort_rt, torch_rt = OnnxRuntime(out, threads=1), TorchRuntime(odd_checkpoint)
    prompt = [5, 17, 99, 3, 250, 8]
    params = SamplingParams(max_new_tokens=24)
    assert list(ort_rt.generate_ids(prompt, params)) == list(torch_rt.generate_ids(prompt, params))
    sampled = SamplingParams(max_new_tokens=12, temperature=0.9, top_k=40, top_p=0.9, seed=7)
    a, b = list(ort_rt.generate_ids(prompt, sampled)), list(ort_rt.generate_ids(prompt, sampled))
    assert a == b and len(a) == 12
    reqs = [(prompt, [1, 2, 3]), (prompt, [7]), (prompt, [9, 9, 9, 9, 1]), ([4, 5], [6, 7]), (prompt, [])]
    fast = ort_rt.loglikelihood(reqs)
    naive = Runtime.loglikelihood(ort_rt, reqs[:4])
    for (f, fg), (n, ng) in zip(fast, naive):
        assert f == pytest.approx(n, rel=1e-5, abs=1e-5) and fg == ng
    assert fast[4] == (0.0, True)
    text = ort_rt.complete("2 + 3 =", SamplingParams(max_new_tokens=5))
    assert isinstance(text, str)
    # the engine runs ONNX Runtime's own loop one request at a time behind the same queue
    prompts = [prompt, prompt[:2], [9, 8, 7]]
    assert ort_rt.generate_batch(prompts, 10) == [list(torch_rt.generate_ids(p, SamplingParams(max_new_tokens=10)))
                                                  for p in prompts]
    assert ort_rt.engine().stats()["executor"] == "serial"
    ort_rt.close()


def test_int8_export_gate_and_hf_input(odd_checkpoint, tmp_path, capsys):
    """int8 via the CLI from an HF folder; numbers land in parity.json (printed for the record)."""
    from slmkit.cli import main
    from slmkit.model.hf import export_hf, load_any

    hf_dir = export_hf(load_any(odd_checkpoint), tmp_path / "hf", tokenizer_dir=odd_checkpoint)
    out = tmp_path / "int8"
    text = tmp_path / "heldout.txt"
    text.write_text("Question: Tom has 17 apples and gives 5 to Mia. How many are left?\nSolution:\n17 - 5 = 12\nAnswer: 12\n" * 4)
    code = main(["export", "onnx", str(hf_dir), str(out), "--int8", "--exporter", "torchscript",
                 "--parity-text", str(text), "--bound", "min_top1=0.8"])
    assert code == 0
    assert "parity passed" in capsys.readouterr().out
    assert main(["export", "onnx", str(hf_dir), str(out), "--bound", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    report = json.loads((out / "parity.json").read_text())
    meta = json.loads((out / "slmkit_onnx.json").read_text())
    assert meta["dtype"] == "int8-blockwise" and meta["fp32_parity"]["max_rel_err"] < 1e-4
    assert report["passed"] and report["kv_cache"]["passed"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops and "Gather" in ops  # lm_head quantized, embedding lookup kept
    print(f"int8 parity: max_rel_err={report['max_rel_err']:.3g} top1={report['top1_agreement']:.4f} "
          f"ppl_ratio={report['ppl_ratio']:.5f} kv_top1={report['kv_cache']['top1_agreement']:.3f}")


def test_failed_gate_keeps_previous_export_and_writes_report(odd_checkpoint, tmp_path):
    out = tmp_path / "keep"
    out.mkdir()
    (out / "marker").write_text("old")
    with pytest.raises(SlmkitError, match="parity gate failed"):
        export_onnx(odd_checkpoint, out, int8=True, exporter="torchscript", bounds={"max_rel_err": 1e-12})
    assert (out / "marker").read_text() == "old"
    assert json.loads((tmp_path / "keep.parity.json").read_text())["passed"] is False
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind


def test_truncated_or_corrupt_onnx_gives_clear_error(odd_export, tmp_path):
    import shutil

    from slmkit.serve import load
    from slmkit.serve.onnx_backend import OnnxRuntime

    src, _ = odd_export
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    data = (bad / "model.onnx").read_bytes()
    (bad / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(SlmkitError, match="model.onnx: cannot load ONNX model"):
        load(bad)  # folder with model.onnx → onnxruntime backend
    (bad / "model.onnx").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(SlmkitError, match="cannot load ONNX model"):
        OnnxRuntime(bad)
    (bad / "model.onnx").unlink()
    with pytest.raises(SlmkitError, match="model.onnx: missing"):
        OnnxRuntime(bad)


def test_external_data_path_for_big_models(odd_checkpoint, tmp_path, monkeypatch):
    """Models over protobuf's 2 GB cap keep weights in model.onnx.data; force that path on a tiny model."""
    import slmkit.export.onnx as onnx_export

    monkeypatch.setattr(onnx_export, "EXTERNAL_DATA_LIMIT", 0)
    for int8, method in ((False, "blockwise"), (True, "blockwise"), (True, "dynamic")):
        out = tmp_path / f"ext{int(int8)}{method}"
        record = export_onnx(odd_checkpoint, out, int8=int8, exporter="torchscript", int8_method=method)
        assert record["parity"]["passed"]
        assert any(p.name.startswith("model.onnx") and p.name != "model.onnx" for p in out.iterdir()), list(out.iterdir())
        if int8:
            import onnx

            ops = {n.op_type for n in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.node}
            assert ("MatMulNBits" if method == "blockwise" else "MatMulInteger") in ops or "DynamicQuantizeMatMul" in ops
