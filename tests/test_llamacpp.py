"""LlamaCppRuntime: logits/greedy decode match torch, the loglikelihood fast path matches the plain one,
the tokenizer and chat template come from the GGUF when nothing sits beside it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

import llama_cpp  # noqa: E402,F401  (a core dependency: missing fails, not skips)
import gguf  # noqa: E402,F401  (a core dependency: missing fails, not skips)

from slmkit.corpus.synthetic import training_texts  # noqa: E402
from slmkit.errors import SlmkitError  # noqa: E402
from slmkit.export.gguf import export_gguf  # noqa: E402
from slmkit.model.checkpoint import save_checkpoint  # noqa: E402
from slmkit.model.config import ModelConfig  # noqa: E402
from slmkit.model.tokenizer import train_bpe  # noqa: E402
from slmkit.model.transformer import Transformer  # noqa: E402
from slmkit.serve import SamplingParams, load  # noqa: E402
from slmkit.serve.base import Runtime  # noqa: E402
from slmkit.serve.llamacpp_backend import LlamaCppRuntime  # noqa: E402


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    root = tmp_path_factory.mktemp("llamacpp")
    tok = train_bpe(training_texts(200, seed=7) + ["Hello world, 12 + 30 = 42."] * 4, 500, root / "tok")
    cfg = ModelConfig(vocab_size=512, d_model=96, n_layers=2, n_heads=6, n_kv_heads=2, d_ff=256, max_seq_len=256,
                      scale_emb=12.0, scale_depth=1.4, dim_model_base=32, init_std=0.1, eos_token_id=0)
    torch.manual_seed(11)
    model = Transformer(cfg).eval()
    save_checkpoint(root / "ck", model, root / "tok")
    gguf_dir = root / "gguf"
    gguf_dir.mkdir()
    path = gguf_dir / "model.gguf"  # no tokenizer.json beside it: the runtime rebuilds one from the GGUF
    export_gguf(root / "ck", path, "f32", model=model)
    return {"path": path, "model": model, "tok": tok, "tok_dir": root / "tok", "root": root}


@pytest.fixture(scope="module")
def rt(artifact):
    runtime = LlamaCppRuntime(artifact["path"], n_ctx=256, f32_kv=True)
    yield runtime
    runtime.close()


def torch_logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]))[0].numpy()


def test_logits_match_torch(rt, artifact):
    rng = np.random.default_rng(0)
    for n in (1, 7, 150):
        ids = rng.integers(0, 512, size=n).tolist()
        ref = torch_logits(artifact["model"], ids)
        got = rt.logits(ids)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4


def test_logits_longer_than_one_batch(artifact):
    runtime = LlamaCppRuntime(artifact["path"], n_ctx=256, n_batch=32, f32_kv=True)
    try:
        ids = np.random.default_rng(1).integers(0, 512, size=100).tolist()
        ref = torch_logits(artifact["model"], ids)
        assert np.abs(runtime.logits(ids) - ref).max() / np.abs(ref).max() < 1e-4
    finally:
        runtime.close()


def test_greedy_generation_matches_torch(rt, artifact):
    prompt = rt.tokenizer.encode("Tom has 12 apples", add_special_tokens=False)
    want = list(artifact["model"].generate(prompt, max_new_tokens=24))
    got = list(rt.generate_ids(prompt, SamplingParams(max_new_tokens=24)))
    cut = want.index(0) + 1 if 0 in want else len(want)  # the runtime stops at EOS (id 0) like torch does
    assert got == want[:cut]
    assert list(rt.generate_ids(prompt, SamplingParams(max_new_tokens=24))) == got  # cached prefix reused


def test_batched_generation_equals_one_prompt_at_a_time(rt):
    """Parallel llama.cpp sequences in one decode call per step give each prompt its own greedy text (f32 file)."""
    rng = np.random.default_rng(5)
    prompts = [rng.integers(1, 512, n).tolist() for n in (4, 30, 12, 1, 60)]
    ref = [list(rt.generate_ids(p, SamplingParams(max_new_tokens=25))) for p in prompts]
    assert len({tuple(r) for r in ref}) == len(prompts)
    assert rt.generate_batch(prompts, 25) == ref
    stop_at = {1: 3, 4: 10}  # rows that stop early free their cells; the others are unchanged
    got = rt.generate_batch(prompts, 25, lambda row, ids: len(ids) >= stop_at.get(row, 99))
    assert got == [r[:stop_at.get(i, 25)] for i, r in enumerate(ref)]
    # prompts sharing a prefix share its cells (copied sequence, not recomputed); same tokens
    shared = rng.integers(1, 512, 40).tolist()
    fewshot = [shared + rng.integers(1, 512, n).tolist() for n in (3, 1, 8)] + [shared[:20], prompts[1]]
    assert rt.generate_batch(fewshot, 15) == [list(rt.generate_ids(p, SamplingParams(max_new_tokens=15))) for p in fewshot]
    # the window caps each row's budget (n_ctx 256) as generate_ids does; the single-sequence context still works after
    long = [rng.integers(1, 512, 250).tolist(), prompts[0]]
    assert rt.generate_batch(long, 20) == [list(rt.generate_ids(p, SamplingParams(max_new_tokens=20))) for p in long]
    assert len(rt.generate_batch(long, 20)[0]) <= 6
    assert list(rt.generate_ids(prompts[2], SamplingParams(max_new_tokens=25))) == ref[2]


def test_sampling_is_seeded(rt):
    prompt = rt.tokenizer.encode("Hello world", add_special_tokens=False)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_k=50, seed=3)
    first = list(rt.generate_ids(prompt, params))
    assert first == list(rt.generate_ids(prompt, params))


def test_loglikelihood_fast_path_matches_plain_path(rt, artifact):
    rng = np.random.default_rng(2)
    shared = rng.integers(0, 512, size=40).tolist()
    reqs = [(shared, rng.integers(0, 512, size=k).tolist()) for k in (1, 3, 5)]
    reqs += [(shared[:10], shared[10:14]), (rng.integers(0, 512, size=6).tolist(), [5, 6]), (shared + [9], [])]
    reqs = [reqs[i] for i in (3, 0, 5, 1, 4, 2)]  # unsorted on purpose
    fast = rt.loglikelihood(reqs)
    plain = Runtime.loglikelihood(rt, [r for r in reqs if r[1]])
    fast_nonempty = [f for f, r in zip(fast, reqs) if r[1]]
    for (a, ga), (b, gb) in zip(fast_nonempty, plain):
        assert a == pytest.approx(b, abs=1e-3) and ga == gb
    # and against torch directly
    ctx, cont = reqs[1]
    logp = torch.log_softmax(torch.from_numpy(torch_logits(artifact["model"], ctx + cont)).double(), -1)
    ref = sum(float(logp[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
    assert fast[1][0] == pytest.approx(ref, abs=1e-3)
    assert fast[reqs.index((shared + [9], []))] == (0.0, True)
    with pytest.raises(SlmkitError, match="empty context"):
        rt.loglikelihood([([], [1, 2])])


def test_tokenizer_and_chat_template_rebuilt_from_gguf(rt, artifact):
    tok = artifact["tok"]
    texts = ["Tom has 12 apples and gives 5 away.", "  spaces\tand\nnewlines 3.14159", "<|im_start|>user\nhi<|im_end|>"]
    for text in texts:
        assert rt.tokenizer.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert rt.tokenizer.chat_template == tok.chat_template
    messages = [{"role": "user", "content": "What is 2 + 3?"}]
    assert rt.encode_prompt(messages) == tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)["input_ids"]
    text = rt.complete(messages, SamplingParams(max_new_tokens=8))
    assert isinstance(text, str)
    assert rt.score("Tom has", " 12 apples") and len(rt.score("Tom has", " 12 apples")) == len(tok.encode(" 12 apples"))


def test_tokenizer_beside_the_gguf_is_used(artifact, tmp_path):
    path = tmp_path / "model.gguf"
    shutil.copy(artifact["path"], path)
    shutil.copy(artifact["tok_dir"] / "tokenizer.json", tmp_path / "tokenizer.json")
    shutil.copy(artifact["tok_dir"] / "tokenizer_config.json", tmp_path / "tokenizer_config.json")
    with load(path) as runtime:  # *.gguf → llama.cpp backend
        assert isinstance(runtime, LlamaCppRuntime)
        assert runtime.tokenizer.encode("Hello 42") == artifact["tok"].encode("Hello 42")


def test_context_overflow_is_an_error(rt):
    with pytest.raises(SlmkitError, match="exceed the context"):
        rt.logits(list(range(300)))
