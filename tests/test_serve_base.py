"""Runtime.generate (base class) streaming and stop strings, exercised through TorchRuntime."""

from __future__ import annotations

import pytest
import torch

from slmkit.model.config import ModelConfig
from slmkit.model.tokenizer import load_tokenizer
from slmkit.model.transformer import Transformer
from slmkit.serve.base import SamplingParams
from slmkit.serve.torch_backend import TorchRuntime


@pytest.fixture(scope="module")
def runtime(tiny_tokenizer_dir):
    tok = load_tokenizer(tiny_tokenizer_dir)
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=len(tok), d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=128,
                                    max_seq_len=256)).eval()
    return TorchRuntime.from_model(model, tokenizer=tok)


def sampled(n=40):
    return SamplingParams(max_new_tokens=n, temperature=1.0, seed=1)


def test_streaming_pieces_join_to_the_full_text(runtime):
    pieces = list(runtime.generate("The answer is", sampled()))
    assert len(pieces) > 1
    ids = list(runtime.generate_ids(runtime.encode_prompt("The answer is"), sampled()))
    eos = runtime.eos_ids
    ids = ids[: next((i for i, t in enumerate(ids) if t in eos), len(ids))]
    assert "".join(pieces) == runtime.tokenizer.decode(ids, skip_special_tokens=True)


def test_stop_string_cuts_before_the_stop(runtime):
    full = runtime.complete("The answer is", sampled())
    assert len(full) > 12
    stop = full[8:11]
    cut = runtime.complete("The answer is", sampled(), stop=[stop])
    assert cut == full[: full.find(stop)]
    streamed = list(runtime.generate("The answer is", sampled(), stop=["\x00never", stop]))
    assert "".join(streamed) == cut
    via_params = runtime.complete("The answer is", SamplingParams(max_new_tokens=40, temperature=1.0, seed=1, stop=[stop]))
    assert via_params == cut


def test_chat_messages_use_the_template(runtime):
    ids = runtime.encode_prompt([{"role": "user", "content": "hi"}])
    assert ids[-3:] == runtime.tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)[-3:]
    assert isinstance(runtime.complete([{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=5)), str)


def test_vllm_backend_without_vllm_says_so(tmp_path):
    import importlib.util

    from slmkit.errors import SlmkitError
    from slmkit.serve import load

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed")
    with pytest.raises(SlmkitError, match="vllm"):
        load(tmp_path, backend="vllm")
