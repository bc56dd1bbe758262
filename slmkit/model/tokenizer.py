"""Tokenizers: load any tokenizer.json folder through HF `tokenizers`, or train a byte-level BPE.

We always hand out a `transformers.PreTrainedTokenizerFast`: it carries special tokens and the chat
template, which every runtime and lm-eval use.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path
from typing import Iterable

from slmkit.corpus.files import iter_file_texts
from slmkit.errors import SlmkitError
from slmkit.paths import atomic_write_json, atomic_write_text

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def tokenizer_json_path(folder: str | Path) -> Path:
    """The folder's tokenizer.json; a gzipped one (shared data ships some) is unpacked once into the cache."""
    folder = Path(folder)
    plain, gz = folder / "tokenizer.json", folder / "tokenizer.json.gz"
    if plain.exists():
        return plain
    if gz.exists():  # shared data ships some tokenizers gzipped: unpack once into the cache
        from slmkit.paths import cache_dir
        import hashlib

        key = hashlib.sha256(str(gz.resolve()).encode()).hexdigest()[:16]
        out = cache_dir() / "tokenizers" / key / "tokenizer.json"
        if not out.exists():
            out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out, gzip.decompress(gz.read_bytes()).decode("utf-8"))
        return out
    raise SlmkitError(f"{folder}: no tokenizer.json (or tokenizer.json.gz) found")


def read_tokenizer_json(folder: str | Path) -> dict:
    """The parsed tokenizer.json of a folder (one-line error naming the file when it is unreadable)."""
    from slmkit.paths import read_json

    return read_json(tokenizer_json_path(folder))


def load_tokenizer(folder: str | Path):
    """A PreTrainedTokenizerFast from a folder with tokenizer.json (+ tokenizer_config.json)."""
    from transformers import PreTrainedTokenizerFast

    folder = Path(folder)
    if not folder.is_dir():
        raise SlmkitError(f"{folder}: tokenizer folder not found")
    tok_json = tokenizer_json_path(folder)
    kwargs: dict = {}
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.exists():
        try:
            cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise SlmkitError(f"{cfg_path}: invalid JSON ({exc.msg}, line {exc.lineno})") from None
        for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
            value = cfg.get(key)
            if isinstance(value, dict):
                value = value.get("content")
            if value:
                kwargs[key] = value
        if cfg.get("chat_template"):
            kwargs["chat_template"] = cfg["chat_template"]
        for key in ("add_bos_token", "add_eos_token", "clean_up_tokenization_spaces", "model_max_length",
                    "model_input_names"):
            if key in cfg:
                kwargs[key] = cfg[key]
    template_file = folder / "chat_template.jinja"
    if template_file.exists() and "chat_template" not in kwargs:
        kwargs["chat_template"] = template_file.read_text(encoding="utf-8")
    try:
        return PreTrainedTokenizerFast(tokenizer_file=str(tok_json), **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise SlmkitError(f"{tok_json}: cannot load tokenizer ({str(exc).splitlines()[0]})") from None


def save_tokenizer(tokenizer, out_dir: str | Path) -> None:
    """Write tokenizer.json + a tokenizer_config.json both transformers 4.x and 5.x read."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "tokenizer.json", tokenizer.backend_tokenizer.to_str())
    cfg = {
        # transformers 5 writes "TokenizersBackend", which 4.x cannot resolve; this class exists in both.
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": int(min(getattr(tokenizer, "model_max_length", 1 << 30), 1 << 30)),
        "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids: HF generate/optimum reject them
    }
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        value = getattr(tokenizer, key, None)
        if value:
            cfg[key] = str(value)
    if getattr(tokenizer, "chat_template", None):
        cfg["chat_template"] = tokenizer.chat_template
    atomic_write_json(out_dir / "tokenizer_config.json", cfg)
    specials = {k: cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if k in cfg}
    atomic_write_json(out_dir / "special_tokens_map.json", specials)


def copy_tokenizer_files(src: str | Path, dst: str | Path) -> None:
    """Copy a tokenizer folder (normalising to files every reader understands)."""
    save_tokenizer(load_tokenizer(src), dst)


def train_bpe(texts: Iterable[str], vocab_size: int, out_dir: str | Path, min_frequency: int = 2):
    """Byte-level BPE with single-digit splitting (arithmetic needs digits as units) and ChatML specials."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise SlmkitError(f"tokenizer: vocab_size={vocab_size} must be at least {256 + len(SPECIAL_TOKENS)} (bytes + specials)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|pad|>",
        chat_template=CHATML_TEMPLATE,
    )
    save_tokenizer(fast, out_dir)
    return load_tokenizer(out_dir)


def train_bpe_from_files(paths: list[str | Path], vocab_size: int, out_dir: str | Path, max_chars: int = 50_000_000):
    """Train on local text/JSONL(.gz) files (JSONL: the 'text' field of each line). Every file is read (and
    checked: UTF-8, JSON lines) before training starts, so a bad file writes nothing."""
    texts: list[str] = []
    budget = max_chars
    for path in map(Path, paths):
        if not path.is_file():
            raise SlmkitError(f"{path}: training text file not found")
        kind = "jsonl" if ".jsonl" in path.name else "text"
        for line in iter_file_texts(path, kind, lines=True):
            budget -= len(line)
            texts.append(line)
            if budget <= 0:
                break
        if budget <= 0:
            break
    if not any(t.strip() for t in texts):
        raise SlmkitError(f"{', '.join(map(str, paths))}: no training text (empty files)")
    return train_bpe(texts, vocab_size, out_dir)
