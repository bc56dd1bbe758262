"""The decode speed bound: memory bandwidth / bytes read per decoded token.

Decoding one token at batch 1 reads every weight once (matmul-vector products are memory bound),
except the embedding table, of which only one row is gathered; a tied output matrix is read once
in full for the logits. On top comes the KV cache of all previous positions. Dividing the measured
copy bandwidth by those bytes gives the tokens/s no implementation can beat on this machine, and
each measured decode speed is reported as a fraction of it.

Copy bandwidth follows the STREAM convention: bytes read + bytes written per second of a large
`numpy.copyto` (best of several runs, so other load on the machine lowers it the least).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError


def copy_bandwidth_gbps(mbytes: int = 512, runs: int = 7) -> dict[str, float]:
    """STREAM-style copy bandwidth (read+write GB/s) and read-only bandwidth (sum), best of `runs`."""
    import numpy as np

    n = mbytes * 2**20 // 4
    src = np.ones(n, np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # first touch
    best_copy = best_read = float("inf")
    for _ in range(runs):
        t = time.perf_counter()
        np.copyto(dst, src)
        best_copy = min(best_copy, time.perf_counter() - t)
    for _ in range(runs):
        t = time.perf_counter()
        src.sum(dtype=np.float32)
        best_read = min(best_read, time.perf_counter() - t)
    return {"copy_gbps": round(2 * n * 4 / best_copy / 1e9, 2), "read_gbps": round(n * 4 / best_read / 1e9, 2),
            "buffer_mb": mbytes, "method": "numpy.copyto (read+write bytes) / numpy sum (read bytes), best of %d" % runs}


@dataclass
class ArtifactInfo:
    """What the bound needs about one artifact: weights read per token and KV bytes per position."""

    path: str
    format: str  # "gguf" | "onnx" | "safetensors"
    qtype: str  # e.g. "f32", "q4_k_m", "int8"
    file_bytes: int
    weight_bytes_per_token: int  # all weights except the untouched embedding rows
    n_layers: int
    n_kv_heads: int
    head_dim: int
    kv_dtype_bytes: int  # llama.cpp: f16 cache; torch / ORT: fp32

    def kv_bytes_per_position(self) -> int:
        return 2 * self.n_layers * self.n_kv_heads * self.head_dim * self.kv_dtype_bytes

    def bytes_per_token(self, context_len: float) -> float:
        return self.weight_bytes_per_token + self.kv_bytes_per_position() * context_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def path_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def inspect_artifact(path: str | Path, backend: str) -> ArtifactInfo:
    path = Path(path)
    if backend == "llama.cpp":
        return _gguf_info(path)
    if backend == "onnxruntime":
        return _onnx_info(path)
    return _safetensors_info(path)


# ---- GGUF --------------------------------------------------------------------------------------

_FTYPE_NAMES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s",
                12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k",
                25: "iq4_nl", 30: "iq4_xs", 32: "bf16", 33: "q4_0_4_4", 34: "q4_0_4_8", 35: "q4_0_8_8", 36: "tq1_0", 37: "tq2_0"}


def _gguf_info(path: Path) -> ArtifactInfo:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # noqa: BLE001 - the reader raises several types for bad files
        raise SlmkitError(f"{path}: cannot read GGUF ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None

    def field(key: str, default=None):
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    arch = field("general.architecture", "llama")
    n_layers = int(field(f"{arch}.block_count"))
    n_heads = int(field(f"{arch}.attention.head_count"))
    n_kv = int(field(f"{arch}.attention.head_count_kv", n_heads))
    head_dim = int(field(f"{arch}.attention.key_length", int(field(f"{arch}.embedding_length")) // n_heads))
    names = {t.name: t for t in reader.tensors}
    total = sum(int(t.n_bytes) for t in reader.tensors)
    emb = names.get("token_embd.weight")
    per_token = total
    if emb is not None and "output.weight" in names:  # untied: the embedding is only gathered (one row)
        per_token -= int(emb.n_bytes) - int(emb.n_bytes) // int(emb.shape[-1] if len(emb.shape) > 1 else 1)
    ftype = field("general.file_type")
    qtype = _FTYPE_NAMES.get(int(ftype), f"ftype{ftype}") if ftype is not None else _guess_qtype(path)
    return ArtifactInfo(str(path), "gguf", qtype, path.stat().st_size, per_token, n_layers, n_kv, head_dim, 2)


def _guess_qtype(path: Path) -> str:
    stem = path.stem.lower()
    for name in sorted(_FTYPE_NAMES.values(), key=len, reverse=True):
        if stem.endswith(name):
            return name
    return "unknown"


# ---- ONNX --------------------------------------------------------------------------------------

def _onnx_info(path: Path) -> ArtifactInfo:
    import onnx
    from onnx import external_data_helper

    folder, model_file = (path.parent, path) if path.suffix == ".onnx" else (path, path / "model.onnx")
    if not model_file.exists():
        raise SlmkitError(f"{model_file}: missing (not an ONNX export folder)")
    proto = onnx.load(str(model_file), load_external_data=False)
    graph = proto.graph
    sizes: dict[str, int] = {}
    for init in graph.initializer:
        if external_data_helper.uses_external_data(init):
            info = {e.key: e.value for e in init.external_data}
            sizes[init.name] = int(info.get("length", 0))
        else:
            sizes[init.name] = len(init.raw_data) or _proto_len(init)
    consumers: dict[str, set[str]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in sizes:
                consumers.setdefault(name, set()).add(node.op_type if not (node.op_type == "Gather" and i != 0) else "GatherIdx")
    gathered = [n for n, ops in consumers.items() if ops == {"Gather"} and sizes[n] > 1 << 16]
    dims = {init.name: list(init.dims) for init in graph.initializer}
    per_token = sum(sizes.values())
    for name in gathered:  # embedding tables: one row per token
        rows = dims[name][0] if dims.get(name) else 1
        per_token -= sizes[name] - sizes[name] // max(rows, 1)
    meta = _read_json(folder / "slmkit_onnx.json") or {}
    cfg = _read_json(folder / "config.json") or {}
    n_layers = int(cfg.get("num_hidden_layers") or meta.get("n_layers") or 0)
    n_heads = int(cfg.get("num_attention_heads") or 1)
    n_kv = int(cfg.get("num_key_value_heads") or n_heads)
    head_dim = int(cfg.get("head_dim") or (int(cfg.get("hidden_size", 0)) // n_heads))
    int8 = bool(meta.get("int8") or meta.get("quantization")) or any(
        i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for i in graph.initializer)
    return ArtifactInfo(str(folder), "onnx", "int8" if int8 else "fp32", path_bytes(folder), per_token,
                        n_layers, n_kv, head_dim, 4)


def _proto_len(init) -> int:
    import numpy as np
    from onnx import numpy_helper

    return int(np.asarray(numpy_helper.to_array(init)).nbytes)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# ---- slmkit checkpoint / HF folder (torch) -------------------------------------------------------

def _safetensors_info(path: Path) -> ArtifactInfo:
    from slmkit.formats.safetensors import open_model

    source = open_model(path)
    if source.kind == "checkpoint":
        from slmkit.model.config import ModelConfig

        cfg = ModelConfig.from_dict(source.config, source=str(path / "slmkit.json"))
        n_layers, n_kv, hd, tied = cfg.n_layers, cfg.n_kv_heads, cfg.hd, cfg.tie_embeddings
        emb_name = "embed_tokens.weight"
    else:
        c = source.config
        n_heads = int(c["num_attention_heads"])
        n_layers, n_kv = int(c["num_hidden_layers"]), int(c.get("num_key_value_heads") or n_heads)
        hd = int(c.get("head_dim") or int(c["hidden_size"]) // n_heads)
        tied = bool(c.get("tie_word_embeddings", False)) or "lm_head.weight" not in source.tensors
        emb_name = "model.embed_tokens.weight"
    # torch computes in fp32 whatever the file stores, so count fp32 bytes (what the matmuls read)
    numel = {name: spec.nbytes // {"F32": 4, "F16": 2, "BF16": 2}.get(spec.dtype, 4) for name, spec in source.tensors.items()}
    per_token = 4 * sum(numel.values())
    if not tied and emb_name in numel:
        rows = source.tensors[emb_name].shape[0]
        per_token -= 4 * (numel[emb_name] - numel[emb_name] // rows)
    dtypes = {spec.dtype for spec in source.tensors.values()}
    return ArtifactInfo(str(path), "safetensors", "f32" if dtypes <= {"F32"} else "+".join(sorted(dtypes)).lower(),
                        path_bytes(path), per_token, n_layers, n_kv, hd, 4)


def decode_bound(info: ArtifactInfo, bandwidth_gbps: float, prompt_tokens: int, new_tokens: int) -> dict[str, float]:
    """Tokens/s bound at the mean decode context (prompt + half the new tokens)."""
    context = prompt_tokens + new_tokens / 2
    per_token = info.bytes_per_token(context)
    return {"bytes_per_token": int(per_token), "weight_bytes_per_token": info.weight_bytes_per_token,
            "kv_bytes_per_token": int(info.kv_bytes_per_position() * context),
            "bound_tok_s": round(bandwidth_gbps * 1e9 / per_token, 2)}
