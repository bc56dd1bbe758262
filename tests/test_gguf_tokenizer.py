"""GGUF tokenizers: the pre-tokenizer name we write makes llama.cpp split text exactly like HF does.

llama.cpp chooses its split regex from `tokenizer.ggml.pre` alone, so these tests tokenize thousands of
real benchmark strings with both and demand identical ids; and the GGUF → HF rebuild is checked
against llama.cpp's own tokenizer test vectors.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest
from benchdata import benchmark_strings as _benchmark_strings
import torch

import llama_cpp  # noqa: E402  (a core dependency: missing fails, not skips)
import gguf  # noqa: E402,F401

from slmkit.errors import SlmkitError  # noqa: E402
from slmkit.export.gguf import export_gguf  # noqa: E402
from slmkit.formats.gguf import detect_pre, hf_tokenizer_from_gguf, open_gguf  # noqa: E402
from slmkit.model.checkpoint import save_checkpoint  # noqa: E402
from slmkit.model.config import ModelConfig  # noqa: E402
from slmkit.model.tokenizer import load_tokenizer, save_tokenizer, train_bpe  # noqa: E402
from slmkit.model.transformer import Transformer  # noqa: E402

DATA = Path(os.environ.get("SLMKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
TOKENIZERS = DATA / "tokenizers"
BENCH_FILES = ["gsm8k/test.jsonl", "arc_easy/test.jsonl", "mbpp/mbpp.jsonl", "humaneval/HumanEval.jsonl.gz",
               "piqa/valid.jsonl", "winogrande/winogrande_xl_validation.jsonl"]


def benchmark_strings(per_file: int = 700) -> list[str]:
    return _benchmark_strings(DATA, BENCH_FILES, per_file, min_total=1000 if per_file == 700 else 100)


def tiny_model(vocab: int) -> Transformer:
    torch.manual_seed(0)
    return Transformer(ModelConfig(vocab_size=vocab, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64,
                                   max_seq_len=128)).eval()


def export_with_tokenizer(tmp_path: Path, tok_dir: Path, vocab: int) -> Path:
    ck = tmp_path / "ck"
    save_checkpoint(ck, tiny_model(vocab), tok_dir)
    out = tmp_path / "m.gguf"
    export_gguf(ck, out, "f32", parity=False)
    return out


def assert_same_ids(gguf_path: Path, hf_tok, texts: list[str]) -> None:
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        ours = hf_tok(texts, add_special_tokens=False)["input_ids"]
        bad = [t for t, o in zip(texts, ours) if llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) != o]
    finally:
        llm.close()
    assert not bad, f"{len(bad)} of {len(texts)} strings tokenize differently, e.g. {bad[0][:80]!r}"


def gpt2_tokenizer_dir(tmp_path: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    src = TOKENIZERS / "gpt2"
    if not (src / "vocab.json").exists():
        pytest.skip("gpt2 tokenizer files not in shared data")
    tok = Tokenizer(models.BPE.from_file(str(src / "vocab.json"), str(src / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    out = tmp_path / "gpt2"
    save_tokenizer(fast, out)
    return out


def test_detects_known_pre_tokenizers(tmp_path):
    slm = tmp_path / "slm"
    train_bpe(["a 12 b 345 hello world"] * 20, 300, slm)
    assert detect_pre(json.loads((slm / "tokenizer.json").read_text())) == "smollm"
    assert detect_pre(json.loads((gpt2_tokenizer_dir(tmp_path) / "tokenizer.json").read_text())) == "gpt-2"
    for name, pre in (("llama3", "llama-bpe"), ("deepseek-v3", "deepseek-v3")):
        gz = TOKENIZERS / name / "tokenizer.json.gz"
        if gz.exists():
            assert detect_pre(json.loads(gzip.decompress(gz.read_bytes()))) == pre
    metaspace = {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁"}, "normalizer": None}
    with pytest.raises(SlmkitError, match="pre_tokenizer.*--tokenizer-pre"):
        detect_pre(metaspace)


def test_slmkit_bpe_tokenizes_like_llama_cpp_on_benchmarks(tmp_path):
    """slmkit's own BPE (Digits(individual) + ByteLevel) exported with pre 'smollm'."""
    from slmkit.corpus.synthetic import training_texts

    texts = benchmark_strings()
    tok_dir = tmp_path / "tok"
    tok = train_bpe(training_texts(300, seed=5) + texts[:300], 900, tok_dir)
    gguf_path = export_with_tokenizer(tmp_path, tok_dir, 900)
    assert assert_same_ids(gguf_path, tok, texts) is None
    assert any(ch.isdigit() for t in texts for ch in t)  # the digit rule is exercised


def test_gpt2_tokenizes_like_llama_cpp_on_benchmarks(tmp_path):
    tok_dir = gpt2_tokenizer_dir(tmp_path)
    gguf_path = export_with_tokenizer(tmp_path, tok_dir, 50257)
    assert_same_ids(gguf_path, load_tokenizer(tok_dir), benchmark_strings(300))


@pytest.mark.parametrize("name", ["gpt-2", "llama-bpe", "qwen2"])
def test_gguf_to_hf_rebuild_matches_llama_cpp_vectors(tmp_path, name):
    src = TOKENIZERS / "llamacpp-vocab-gguf"
    if not (src / f"ggml-vocab-{name}.gguf.gz").exists():
        pytest.skip(f"ggml-vocab-{name} not in shared data")
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(gzip.decompress((src / f"ggml-vocab-{name}.gguf.gz").read_bytes()))
    tok = hf_tokenizer_from_gguf(open_gguf(path), str(path))
    inputs = (src / f"ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    outputs = (src / f"ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8").split("\n")
    assert len(inputs) >= 40
    for text, ids in zip(inputs, outputs):
        assert tok.encode(text, add_special_tokens=False) == [int(x) for x in ids.split()], repr(text)
