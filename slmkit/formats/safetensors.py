"""safetensors model folders, read from their headers only: tensor names, dtypes, shapes, which file.

A 1.3B fp32 model is 5 GB; merging, size accounting and bandwidth bounds need only the table of
tensors, which safetensors keeps in a JSON header (8-byte little-endian length, then JSON). Works for
slmkit checkpoints (slmkit.json + model.safetensors) and HF folders (config.json + one file or shards).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError
from slmkit.paths import read_json

ST_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
              "F8_E4M3": 1, "F8_E5M2": 1}
FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


@dataclass
class TensorSpec:
    name: str
    dtype: str  # safetensors dtype string, e.g. "F32"
    shape: tuple[int, ...]
    file: Path

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ST_DTYPES[self.dtype]


@dataclass
class ModelSource:
    """What a merge needs to know about one input: format, config, tensor table, tokenizer identity."""

    path: Path
    kind: str  # "checkpoint" | "hf"
    config: dict[str, Any]
    tensors: dict[str, TensorSpec] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (8-byte little-endian length, then JSON)."""
    try:
        with open(path, "rb") as f:
            raw = f.read(8)
            if len(raw) != 8:
                raise SlmkitError(f"{path}: not a safetensors file (shorter than 8 bytes)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100 * 1024 * 1024:
                raise SlmkitError(f"{path}: not a safetensors file (header length {n})")
            return json.loads(f.read(n))
    except FileNotFoundError:
        raise SlmkitError(f"{path}: weight file missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SlmkitError(f"{path}: corrupt safetensors header") from None


def _weight_files(folder: Path, kind: str) -> list[Path]:
    if kind == "checkpoint":
        return [folder / "model.safetensors"]
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists():
        return [single]
    if index.exists():
        weight_map = read_json_object(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise SlmkitError(f"{index}: field 'weight_map' missing or empty")
        return [folder / name for name in sorted(set(weight_map.values()))]
    raise SlmkitError(f"{folder}: no model.safetensors or model.safetensors.index.json (merge reads safetensors only)")


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object (config.json, slmkit.json, an index)."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise SlmkitError(f"{path}: expected a JSON object")
    return data


def open_model(path: str | Path) -> ModelSource:
    """Describe an slmkit checkpoint or HF folder from its headers only (no tensor data is read)."""
    path = Path(path)
    if not path.is_dir():
        raise SlmkitError(f"{path}: model folder not found")
    if (path / "slmkit.json").exists():
        record = read_json_object(path / "slmkit.json")
        if not isinstance(record.get("model"), dict):
            raise SlmkitError(f"{path / 'slmkit.json'}: field 'model' missing")
        kind, config = "checkpoint", dict(record["model"])
    elif (path / "config.json").exists():
        kind, config = "hf", read_json_object(path / "config.json")
    else:
        raise SlmkitError(f"{path}: neither an slmkit checkpoint (slmkit.json) nor an HF model folder (config.json)")
    source = ModelSource(path, kind, config)
    for file in _weight_files(path, kind):
        header = read_safetensors_header(file)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info.get("dtype") not in ST_DTYPES:
                raise SlmkitError(f"{file}: tensor '{name}' has unsupported dtype {info.get('dtype')!r}")
            source.tensors[name] = TensorSpec(name, info["dtype"], tuple(info["shape"]), file)
    if not source.tensors:
        raise SlmkitError(f"{path}: no tensors in the weight files")
    return source
