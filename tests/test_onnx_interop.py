"""Our ONNX export in other people's runtimes: ONNX Runtime GenAI (through the genai_config.json the exporter
writes) and optimum's ORTModelForCausalLM (in a side venv, it pins transformers < 4.58); GenAI's own model builder
on the same HF folder; `slmkit bench latency --backends ort-genai`.

References are independent implementations: torch fp32 (the native model), our OnnxRuntime loop, GenAI's C++
generator, optimum's transformers generate loop, GenAI's own exporter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime_genai as og  # a core dependency of the export extra: missing fails, it does not skip
import pytest
import torch

from slmkit.errors import SlmkitError
from slmkit.export.onnx import export_onnx
from slmkit.model.checkpoint import save_checkpoint
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.serve.base import SamplingParams
from slmkit.serve.onnx_backend import OnnxRuntime

REPO = Path(__file__).resolve().parents[1]
# µP multipliers on, GQA 2:1; widths multiples of 32 so GenAI's int4 blocks tile them
CFG = dict(vocab_size=320, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128, max_seq_len=256,
           scale_emb=4.0, scale_depth=1.3, dim_model_base=32, scale_output=1.5, rope_theta=5000.0)


def _interop():
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import onnx_interop
    finally:
        sys.path.pop(0)
    return onnx_interop


def rel_err(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_tokenizer_dir):
    torch.manual_seed(0)
    model = Transformer(ModelConfig(**CFG)).eval()
    with torch.no_grad():  # non-trivial norm gains, so a config that drops a multiplier would show
        for p in model.parameters():
            if p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", model, tokenizer_dir=tiny_tokenizer_dir)


@pytest.fixture(scope="module")
def tiny_export(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "tiny-fp32"
    export_onnx(tiny, out)  # the default path: dynamo exporter, parity gate on
    return out


def test_genai_runs_our_export_like_our_runtime(tiny, tiny_export):
    from slmkit.serve.ortgenai_backend import OrtGenaiRuntime
    from slmkit.model.hf import load_any

    config = json.loads((tiny_export / "genai_config.json").read_text())
    assert config["model"]["decoder"]["num_hidden_layers"] == CFG["n_layers"]
    assert config["search"]["past_present_share_buffer"] is False  # our graph concatenates past and new keys
    ours, genai = OnnxRuntime(tiny_export, threads=1), OrtGenaiRuntime(tiny_export, threads=1)
    ids = [5, 17, 99, 3, 250, 8, 41, 7, 300, 12, 64, 2]
    with torch.no_grad():
        ref = load_any(tiny)(torch.tensor([ids]))[0].numpy()
    assert rel_err(genai.logits(ids), ref) < 1e-4  # GenAI's session on our graph = torch fp32
    assert rel_err(genai.logits(ids), ours.logits(ids)) < 1e-5
    # greedy: GenAI's C++ generator loop (its own KV handling, its own EOS from genai_config.json) = ours
    prompt = [5, 17, 99, 3, 250, 8]
    want = list(ours.generate_ids(prompt, SamplingParams(max_new_tokens=24)))
    assert list(genai.stream(prompt, 24, ignore_eos=False)) == want
    assert list(genai.generate_ids(prompt, SamplingParams(max_new_tokens=24))) == want  # the Runtime interface
    sampled = SamplingParams(max_new_tokens=12, temperature=0.9, top_k=0, top_p=0.9, seed=7)
    a, b = list(genai.generate_ids(prompt, sampled)), list(genai.generate_ids(prompt, sampled))
    assert a == b and 0 < len(a) <= 12  # seeded sampling in GenAI's loop is reproducible
    greedy5 = SamplingParams(max_new_tokens=5)  # text through the shared Runtime.generate (ids: the tokenizer outgrows CFG's vocab)
    assert genai.complete(prompt, greedy5) == ours.complete(prompt, greedy5)
    # a GenAI user's own calls: og.Model + og.Tokenizer read our folder; the tokenizer agrees with ours
    model = og.Model(str(tiny_export))
    text = "Tom has 17 apples and gives 5 to Mia."
    assert [int(t) for t in og.Tokenizer(model).encode(text)] == ours.tokenizer.encode(text, add_special_tokens=False)


def test_genai_config_bad_folder(tmp_path):
    from slmkit.export.genai import build_genai, write_genai_config
    from slmkit.serve.ortgenai_backend import OrtGenaiRuntime

    (tmp_path / "config.json").write_text(json.dumps({"num_attention_heads": 4}))
    with pytest.raises(SlmkitError, match=r"config.json: field 'hidden_size' missing or not a number"):
        write_genai_config(tmp_path)
    with pytest.raises(SlmkitError, match=r"precision 'q4' unknown"):
        build_genai(tmp_path, tmp_path / "out", "q4")
    with pytest.raises(SlmkitError, match=r"not an HF model folder"):
        build_genai(tmp_path / "nope", tmp_path / "out", "int4")
    with pytest.raises(SlmkitError, match=r"genai_config.json: missing"):
        OrtGenaiRuntime(tmp_path)
    (tmp_path / "genai_config.json").write_text("{\"model\": ")  # truncated
    with pytest.raises(SlmkitError, match=r"ONNX Runtime GenAI cannot load it"):
        OrtGenaiRuntime(tmp_path)


def test_bench_latency_ort_genai(tiny, tiny_export, tmp_path, monkeypatch):
    """One command races GenAI's builder graphs (from the checkpoint) and our export on GenAI's loop."""
    from slmkit.bench.latency import bench_latency

    monkeypatch.setenv("SLMKIT_CACHE", str(tmp_path / "cache"))
    report = bench_latency([tiny, tiny_export], "ort-genai,onnxruntime", onnx_types=[], genai_types=["fp32", "int4"],
                           prompt_tokens=16, new_tokens=6, repeats=1, threads=1, out_dir=tmp_path / "out",
                           progress=False, bandwidth_mb=64)
    rows = {(Path(r["model"]).name, r["backend"], r["qtype"]): r for r in report["results"]}
    assert set(rows) == {("tiny", "ort-genai", "fp32"), ("tiny", "ort-genai", "int4"),
                         ("tiny-fp32", "ort-genai", "fp32"), ("tiny-fp32", "onnxruntime", "fp32")}, rows.keys()
    for row in rows.values():
        assert row["ok"], row.get("error")
        assert row["decode_tok_s"] > 0 and row["prefill_tok_s"] > 0 and row["bound_tok_s"] > 0
        assert row["new_tokens_done"] == [6]  # EOS ignored on GenAI too (min_length)
        assert row["kv_bytes_per_token"] == int(2 * 2 * 2 * 16 * 4 * (16 + 6 / 2))
    # GenAI's own exporter vs torch fp32 on the same weights: fp32 matches, int4 is a real quantization
    genai_fp32, genai_int4 = rows[("tiny", "ort-genai", "fp32")]["parity"], rows[("tiny", "ort-genai", "int4")]["parity"]
    assert genai_fp32["max_rel_err"] < 1e-4 and genai_fp32["top1_agreement"] == 1.0
    assert 1e-4 < genai_int4["max_rel_err"] < 0.5
    assert rows[("tiny", "ort-genai", "int4")]["file_mb"] < rows[("tiny", "ort-genai", "fp32")]["file_mb"]
    assert "| ort-genai |" in Path(report["files"]["markdown"]).read_text()


@pytest.mark.slow
def test_smollm2_optimum_and_genai_greedy_equal_ours(tmp_path):
    """SmolLM2-135M-Instruct: our fp32 export, generated greedily by our runtime, by optimum's
    ORTModelForCausalLM (side venv) and by GenAI, and GenAI's own fp32 build of the same HF folder: one text."""
    from slmkit import hub
    from slmkit.serve.ortgenai_backend import OrtGenaiRuntime
    from slmkit.export.genai import build_genai

    interop = _interop()
    try:
        interop.side_venv()  # cached under SLMKIT_CACHE after the first build
    except interop.SideVenvError as exc:
        pytest.fail(str(exc))  # no silent skip: the pip error is the failure
    hf = Path(hub.pull("smollm2-135m-instruct")["hf_dir"])
    ours_dir = tmp_path / "ours"
    export_onnx(hf, ours_dir)
    ours = OnnxRuntime(ours_dir, threads=2)
    prompt = ours.encode_prompt([{"role": "user", "content": "What is the capital of France?"}])
    want = list(ours.generate_ids(prompt, SamplingParams(max_new_tokens=32)))
    text = ours.tokenizer.decode(want, skip_special_tokens=True)
    assert "Paris" in text, text
    eos = sorted(ours.eos_ids)
    res = interop.run_optimum({"task": "run", "folder": str(ours_dir), "greedy": prompt, "greedy_new": 32,
                               "eos": eos, "pad": eos[0], "threads": 2})
    assert res["ok"], res.get("error")
    assert res["model_class"] == "ORTModelForCausalLM" and res["versions"]["transformers"].startswith("4.")
    assert res["greedy_ids"] == want
    assert list(OrtGenaiRuntime(ours_dir, threads=2).stream(prompt, 32, ignore_eos=False)) == want
    theirs = build_genai(hf, tmp_path / "genai-fp32", "fp32", threads=2)
    assert list(OrtGenaiRuntime(theirs, threads=2).stream(prompt, 32, ignore_eos=False)) == want
