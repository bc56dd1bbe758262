"""GGUF in both directions: write a llama.cpp file from any slmkit/HF Llama model, read one back to HF.

Writing starts from `hf_state_dict` (µP multipliers folded), so the GGUF is a plain Llama: tied
embeddings → no `output.weight`; Q/K rows permuted into llama.cpp's interleaved-pair RoPE layout.
The tokenizer goes in as a GPT-2-style BPE with the llama.cpp pre-tokenizer name whose regex matches
the HF pre-tokenizer (llama.cpp picks its split regex by that name alone, so a wrong name silently
changes tokenization). Reading dequantizes with `gguf`'s pure-Python kernels and undoes the permute.
Quantized types are made by llama.cpp itself (slmkit.export.quantize), not re-implemented here.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.errors import SlmkitError

ARCH = "llama"
DIRECT_TYPES = ("f32", "f16", "bf16")  # written here; everything else goes through llama.cpp's quantizer

# ---- pre-tokenizers: HF tokenizer.json signature <-> llama.cpp `tokenizer.ggml.pre` -----------------

LLAMA3_REGEX = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_REGEX = LLAMA3_REGEX.replace("\\p{N}{1,3}", "\\p{N}")
DEEPSEEK_V3_REGEXES = (
    "\\p{N}{1,3}",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
    "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*"
    "|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
)
# llama.cpp's "smollm" (= starcoder/refact) runs "\p{N}" then the GPT-2 regex: exactly HF Digits(individual)
# + ByteLevel(use_regex), which is also what slmkit.model.tokenizer.train_bpe builds.
DIGITS_BYTELEVEL_PRES = ("smollm", "starcoder", "refact")


def _steps(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _steps(p)]
    return [pre]


def _split_regex(step: dict) -> str | None:
    if step.get("type") != "Split" or step.get("behavior") != "Isolated" or step.get("invert"):
        return None
    return (step.get("pattern") or {}).get("Regex")


def detect_pre(tokenizer_json: dict, source: str = "tokenizer.json") -> str:
    """llama.cpp pre-tokenizer name whose splitting equals this HF pre-tokenizer (SlmkitError if none does)."""
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    norm = tokenizer_json.get("normalizer")
    if norm and not (norm.get("type") == "Sequence" and not norm.get("normalizers")) and norm.get("type") != "NFC":
        raise SlmkitError(f"{source}: field 'normalizer' type {norm.get('type')!r} has no llama.cpp BPE equivalent")

    def bytelevel(step: dict, regex: bool) -> bool:
        return step.get("type") == "ByteLevel" and not step.get("add_prefix_space") and bool(step.get("use_regex", True)) == regex

    if kinds == ["ByteLevel"] and bytelevel(steps[0], True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and bytelevel(steps[1], True):
        return "smollm"
    regexes = [_split_regex(s) for s in steps[:-1]]
    if steps and bytelevel(steps[-1], False):
        if regexes == [LLAMA3_REGEX]:
            return "llama-bpe"
        if regexes == [QWEN2_REGEX]:
            return "qwen2"
        if tuple(regexes) == DEEPSEEK_V3_REGEXES:
            return "deepseek-v3"
    raise SlmkitError(f"{source}: field 'pre_tokenizer' ({'+'.join(map(str, kinds)) or 'none'}) matches no llama.cpp "
                      f"pre-tokenizer this exporter knows; pass --tokenizer-pre NAME to force one")


def hf_pre_tokenizer(pre: str, source: str = "gguf"):
    """(normalizer, pre_tokenizer, ignore_merges) for a llama.cpp pre name — the inverse of detect_pre."""
    from tokenizers import Regex, normalizers, pre_tokenizers as pt

    def split(regex: str):
        return pt.Split(Regex(regex), behavior="isolated", invert=False)

    bl_noregex = pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)
    if pre in ("gpt-2", "gpt2"):  # llama.cpp's "default" is a different regex, so it is not mapped here
        return None, pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True), False
    if pre in DIGITS_BYTELEVEL_PRES:
        return None, pt.Sequence([pt.Digits(individual_digits=True),
                                  pt.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)]), False
    if pre in ("llama-bpe", "llama3"):
        return None, pt.Sequence([split(LLAMA3_REGEX), bl_noregex]), True
    if pre == "qwen2":
        return normalizers.NFC(), pt.Sequence([split(QWEN2_REGEX), bl_noregex]), False
    if pre == "deepseek-v3":
        return None, pt.Sequence([*map(split, DEEPSEEK_V3_REGEXES), bl_noregex]), False
    raise SlmkitError(f"{source}: field 'tokenizer.ggml.pre'={pre!r} is not supported for rebuilding an HF tokenizer")


# ---- tokenizer: HF folder -> GGUF vocab --------------------------------------------------------------

def _special_ids(tj: dict, tok_cfg: dict, model_cfg) -> dict[str, int | None]:
    vocab = dict(tj["model"]["vocab"])
    vocab.update({a["content"]: a["id"] for a in tj.get("added_tokens", [])})
    out: dict[str, int | None] = {}
    for key in ("bos", "eos", "pad", "unk"):
        value = tok_cfg.get(f"{key}_token")
        if isinstance(value, dict):
            value = value.get("content")
        tid = vocab.get(value) if value else None
        if tid is None and model_cfg is not None:
            tid = getattr(model_cfg, f"{key}_token_id", None)
        out[key] = tid
    return out


def _adds_bos(tj: dict, tok_cfg: dict) -> bool:
    if "add_bos_token" in tok_cfg:
        return bool(tok_cfg["add_bos_token"])
    post = tj.get("post_processor") or {}
    for step in ([post] if post.get("type") != "Sequence" else post.get("processors", [])):
        if step.get("type") == "TemplateProcessing" and step.get("single") and "SpecialToken" in step["single"][0]:
            return True
    return False


def gguf_vocab(tokenizer_dir: str | Path, vocab_size: int, model_cfg=None, pre: str | None = None) -> dict[str, Any]:
    """Tokens/types/merges/special ids for GGUF from an HF BPE tokenizer folder, padded to the model vocab."""
    from gguf import TokenType

    from slmkit.model.tokenizer import _tokenizer_json

    folder = Path(tokenizer_dir)
    tj_path = _tokenizer_json(folder)
    tj = json.loads(tj_path.read_text(encoding="utf-8"))
    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.exists() else {}
    model = tj.get("model", {})
    if model.get("type") != "BPE":
        raise SlmkitError(f"{tj_path}: field 'model.type'={model.get('type')!r}: only byte-level BPE tokenizers export to GGUF")
    ids = {tok: int(i) for tok, i in model["vocab"].items()}
    added = {int(a["id"]): a for a in tj.get("added_tokens", [])}
    ids.update({a["content"]: i for i, a in added.items()})
    top = max(ids.values()) + 1
    if top > vocab_size:
        raise SlmkitError(f"{tj_path}: tokenizer has id {top - 1} but the model vocab_size is {vocab_size}")
    tokens: list[str | None] = [None] * vocab_size
    for tok, i in ids.items():
        tokens[i] = tok
    types = []
    for i, tok in enumerate(tokens):
        if tok is None:
            tokens[i] = f"[PAD{i}]"
            types.append(int(TokenType.UNUSED))
        elif i in added:
            types.append(int(TokenType.CONTROL if added[i].get("special", True) else TokenType.USER_DEFINED))
        else:
            types.append(int(TokenType.NORMAL))
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    template = tok_cfg.get("chat_template")
    if not template and (folder / "chat_template.jinja").exists():
        template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    return {
        "tokens": tokens, "types": types, "merges": merges,
        "pre": pre or detect_pre(tj, str(tj_path)),
        "special": _special_ids(tj, tok_cfg, model_cfg),
        "add_bos": _adds_bos(tj, tok_cfg), "add_eos": bool(tok_cfg.get("add_eos_token", False)),
        "chat_template": template if isinstance(template, str) else None,
    }


# ---- weights: HF names -> GGUF names ---------------------------------------------------------------

_LAYER_MAP = {
    "input_layernorm.weight": "attn_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP_MAP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
            "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in _TOP_MAP:
        return _TOP_MAP[hf_name]
    parts = hf_name.split(".", 3)  # model.layers.N.rest
    if len(parts) == 4 and parts[:2] == ["model", "layers"] and parts[3] in _LAYER_MAP:
        return f"blk.{parts[2]}.{_LAYER_MAP[parts[3]]}"
    raise SlmkitError(f"tensor '{hf_name}' has no GGUF llama name")


def hf_name(gguf_tensor: str, source: str = "gguf") -> str:
    inverse = {v: k for k, v in _TOP_MAP.items()}
    if gguf_tensor in inverse:
        return inverse[gguf_tensor]
    layer_inv = {v: k for k, v in _LAYER_MAP.items()}
    parts = gguf_tensor.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[2] in layer_inv:
        return f"model.layers.{parts[1]}.{layer_inv[parts[2]]}"
    raise SlmkitError(f"{source}: tensor '{gguf_tensor}' is not part of a plain llama model")


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-split RoPE rows → llama.cpp interleaved pairs (what HF's convert script applies)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_rope: llama.cpp interleaved pairs → HF half-split layout."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---- writing -----------------------------------------------------------------------------------------

def _file_type(dtype: str) -> int:
    from gguf import LlamaFileType

    return {"f32": LlamaFileType.ALL_F32, "f16": LlamaFileType.MOSTLY_F16, "bf16": LlamaFileType.MOSTLY_BF16}[dtype]


def _add_tensor(writer, name: str, value: np.ndarray, dtype: str) -> None:
    from gguf import GGMLQuantizationType

    if value.ndim == 1 or dtype == "f32":
        writer.add_tensor(name, np.ascontiguousarray(value, dtype=np.float32))
    elif dtype == "f16":
        writer.add_tensor(name, np.ascontiguousarray(value.astype(np.float16)))
    else:  # bf16, round-to-nearest-even like torch
        import torch

        raw = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).to(torch.bfloat16).view(torch.int16).numpy()
        writer.add_tensor(name, raw, raw_shape=value.shape, raw_dtype=GGMLQuantizationType.BF16)


def write_gguf(model, out_path: str | Path, tokenizer_dir: str | Path, dtype: str = "f32",
               name: str | None = None, tokenizer_pre: str | None = None) -> Path:
    """Write `model` (native Transformer) as an f32/f16/bf16 llama GGUF, atomically (temp + rename)."""
    import gguf

    from slmkit.model.hf import hf_config, hf_state_dict

    if dtype not in DIRECT_TYPES:
        raise SlmkitError(f"gguf: type '{dtype}' is not written directly (direct: {', '.join(DIRECT_TYPES)})")
    cfg = model.cfg
    out_path = Path(out_path)
    vocab = gguf_vocab(tokenizer_dir, cfg.vocab_size, cfg, pre=tokenizer_pre)
    hf_cfg = hf_config(cfg)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp", dir=out_path.parent)
    os.close(fd)
    try:
        w = gguf.GGUFWriter(tmp, ARCH)
        w.add_name(name or cfg.name or "slmkit-model")
        w.add_file_type(_file_type(dtype))
        w.add_context_length(cfg.max_seq_len)
        w.add_embedding_length(cfg.d_model)
        w.add_block_count(cfg.n_layers)
        w.add_feed_forward_length(cfg.d_ff)
        w.add_head_count(cfg.n_heads)
        w.add_head_count_kv(cfg.n_kv_heads)
        w.add_rope_dimension_count(cfg.hd)
        w.add_rope_freq_base(float(cfg.rope_theta))
        w.add_layer_norm_rms_eps(float(hf_cfg["rms_norm_eps"]))
        w.add_vocab_size(cfg.vocab_size)
        if cfg.hd * cfg.n_heads != cfg.d_model:
            w.add_key_length(cfg.hd)
            w.add_value_length(cfg.hd)
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(vocab["pre"])
        w.add_token_list(vocab["tokens"])
        w.add_token_types(vocab["types"])
        w.add_token_merges(vocab["merges"])
        for key, tid in vocab["special"].items():
            if tid is not None:
                getattr(w, f"add_{key}_token_id")(int(tid))
        w.add_add_bos_token(vocab["add_bos"])
        w.add_add_eos_token(vocab["add_eos"])
        if vocab["chat_template"]:
            w.add_chat_template(vocab["chat_template"])
        for key, tensor in hf_state_dict(model).items():
            value = tensor.numpy()
            if key.endswith("q_proj.weight"):
                value = permute_rope(value, cfg.n_heads)
            elif key.endswith("k_proj.weight"):
                value = permute_rope(value, cfg.n_kv_heads)
            _add_tensor(w, gguf_name(key), value, dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.replace(tmp, out_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out_path


# ---- reading / validation ----------------------------------------------------------------------------

class TensorInfo:
    """One tensor's header entry; `shape` is in GGUF order (ne0 = row length first)."""

    __slots__ = ("name", "shape", "tensor_type", "offset", "n_bytes")

    def __init__(self, name: str, shape: tuple[int, ...], tensor_type, offset: int, n_bytes: int) -> None:
        self.name, self.shape, self.tensor_type, self.offset, self.n_bytes = name, shape, tensor_type, offset, n_bytes


