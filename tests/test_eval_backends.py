"""Backends agree per request: our native `hf` vs stock lm-eval `hf`, and hf vs gguf-f32 vs onnx-fp32.

A random tiny model (nano shape, 512-token BPE) is exported to an HF folder, an f32 GGUF and an fp32
ONNX folder; the same lm-eval requests (ARC-Easy 25-shot and MMLU 5-shot slices, truncated to the
model's 256-token window exactly as lm-eval truncates) are scored by each.
"""

from __future__ import annotations

import math

import pytest
import torch

WINDOW = 255  # the runtimes hold context + continuation (max_length + 1 tokens) in their 256-token window


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory, tiny_tokenizer_dir):
    from slmkit.model.config import ModelConfig
    from slmkit.model.hf import export_hf
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.model.transformer import Transformer

    tok = load_tokenizer(tiny_tokenizer_dir)
    cfg = ModelConfig.from_preset("nano", vocab_size=512, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    out = tmp_path_factory.mktemp("tiny") / "hf"
    export_hf(model, out, tiny_tokenizer_dir)
    return out, model


@pytest.fixture(scope="module")
def instances(data_dir):
    from slmkit.evaluate.tasks import make_task_manager

    tm = make_task_manager("local")
    out = []
    for name, shots, limit in (("arc_easy", 25, 3), ("mmlu_astronomy", 5, 3)):
        task = tm.load([name])["tasks"][name]
        task.set_config(key="num_fewshot", value=shots)
        task.set_fewshot_seed(seed=1234)
        task.build_all_requests(limit=limit, rank=0, world_size=1)
        out += task.instances
    return out


def _close(a, b, tol):
    assert len(a) == len(b)
    worst = max(abs(x[0] - y[0]) for x, y in zip(a, b))
    assert worst < tol, f"max |Δ loglik| = {worst}"
    assert [x[1] for x in a] == [y[1] for y in b]
    return worst


@pytest.fixture(scope="module")
def native_scores(tiny_hf, instances):
    from slmkit.evaluate.lm import TorchLM

    lm = TorchLM(str(tiny_hf[0]), max_length=WINDOW)
    return lm.loglikelihood(instances, disable_tqdm=True)


def test_native_matches_full_forward(tiny_hf, instances, native_scores):
    """Prefix-KV reuse gives the same numbers as one full forward pass per request."""
    from slmkit.evaluate.lm import TorchLM

    lm = TorchLM(str(tiny_hf[0]), max_length=WINDOW)
    model = tiny_hf[1]
    ref = []
    for inst in instances:
        ctx, cont = lm._encode_pair(*inst.args)
        ids = (ctx + cont)[-(lm.max_length + 1):]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0].float(), -1)[-len(cont):]
        tgt = torch.tensor(cont)
        ref.append((float(logp.gather(1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all())))
    _close(native_scores, ref, 1e-4)


def test_native_matches_stock_lm_eval_hf(tiny_hf, instances, native_scores):
    from lm_eval.models.huggingface import HFLM

    stock = HFLM(pretrained=str(tiny_hf[0]), device="cpu", dtype="float32", batch_size=4, max_length=WINDOW)
    ref = stock.loglikelihood(instances, disable_tqdm=True)
    _close(native_scores, ref, 1e-3)


@pytest.mark.slow
def test_gguf_f32_and_onnx_fp32_agree_with_hf(tiny_hf, instances, native_scores, tmp_path, tiny_tokenizer_dir):
    from slmkit.evaluate.lm import LlamaCppLM, OnnxRuntimeLM
    from slmkit.export.gguf import write_gguf
    from slmkit.export.onnx import export_onnx

    gguf_path = write_gguf(tiny_hf[1], tmp_path / "tiny-f32.gguf", tiny_tokenizer_dir, dtype="f32")
    gguf = LlamaCppLM(str(gguf_path), max_length=WINDOW, f32_kv=True)
    gguf_scores = gguf.loglikelihood(instances, disable_tqdm=True)
    export_onnx(tiny_hf[0], tmp_path / "onnx", parity=False)
    onnx = OnnxRuntimeLM(str(tmp_path / "onnx"), max_length=WINDOW)
    onnx_scores = onnx.loglikelihood(instances, disable_tqdm=True)
    assert all(math.isfinite(s[0]) for s in gguf_scores + onnx_scores)
    _close(gguf_scores, native_scores, 2e-3)
    _close(onnx_scores, native_scores, 1e-3)


def test_generate_until_same_text_on_every_backend(tiny_hf, tmp_path, tiny_tokenizer_dir):
    """Greedy generation: our batched hf and gguf-f32 (default batch and one at a time) and stock lm-eval hf
    return the same text for the same requests, including prompts that share a long few-shot prefix."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from slmkit.evaluate.lm import LlamaCppLM, TorchLM
    from slmkit.export.gguf import write_gguf

    shots = "".join(f"Q: What is {a} plus {a + 3}?\nA: {2 * a + 3}\n\n" for a in range(7, 12))
    contexts = [shots + f"Q: What is {a} plus 1?\nA:" for a in (2, 40, 123)] + ["Tom has 12 apples", "def f(x):"]
    reqs = [Instance("generate_until", {}, (c, {"until": ["\n\n"], "max_gen_toks": 24, "do_sample": False}), i)
            for i, c in enumerate(contexts)]
    ours = TorchLM(str(tiny_hf[0]), max_length=WINDOW).generate_until(reqs, disable_tqdm=True)
    stock = HFLM(pretrained=str(tiny_hf[0]), device="cpu", dtype="float32", batch_size=1, max_length=WINDOW)
    assert ours == stock.generate_until(reqs, disable_tqdm=True)
    assert len(set(ours)) > 1 and all(ours), ours
    gguf_path = write_gguf(tiny_hf[1], tmp_path / "tiny-f32.gguf", tiny_tokenizer_dir, dtype="f32")
    batched = LlamaCppLM(str(gguf_path), max_length=WINDOW, f32_kv=True)
    assert batched.batch_size == 32  # the engine decodes them as parallel llama.cpp sequences
    assert batched.generate_until(reqs, disable_tqdm=True) == ours
    serial = LlamaCppLM(str(gguf_path), max_length=WINDOW, f32_kv=True, batch_size=1)
    assert serial.generate_until(reqs, disable_tqdm=True) == ours
