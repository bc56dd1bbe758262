"""Model interpolation and task arithmetic, one tensor at a time.

Two recipes (both per tensor, computed in fp32, stored in model A's dtype):
  interpolate  θ = λ·θ_A + (1−λ)·θ_B                       (two models, no base)
  task arith.  θ = θ_C + Σ_i λ_i·(θ_i − θ_C)               (`base` C; one λ for all or one per model)
With one model and a base, task arithmetic scales A's task vector (λ=1 gives A, λ=0 gives C).

Why streaming: a 1.3B fp32 model is 5 GB, and loading A, B and the result at once needs 3×
that. We read one tensor per input through safetensors' `safe_open` and stream each result
tensor straight into a safetensors file whose header was written first (shapes and dtypes are
known up front), so peak memory is a few tensors. HF outputs are split into shards
(`max_shard_bytes`, with `model.safetensors.index.json`); slmkit checkpoints keep their single
`model.safetensors`. The output has the same format as input A.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from slmkit.errors import SlmkitError
from slmkit.formats.safetensors import (FLOAT_DTYPES as _FLOAT_DTYPES, ST_DTYPES as _ST_DTYPES, ModelSource, TensorSpec,
                                       open_model, read_json_object as _read_json, read_safetensors_header)
from slmkit.paths import atomic_dir, atomic_write_json, sha256_file

# config fields that never change what the weights mean
_IGNORED_HF_FIELDS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype", "use_cache", "name_or_path",
                      "_commit_hash", "output_attentions", "output_hidden_states"}
_IGNORED_CKPT_FIELDS = {"name"}
_TOKENIZER_EXTRA = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja", "tokenizer.json.gz")
DEFAULT_SHARD_BYTES = 500 * 1000 * 1000

# ----------------------------------------------------------------------------------------------
# compatibility checks


def config_fingerprint(source: ModelSource) -> dict[str, Any]:
    ignored = _IGNORED_CKPT_FIELDS if source.kind == "checkpoint" else _IGNORED_HF_FIELDS
    return {k: v for k, v in source.config.items() if k not in ignored}


def check_architectures(sources: Sequence[ModelSource]) -> None:
    """Same format, same config fields and same tensor table (names, shapes) — else a one-line error."""
    ref = sources[0]
    ref_cfg = config_fingerprint(ref)
    cfg_file = "slmkit.json" if ref.kind == "checkpoint" else "config.json"
    for other in sources[1:]:
        if other.kind != ref.kind:
            raise SlmkitError(f"{other.path}: is an {other.kind} folder but {ref.path} is an {ref.kind} folder; "
                              f"convert one (slmkit export hf) so both have the same format")
        cfg = config_fingerprint(other)
        for key in sorted(set(ref_cfg) | set(cfg)):
            if ref_cfg.get(key) != cfg.get(key):
                raise SlmkitError(f"{other.path / cfg_file}: field '{key}'={cfg.get(key)!r} differs from "
                                  f"{ref.path / cfg_file} ({ref_cfg.get(key)!r}); architectures must match to merge")
        missing = sorted(set(ref.tensors) - set(other.tensors))
        extra = sorted(set(other.tensors) - set(ref.tensors))
        if missing:
            raise SlmkitError(f"{other.path}: tensor '{missing[0]}' missing (present in {ref.path})")
        if extra:
            raise SlmkitError(f"{other.path}: unexpected tensor '{extra[0]}' (absent from {ref.path})")
        for name, spec in ref.tensors.items():
            if other.tensors[name].shape != spec.shape:
                raise SlmkitError(f"{other.path}: tensor '{name}' has shape {list(other.tensors[name].shape)}, "
                                  f"{ref.path} has {list(spec.shape)}")


def _tokenizer_json(folder: Path) -> dict[str, Any] | None:
    """The folder's tokenizer.json (None when the folder has none)."""
    from slmkit.model.tokenizer import read_tokenizer_json

    if not ((folder / "tokenizer.json").exists() or (folder / "tokenizer.json.gz").exists()):
        return None
    return read_tokenizer_json(folder)


def _vocab(tok: dict[str, Any]) -> dict[str, int]:
    vocab = dict((tok.get("model") or {}).get("vocab") or {})
    if isinstance((tok.get("model") or {}).get("vocab"), list):  # unigram: [[piece, score], ...]
        vocab = {piece: i for i, (piece, _score) in enumerate(tok["model"]["vocab"])}
    for added in tok.get("added_tokens") or []:
        vocab[added["content"]] = added["id"]
    return vocab


def tokenizer_hash(folder: Path) -> str | None:
    """sha256 of the tokenizer's model and added tokens (canonical JSON): what decides token ids."""
    tok = _tokenizer_json(folder)
    if tok is None:
        return None
    canonical = json.dumps({"model": tok.get("model"), "added_tokens": tok.get("added_tokens"),
                            "pre_tokenizer": tok.get("pre_tokenizer"), "normalizer": tok.get("normalizer")},
                           sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def check_tokenizers(sources: Sequence[ModelSource]) -> str | None:
    """All inputs carry the same tokenizer (or none does); the error names the first differing token."""
    ref = sources[0]
    ref_hash = tokenizer_hash(ref.path)
    for other in sources[1:]:
        other_hash = tokenizer_hash(other.path)
        if ref_hash == other_hash:
            continue
        if ref_hash is None or other_hash is None:
            has, lacks = (ref, other) if other_hash is None else (other, ref)
            raise SlmkitError(f"{lacks.path}: no tokenizer.json while {has.path} has one; cannot check the tokenizers "
                              f"match (pass --skip-tokenizer-check to merge anyway)")
        va, vb = _vocab(_tokenizer_json(ref.path) or {}), _vocab(_tokenizer_json(other.path) or {})
        ia, ib = {i: t for t, i in va.items()}, {i: t for t, i in vb.items()}
        diff = next((i for i in sorted(set(ia) | set(ib)) if ia.get(i) != ib.get(i)), None)
        detail = (f"token id {diff} is {ib.get(diff)!r} vs {ia.get(diff)!r}" if diff is not None
                  else f"same vocab ({len(va)} tokens) but different merges/normalisation")
        raise SlmkitError(f"{other.path / 'tokenizer.json'}: tokenizer differs from {ref.path / 'tokenizer.json'} "
                          f"({detail}); models with different tokenizers cannot be merged")
    return ref_hash


# ----------------------------------------------------------------------------------------------
# streaming safetensors writer


def _header_bytes(specs: Sequence[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None) -> bytes:
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    for name, dtype, shape in specs:
        n = math.prod(shape) * _ST_DTYPES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw


class StreamingSafetensorsWriter:
    """Write the header first, then each tensor's bytes in the declared order; checks every size."""

    def __init__(self, path: Path, specs: Sequence[tuple[str, str, tuple[int, ...]]], metadata: dict[str, str] | None = None):
        self.path, self.specs, self._next = Path(path), list(specs), 0
        self._f = open(self.path, "wb")
        self._f.write(_header_bytes(self.specs, metadata))

    def write(self, name: str, tensor) -> None:
        import torch

        exp_name, exp_dtype, exp_shape = self.specs[self._next]
        if name != exp_name or tuple(tensor.shape) != tuple(exp_shape):
            raise SlmkitError(f"{self.path}: tensor '{name}' {list(tensor.shape)} written out of order "
                              f"(expected '{exp_name}' {list(exp_shape)})")
        t = tensor.detach().contiguous().cpu()
        arr = (t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy()
        if arr.nbytes != math.prod(exp_shape) * _ST_DTYPES[exp_dtype]:
            raise SlmkitError(f"{self.path}: tensor '{name}' has dtype {t.dtype}, header says {exp_dtype}")
        self._f.write(arr.data)  # no extra copy of the tensor bytes
        self._next += 1

    def close(self) -> None:
        if self._f.closed:
            return
        if self._next != len(self.specs):
            self._f.close()
            raise SlmkitError(f"{self.path}: only {self._next} of {len(self.specs)} tensors written")
        self._f.flush()
        self._f.close()


def torch_dtype(st_dtype: str):
    import torch

    return {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
            "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
            "BOOL": torch.bool}[st_dtype]


def plan_shards(specs: Sequence[TensorSpec], max_shard_bytes: int) -> list[list[TensorSpec]]:
    """Greedy split in order; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


# ----------------------------------------------------------------------------------------------
# the merge


@dataclass
class Recipe:
    """θ = base + Σ coef_i·(θ_i − base) with base optional; `describe()` is written beside the result."""

    models: list[Path]
    coefs: list[float]
    base: Path | None = None

    def describe(self) -> dict[str, Any]:
        if self.base is None:
            formula = f"theta = {self.coefs[0]:g}*A + {self.coefs[1]:g}*B"
        else:
            terms = " + ".join(f"{c:g}*(M{i + 1} - C)" for i, c in enumerate(self.coefs))
            formula = f"theta = C + {terms}"
        return {"formula": formula, "models": [str(p) for p in self.models], "coefficients": self.coefs,
                "base": None if self.base is None else str(self.base)}


def interpolation(a: str | Path, b: str | Path, lam: float) -> Recipe:
    """θ = λ·θ_A + (1−λ)·θ_B."""
    return Recipe([Path(a), Path(b)], [float(lam), 1.0 - float(lam)])


def task_arithmetic(models: Sequence[str | Path], base: str | Path, lambdas: float | Sequence[float]) -> Recipe:
    """θ = θ_C + Σ λ_i (θ_i − θ_C); one λ for every model or one per model."""
    lams = [float(lambdas)] * len(models) if isinstance(lambdas, (int, float)) else [float(x) for x in lambdas]
    if len(lams) != len(models):
        raise SlmkitError(f"--lambda: {len(lams)} values for {len(models)} models (give one, or one per model)")
    return Recipe([Path(m) for m in models], lams, Path(base))


def _combine(recipe: Recipe, tensors: list, base_tensor):
    """fp32 arithmetic; λ exactly 1/0 reproduces an input bit for bit (no rounding through other terms)."""
    import torch

    if base_tensor is None:
        lam, mu = recipe.coefs
        if lam == 1.0 and mu == 0.0:
            return tensors[0].float()
        if lam == 0.0 and mu == 1.0:
            return tensors[1].float()
        return torch.add(tensors[0].float() * lam, tensors[1].float(), alpha=mu)
    out = base_tensor.float().clone()
    for coef, t in zip(recipe.coefs, tensors):
        if coef != 0.0:
            out.add_(t.float() - base_tensor.float(), alpha=coef)
    return out


def merge(recipe: Recipe, out_dir: str | Path, max_shard_bytes: int = DEFAULT_SHARD_BYTES,
          check_tokenizer: bool = True, progress: bool = True) -> Path:
    """Run a recipe into `out_dir` (atomically), in the format of the first model. Returns out_dir."""
    from safetensors import safe_open

    if not recipe.models:
        raise SlmkitError("merge: no input models")
    if recipe.base is None and len(recipe.models) != 2:
        raise SlmkitError(f"merge: interpolation needs exactly two models, got {len(recipe.models)} (use --base for more)")
    for coef in recipe.coefs:
        if not math.isfinite(coef):
            raise SlmkitError(f"--lambda: {coef} is not a finite number")
    sources = [open_model(p) for p in recipe.models]
    base = open_model(recipe.base) if recipe.base is not None else None
    everyone = sources + ([base] if base is not None else [])
    check_architectures(everyone)
    tok_hash = check_tokenizers(everyone) if check_tokenizer else tokenizer_hash(sources[0].path)
    ref = sources[0]
    out_dir = Path(out_dir)
    if out_dir.resolve() in {s.path.resolve() for s in everyone}:
        raise SlmkitError(f"{out_dir}: output folder is one of the inputs")
    specs = list(ref.tensors.values())
    shards = [specs] if ref.kind == "checkpoint" else plan_shards(specs, max_shard_bytes)
    names = (["model.safetensors"] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])

    def read(source: ModelSource, name: str):
        # a fresh handle per tensor: the memory map (and the RSS it accrues) is dropped right away
        with safe_open(str(source.tensors[name].file), framework="pt") as f:
            return f.get_tensor(name)

    bar = _progress(progress, sum(s.nbytes for s in specs))
    with atomic_dir(out_dir) as tmp, bar as (advance):
        weight_map: dict[str, str] = {}
        for shard, fname in zip(shards, names):
            writer = StreamingSafetensorsWriter(tmp / fname, [(s.name, s.dtype, s.shape) for s in shard],
                                                metadata={"format": "pt"})
            for spec in shard:
                tensors = [read(src, spec.name) for src in sources]
                base_t = read(base, spec.name) if base is not None else None
                if spec.dtype in _FLOAT_DTYPES:
                    result = _combine(recipe, tensors, base_t).to(torch_dtype(spec.dtype))
                else:
                    result = tensors[0]  # integer buffers are copied from A
                writer.write(spec.name, result)
                weight_map[spec.name] = fname
                del tensors, base_t, result
                advance(spec.nbytes)
            writer.close()
        _write_side_files(ref, tmp, names, weight_map, recipe, tok_hash)
    return out_dir


def _write_side_files(ref: ModelSource, tmp: Path, names: list[str], weight_map: dict[str, str],
                      recipe: Recipe, tok_hash: str | None) -> None:
    for name in ("tokenizer.json",) + _TOKENIZER_EXTRA:
        if (ref.path / name).exists():
            shutil.copy2(ref.path / name, tmp / name)
    info = {**recipe.describe(), "tokenizer_sha256": tok_hash}
    if ref.kind == "checkpoint":
        record = _read_json(ref.path / "slmkit.json")
        record["files"] = {"model.safetensors": {"sha256": sha256_file(tmp / "model.safetensors"),
                                                 "bytes": (tmp / "model.safetensors").stat().st_size}}
        meta = dict(record.get("meta") or {})
        meta["merge"] = info
        record["meta"] = meta
        atomic_write_json(tmp / "slmkit.json", record)
    else:
        shutil.copy2(ref.path / "config.json", tmp / "config.json")
        if (ref.path / "generation_config.json").exists():
            shutil.copy2(ref.path / "generation_config.json", tmp / "generation_config.json")
        if len(names) > 1:
            total = sum(ref.tensors[n].nbytes for n in weight_map)
            atomic_write_json(tmp / "model.safetensors.index.json",
                              {"metadata": {"total_size": total}, "weight_map": weight_map})
    atomic_write_json(tmp / "merge.json", info)


class _progress:
    """A rich byte progress bar (or nothing); used as `with _progress(...) as advance`."""

    def __init__(self, enabled: bool, total: int):
        self.enabled, self.total, self._p = enabled, total, None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(TextColumn("merging"), BarColumn(), DownloadColumn(), TimeRemainingColumn(), transient=True)
        self._p.__enter__()
        task = self._p.add_task("merge", total=self.total)
        return lambda n: self._p.update(task, advance=n)

    def __exit__(self, *exc) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


def parse_lambdas(text: str, what: str = "--lambdas") -> list[float]:
    """'0,0.25,1' or 'start:stop:step' (inclusive) → floats."""
    text = text.strip()
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            return [round(start + i * step, 10) for i in range(n)]
        values = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SlmkitError(f"{what}: {text!r} is not a comma list of numbers or start:stop:step") from None
    if not values or not all(math.isfinite(v) for v in values):
        raise SlmkitError(f"{what}: {text!r} gives no finite values")
    return values


def iter_tensors(path: str | Path) -> Iterable[tuple[str, Any]]:
    """(name, tensor) for every tensor of a model folder, one at a time (tests and tools)."""
    from safetensors import safe_open

    source = open_model(path)
    for name, spec in source.tensors.items():
        with safe_open(str(spec.file), framework="pt") as f:
            yield name, f.get_tensor(name)