class GGUFFile:
    """Parsed GGUF header: `fields` (metadata values, arrays as lists) and `tensors` (TensorInfo)."""

    def __init__(self, path: Path, version: int, fields: dict[str, Any], tensors: list[TensorInfo], size: int) -> None:
        self.path, self.version, self.fields, self.tensors, self.size = path, version, fields, tensors, size

    def raw(self, t: TensorInfo) -> np.ndarray:
        """The tensor's bytes as uint8 rows [n_rows, bytes_per_row] (memory-mapped, read-only)."""
        data = np.memmap(self.path, dtype=np.uint8, mode="r", offset=t.offset, shape=(t.n_bytes,))
        rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
        return data.reshape(rows, t.n_bytes // rows)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_NUMPY = {0: np.uint8, 1: np.int8, 2: np.uint16, 3: np.int16, 4: np.uint32, 5: np.int32, 6: np.float32, 7: np.bool_,
          10: np.uint64, 11: np.int64, 12: np.float64}


def _scan(buf, size: int, where: str) -> tuple[int, int, dict[str, Any], list[tuple]]:
    """Walk the header with explicit bounds checks (a corrupt count must not make us read past the end)."""
    import struct

    pos = 0

    def need(n: int) -> None:
        if n < 0 or pos + n > size:
            raise SlmkitError(f"{where}: corrupt or truncated GGUF header (needs {n} bytes at offset {pos}, file has {size})")

    def scalar(fmt: str):
        nonlocal pos
        n = struct.calcsize(fmt)
        need(n)
        (v,) = struct.unpack_from(fmt, buf, pos)
        pos += n
        return v

    def string() -> str:
        nonlocal pos
        n = scalar("<Q")
        need(n)
        v = bytes(buf[pos:pos + n]).decode("utf-8", errors="replace")
        pos += n
        return v

    def value(vtype: int):
        nonlocal pos
        if vtype in _SCALARS:
            return scalar(_SCALARS[vtype])
        if vtype == 8:
            return string()
        if vtype == 9:
            itype, count = scalar("<I"), scalar("<Q")
            if itype in _NUMPY:
                width = np.dtype(_NUMPY[itype]).itemsize
                need(count * width)
                arr = np.frombuffer(buf, dtype=_NUMPY[itype], count=count, offset=pos).tolist()
                pos += count * width
                return arr
            need(count * 8)  # every remaining item takes at least 8 bytes
            return [value(itype) for _ in range(count)]
        raise SlmkitError(f"{where}: corrupt GGUF header (unknown value type {vtype} at offset {pos})")

    need(24)
    if bytes(buf[:4]) != b"GGUF":
        raise SlmkitError(f"{where}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
    pos = 4
    version = scalar("<I")
    if version not in (2, 3):
        raise SlmkitError(f"{where}: GGUF version {version} is not supported (2 or 3)")
    n_tensors, n_kv = scalar("<Q"), scalar("<Q")
    need(n_kv * 12 + n_tensors * 24)
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        fields[key] = value(scalar("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        n_dims = scalar("<I")
        if n_dims > 8:
            raise SlmkitError(f"{where}: tensor '{name}' has {n_dims} dimensions (corrupt header)")
        dims = tuple(scalar("<Q") for _ in range(n_dims))
        infos.append((name, dims, scalar("<I"), scalar("<Q")))
    return pos, version, fields, infos


def open_gguf(path: str | Path) -> GGUFFile:
    """Parse and validate a GGUF header: magic, version, metadata and that every tensor lies inside the file.

    Done in Python before llama.cpp sees the file, so a truncated or corrupt file is an SlmkitError, not a crash.
    """
    import mmap

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    if not path.is_file():
        raise SlmkitError(f"{path}: GGUF file not found")
    size = path.stat().st_size
    if size < 24:
        raise SlmkitError(f"{path}: not a GGUF file ({size} bytes)")
    with open(path, "rb") as f:
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        end, version, fields, infos = _scan(buf, size, str(path))
    finally:
        try:
            buf.close()
        except BufferError:  # a numpy view still alive; the map goes when it does
            pass
    align = int(fields.get("general.alignment", 32) or 32)
    data_start = (end + align - 1) // align * align
    tensors = []
    for name, dims, type_id, rel in infos:
        try:
            ttype = GGMLQuantizationType(type_id)
            block, type_size = GGML_QUANT_SIZES[ttype]
        except (ValueError, KeyError):
            raise SlmkitError(f"{path}: tensor '{name}' has unknown type id {type_id} (corrupt or too new)") from None
        count = int(np.prod(dims)) if dims else 1
        if dims and dims[0] % block:
            raise SlmkitError(f"{path}: tensor '{name}' row length {dims[0]} is not a multiple of {ttype.name} blocks")
        n_bytes = count // block * type_size
        if data_start + rel + n_bytes > size:
            raise SlmkitError(f"{path}: tensor '{name}' ends at byte {data_start + rel + n_bytes} but the file has "
                              f"{size} bytes (truncated)")
        tensors.append(TensorInfo(name, dims, ttype, data_start + rel, n_bytes))
    if "general.architecture" not in fields:
        raise SlmkitError(f"{path}: field 'general.architecture' missing (corrupt GGUF)")
    return GGUFFile(path, version, fields, tensors, size)


def _field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    return reader.fields.get(key, default)


def gguf_config(reader, source: str = "gguf"):
    """Native ModelConfig from a llama GGUF's metadata."""
    from slmkit.model.config import ModelConfig

    arch = _field(reader, "general.architecture")
    if arch != ARCH:
        raise SlmkitError(f"{source}: field 'general.architecture'={arch!r}: only 'llama' GGUFs convert to HF Llama")

    def need(key: str):
        value = _field(reader, f"{ARCH}.{key}")
        if value is None:
            raise SlmkitError(f"{source}: field '{ARCH}.{key}' missing")
        return value

    names = {t.name for t in reader.tensors}
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise SlmkitError(f"{source}: tensor 'token_embd.weight' missing")
    d, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = _field(reader, f"{ARCH}.attention.key_length")
    rope_dim = _field(reader, f"{ARCH}.rope.dimension_count")
    hd = int(head_dim or d // n_heads)
    if rope_dim is not None and int(rope_dim) != hd:
        raise SlmkitError(f"{source}: field '{ARCH}.rope.dimension_count'={rope_dim}: partial RoPE is not supported")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    ids = {k: _field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    return ModelConfig(
        vocab_size=int(_field(reader, f"{ARCH}.vocab_size") or (len(tokens) if tokens else embd.shape[1])),
        d_model=d, n_layers=int(need("block_count")), n_heads=n_heads,
        n_kv_heads=int(_field(reader, f"{ARCH}.attention.head_count_kv") or n_heads),
        d_ff=int(need("feed_forward_length")), max_seq_len=int(_field(reader, f"{ARCH}.context_length", 2048)),
        rope_theta=float(_field(reader, f"{ARCH}.rope.freq_base", 10000.0)),
        norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names, head_dim=hd if hd * n_heads != d else None,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["padding"],
        name=str(_field(reader, "general.name", "gguf-import")),
    )


def gguf_hf_tensors(reader, cfg, source: str = "gguf") -> dict[str, "np.ndarray"]:
    """Dequantized fp32 HF-named tensors (Q/K un-permuted back to HF's half-split layout)."""
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        name = hf_name(t.name, source)
        value = np.asarray(dequantize(reader.raw(t), t.tensor_type), dtype=np.float32)
        shape = tuple(int(x) for x in reversed(t.shape))
        value = value.reshape(shape)
        if name.endswith("q_proj.weight"):
            value = unpermute_rope(value, cfg.n_heads)
        elif name.endswith("k_proj.weight"):
            value = unpermute_rope(value, cfg.n_kv_heads)
        out[name] = value if value.flags.writeable and value.flags.c_contiguous else np.array(value, order="C")
    return out


def hf_tokenizer_from_gguf(reader, source: str = "gguf"):
    """PreTrainedTokenizerFast rebuilt from a GGUF's BPE vocab, with the HF pre-tokenizer for its pre name."""
    from gguf import TokenType
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors
    from transformers import PreTrainedTokenizerFast

    model = _field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise SlmkitError(f"{source}: field 'tokenizer.ggml.model'={model!r}: only BPE ('gpt2') vocabularies rebuild to HF")
    tokens = list(_field(reader, "tokenizer.ggml.tokens"))
    types = list(_field(reader, "tokenizer.ggml.token_type", [int(TokenType.NORMAL)] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges", [])]
    pre = _field(reader, "tokenizer.ggml.pre", "default")
    normalizer, pre_tok, ignore_merges = hf_pre_tokenizer(pre, source)
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges, fuse_unk=False, byte_fallback=False))
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tok
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [AddedToken(tokens[i], special=types[i] == TokenType.CONTROL, normalized=False)
                for i in range(len(tokens)) if types[i] in (TokenType.CONTROL, TokenType.USER_DEFINED)]
    tok.add_special_tokens([a for a in specials if a.special])
    tok.add_tokens([a for a in specials if not a.special])

    def token(key: str) -> str | None:
        tid = _field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(tid)] if tid is not None and 0 <= int(tid) < len(tokens) else None

    kwargs = {k: v for k, v in (("bos_token", token("bos")), ("eos_token", token("eos")),
                                 ("pad_token", token("padding")), ("unk_token", token("unknown"))) if v}
    template = _field(reader, "tokenizer.chat_template")
    if template:
        kwargs["chat_template"] = template
    ctx = _field(reader, f"{_field(reader, 'general.architecture')}.context_length")
    if ctx:
        kwargs["model_max_length"] = int(ctx)
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False, **kwargs)


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """Dequantize a llama GGUF into a plain fp32 HF Llama folder (config, safetensors, tokenizer), atomically."""
    import torch
    from safetensors.torch import save_file

    from slmkit.model.hf import generation_config, hf_config
    from slmkit.model.tokenizer import save_tokenizer
    from slmkit.paths import atomic_dir, atomic_write_json

    reader = open_gguf(gguf_path)
    source = str(gguf_path)
    cfg = gguf_config(reader, source)
    tensors = {k: torch.from_numpy(v) for k, v in gguf_hf_tensors(reader, cfg, source).items()}
    tokenizer = hf_tokenizer_from_gguf(reader, source)
    with atomic_dir(out_dir) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_config(cfg))
        atomic_write_json(tmp / "generation_config.json", generation_config(cfg))
        save_tokenizer(tokenizer, tmp)
    return Path(out_dir)


# ---- export with the parity gate ---------------------------------------------------------------------

def tokenizer_agreement(runtime, hf_tokenizer, texts) -> dict[str, Any]:
    """Do llama.cpp and the HF tokenizer split these texts identically? (a wrong pre name shows up here)."""
    mismatches = []
    for text in texts:
        ours = hf_tokenizer.encode(text, add_special_tokens=False)
        theirs = runtime.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        if list(ours) != list(theirs):
            mismatches.append(text[:60])
    return {"texts": len(texts), "mismatches": len(mismatches), "first_mismatch": mismatches[0] if mismatches else None}


def export_gguf(model_path: str | Path, out_path: str | Path, qtype: str = "f32", parity: bool = True,
                bounds: dict | None = None, tokenizer_dir: str | Path | None = None,
                tokenizer_pre: str | None = None, n_threads: int | None = None, model=None,
                parity_batches: list[list[int]] | None = None) -> dict[str, Any]:
    """slmkit checkpoint / HF Llama folder → GGUF of `qtype`, checked against torch fp32 before it is kept.

    parity_batches: token ids to gate on (default: generic held-out text; a small in-domain model is
    near-uniform there, so pass in-domain text for it).
    The file is built under a temporary name and renamed into place only after the parity gate passes;
    the report goes to OUT.parity.json either way. Returns {"path", "type", "bytes", "parity"}.
    """
    from slmkit.export.parity import heldout_token_batches, run_parity, HELDOUT_TEXT
    from slmkit.export.quantize import QUANT_TYPES, quantize_gguf
    from slmkit.model.hf import load_any, tokenizer_dir_of
    from slmkit.paths import atomic_write_json

    qtype = qtype.lower()
    if qtype not in DIRECT_TYPES and qtype not in QUANT_TYPES:
        raise SlmkitError(f"gguf: unknown type '{qtype}' (known: {', '.join((*DIRECT_TYPES, *QUANT_TYPES))})")
    out_path = Path(out_path)
    if out_path.suffix != ".gguf":
        raise SlmkitError(f"{out_path}: output file name must end in .gguf")
    tok_dir = Path(tokenizer_dir) if tokenizer_dir else tokenizer_dir_of(model_path)
    if tok_dir is None:
        raise SlmkitError(f"{model_path}: no tokenizer.json beside the model; pass --tokenizer DIR (GGUF embeds the tokenizer)")
    model = model if model is not None else load_any(model_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    stage = out_path.with_name(f".{out_path.name}.unverified")
    base = out_path.with_name(f".{out_path.name}.f32.tmp")
    try:
        if qtype in DIRECT_TYPES:
            write_gguf(model, stage, tok_dir, qtype, tokenizer_pre=tokenizer_pre)
        else:
            write_gguf(model, base, tok_dir, "f32", tokenizer_pre=tokenizer_pre)
            quantize_gguf(base, stage, qtype, n_threads)
        report = None
        if parity:
            from slmkit.model.tokenizer import load_tokenizer
            from slmkit.serve.llamacpp_backend import LlamaCppRuntime

            hf_tok = load_tokenizer(tok_dir)
            batches = parity_batches or heldout_token_batches(hf_tok, model.cfg.vocab_size, n_batches=4,
                                                              seq_len=min(64, model.cfg.max_seq_len))
            n_ctx = max(len(b) for b in batches) + 8
            runtime = LlamaCppRuntime(stage, n_ctx=n_ctx, n_threads=n_threads, f32_kv=True, tokenizer=hf_tok)
            try:
                tok_check = tokenizer_agreement(runtime, hf_tok, HELDOUT_TEXT)
                failures = [] if not tok_check["mismatches"] else [
                    f"llama.cpp tokenizes {tok_check['mismatches']} of {tok_check['texts']} held-out texts differently "
                    f"from the HF tokenizer (pre-tokenizer '{_field(open_gguf(stage), 'tokenizer.ggml.pre')}')"]
                report = run_parity(model, runtime, batches, quantized=qtype != "f32", bounds=bounds,
                                    report_path=Path(f"{out_path}.parity.json"), qtype=qtype,
                                    extra={"artifact": str(out_path), "tokenizer_check": tok_check}, failures=failures)
            finally:
                runtime.close()
        types = tensor_types(stage)
        if report is not None:
            report["tensor_types"] = types
            atomic_write_json(Path(f"{out_path}.parity.json"), report)
        os.replace(stage, out_path)
    finally:
        for tmp in (stage, base):
            if tmp.exists():
                tmp.unlink()
    return {"path": out_path, "type": qtype, "bytes": out_path.stat().st_size, "tensor_types": types, "parity": report}


def tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF holds (shows llama.cpp's fallbacks for odd shapes)."""
    counts: dict[str, int] = {}
    for t in open_gguf(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts
