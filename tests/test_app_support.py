"""Helpers shared by the app tests (test_api_*, test_remote_*, test_app_*): a tiny random chat model saved as a
real slmkit checkpoint with the ChatML tokenizer, and the real API server on a free loopback port. No tests here."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

from slmkit.app.api import create_app, serve_in_thread
from slmkit.app.generation import GenerationService
from slmkit.model.checkpoint import save_checkpoint
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.serve import SamplingParams, load

MODEL_NAME = "tiny-chat"
TINY = dict(vocab_size=512, d_model=64, n_heads=4, n_kv_heads=2, n_layers=2, d_ff=128, max_seq_len=2048)
LONG_PROMPT = [{"role": "user", "content": "hi"}]
LONG_TOKENS = 1500  # greedy tokens the fixture model produces for LONG_PROMPT without reaching EOS


def build_tiny_model(out: Path, tokenizer_dir: Path) -> Path:
    """A random 2-layer model whose greedy answer to LONG_PROMPT runs LONG_TOKENS tokens without EOS (the first
    init seed that does, so long-generation tests cannot end early by chance)."""
    for seed in range(20):
        torch.manual_seed(seed)
        model = Transformer(ModelConfig(**TINY)).eval()
        path = save_checkpoint(out / f"ckpt{seed}", model, tokenizer_dir)
        rt = load(path, threads=1)
        ids = list(rt.generate_ids(rt.encode_prompt(LONG_PROMPT), SamplingParams(max_new_tokens=LONG_TOKENS)))
        rt.close()
        if len(ids) == LONG_TOKENS and not set(ids) & rt.eos_ids:
            return path
    raise AssertionError("no init seed gave a model that runs LONG_TOKENS tokens without EOS")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    old = torch.get_num_threads()
    try:
        return build_tiny_model(tmp_path_factory.mktemp("tiny_chat"), tiny_tokenizer_dir)
    finally:
        torch.set_num_threads(old)


@contextlib.contextmanager
def running_api(model_dir: Path, api_key: str | None = None, **service_kw):
    """(base url, service) of a real server on 127.0.0.1 on the tiny model (torch on one thread); stopped after."""
    old = torch.get_num_threads()
    service = GenerationService(lambda: load(model_dir, threads=1), **service_kw)
    try:
        with serve_in_thread(create_app(service, MODEL_NAME, api_key)) as url:
            service.ready.wait(60)
            yield url, service
    finally:
        service.close()
        torch.set_num_threads(old)
