"""Checkpoint directories: slmkit.json + model.safetensors + tokenizer files (+ trainer/ state).

Written atomically: every file goes into a temp folder, is fsynced, the meta file (sha256 and size of
every other file) is written last, and only then is the folder renamed into place and its parent
fsynced; so a crash or kill -9 mid-save leaves the previous checkpoints as they were (plus a temp
folder that the trainer removes) and a checkpoint that exists is complete on disk. Loading checks
every file and names the one that is missing, corrupt or mismatched.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import os

import torch

from slmkit.errors import SlmkitError
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.paths import atomic_dir, atomic_write_json, read_json, sha256_file

FORMAT = "slmkit-checkpoint"
FORMAT_VERSION = 1
META_FILE = "slmkit.json"
WEIGHTS_FILE = "model.safetensors"
GATE_TEXT_FILE = "gate_text.txt"  # text in the model's domain its exports' parity gates run on (slmkit.train.gate_text)


def read_gate_text(path: str | Path) -> str:
    """A gate text file's content (export gates and the trainer's checkpoint.gate_text); one-line errors."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SlmkitError(f"{path}: gate text file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SlmkitError(f"{path}: cannot read gate text ({exc.__class__.__name__}; UTF-8 text expected)") from None
    if not text.strip():
        raise SlmkitError(f"{path}: gate text file is empty")
    return text


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / META_FILE).exists()


def state_dict_for_save(model: Transformer) -> dict[str, torch.Tensor]:
    """Contiguous fp32 CPU tensors; tied lm_head is not stored (it *is* the embedding)."""
    return {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}


def write_checkpoint_files(folder: Path, model: Transformer, tokenizer_dir: str | Path | None = None,
                           meta: dict[str, Any] | None = None, extra: Callable[[Path], None] | None = None) -> None:
    """Fill an (empty, usually temporary) folder with a checkpoint; `extra(folder)` adds more files
    (trainer state) before the meta file, which records the sha256 and size of each file it names."""
    from safetensors.torch import save_file

    from slmkit.model.tokenizer import copy_tokenizer_files

    save_file(state_dict_for_save(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    if tokenizer_dir is not None:
        copy_tokenizer_files(tokenizer_dir, folder)
    before = {p for p in folder.rglob("*") if p.is_file()}
    if extra is not None:
        extra(folder)
    hashed = [folder / WEIGHTS_FILE] + sorted(p for p in folder.rglob("*") if p.is_file() and p not in before)
    record = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": model.cfg.to_dict(),
        "files": {p.relative_to(folder).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                  for p in hashed},
        "meta": meta or {},
    }
    atomic_write_json(folder / META_FILE, record)


def fsync_tree(folder: Path) -> None:
    """fsync every file and folder under `folder` (the data is on disk before the folder is renamed)."""
    for root, _dirs, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(root))


def fsync_dir(path: Path) -> None:
    """fsync a directory, so a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(path: str | Path, model: Transformer, tokenizer_dir: str | Path | None = None,
                    meta: dict[str, Any] | None = None, extra: Callable[[Path], None] | None = None) -> Path:
    """Atomically write a checkpoint folder; `extra(tmp_dir)` adds trainer state inside the same swap."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        write_checkpoint_files(tmp, model, tokenizer_dir, meta, extra)
        fsync_tree(tmp)
    fsync_dir(path.parent)
    return path


def verify_files(path: str | Path, record: dict[str, Any], names: list[str] | None = None) -> None:
    """Check the size and sha256 of the files the meta record lists (or just `names`); one error line
    naming the first file that is missing, truncated or changed."""
    path = Path(path)
    for name, expected in (record.get("files") or {}).items():
        if names is not None and name not in names:
            continue
        file = path / name
        if not file.exists():
            raise SlmkitError(f"{file}: missing")
        size = file.stat().st_size
        if expected.get("bytes") is not None and size != expected["bytes"]:
            raise SlmkitError(f"{file}: {size} bytes, expected {expected['bytes']} (truncated or replaced)")
        if expected.get("sha256") and sha256_file(file) != expected["sha256"]:
            raise SlmkitError(f"{file}: sha256 mismatch (corrupt file)")


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_dir():
        raise SlmkitError(f"{path}: checkpoint folder not found")
    meta_path = path / META_FILE
    record = read_json(meta_path, missing="missing (not an slmkit checkpoint folder)")
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise SlmkitError(f"{meta_path}: field 'format' must be '{FORMAT}'")
    if record.get("format_version", 0) > FORMAT_VERSION:
        raise SlmkitError(f"{meta_path}: format_version {record.get('format_version')} is newer than this slmkit reads ({FORMAT_VERSION})")
    return record


def load_state(path: str | Path, verify: bool = True) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """Config, tensors and the metadata record, each checked; errors name the file and the problem."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    record = read_meta(path)
    cfg = ModelConfig.from_dict(record.get("model"), source=f"{path / META_FILE} (model)")
    weights = path / WEIGHTS_FILE
    if not weights.exists():
        raise SlmkitError(f"{weights}: missing")
    expected = record.get("files", {}).get(WEIGHTS_FILE, {})
    size = weights.stat().st_size
    if expected.get("bytes") is not None and size != expected["bytes"]:
        raise SlmkitError(f"{weights}: {size} bytes, expected {expected['bytes']} (truncated or replaced)")
    if verify:
        verify_files(path, record, [WEIGHTS_FILE])
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise SlmkitError(f"{weights}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None
    return cfg, tensors, record


def load_checkpoint(path: str | Path, verify: bool = True, device: str | torch.device = "cpu") -> tuple[Transformer, dict[str, Any]]:
    cfg, tensors, record = load_state(path, verify=verify)
    model = Transformer(cfg)
    load_weights_checked(model, tensors, Path(path) / WEIGHTS_FILE)
    return model.to(device).eval(), record


def load_weights_checked(model: Transformer, tensors: dict[str, torch.Tensor], source: Path | str) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise SlmkitError(f"{source}: tensor '{missing[0]}' missing ({len(missing)} missing in all) for this model config")
    if unexpected:
        raise SlmkitError(f"{source}: unexpected tensor '{unexpected[0]}' for this model config")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SlmkitError(f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, config expects {tuple(expected[name].shape)}")
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
