"""GGUF files, read side: header parsing with bounds checks, metadata → ModelConfig, tensors → HF names,
the llama.cpp pre-tokenizer table (both directions) and GGUF → HF folder conversion.

Any stage may read a GGUF through this module (the llama.cpp runtime checks a file here before llama.cpp
sees it, so a truncated or corrupt file is an SlmkitError, never a crash); writing lives in slmkit.export.gguf.
Tensor names come from gguf-py's own name table (`gguf.get_tensor_name_map`), the one the llama.cpp
converters use. Q/K rows are stored in llama.cpp's interleaved-pair RoPE layout: `permute_rope` /
`unpermute_rope` convert to and from Hugging Face's half-split layout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from slmkit.errors import SlmkitError

ARCH = "llama"

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


# ---- tensor names: one table, gguf-py's ----------------------------------------------------------------

_HF_LAYER_TENSORS = ("input_layernorm", "post_attention_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                     "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
_HF_TOP_TENSORS = ("model.embed_tokens", "model.norm", "lm_head")


def tensor_name_table(n_layers: int) -> dict[str, str]:
    """HF Llama tensor name -> GGUF name for a model of `n_layers` blocks, from gguf-py's name map."""
    import gguf

    table = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    hf = [f"{t}.weight" for t in _HF_TOP_TENSORS]
    hf += [f"model.layers.{i}.{t}.weight" for i in range(n_layers) for t in _HF_LAYER_TENSORS]
    out = {}
    for name in hf:
        mapped = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is None:  # gguf-py always knows the plain Llama names; a miss means an incompatible gguf-py
            raise SlmkitError(f"gguf-py has no GGUF name for tensor '{name}' (gguf package too old or too new?)")
        out[name] = mapped
    return out


def permute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF half-split RoPE rows → llama.cpp interleaved pairs (what HF's convert script applies)."""
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of permute_rope: llama.cpp interleaved pairs → HF half-split layout."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


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


def field(reader: GGUFFile, key: str, default: Any = None) -> Any:
    """One metadata value (`general.architecture`, `llama.context_length`, ...) or `default`."""
    return reader.fields.get(key, default)


def gguf_config(reader, source: str = "gguf"):
    """Native ModelConfig from a llama GGUF's metadata."""
    from slmkit.model.config import ModelConfig

    arch = field(reader, "general.architecture")
    if arch != ARCH:
        raise SlmkitError(f"{source}: field 'general.architecture'={arch!r}: only 'llama' GGUFs convert to HF Llama")

    def need(key: str):
        value = field(reader, f"{ARCH}.{key}")
        if value is None:
            raise SlmkitError(f"{source}: field '{ARCH}.{key}' missing")
        return value

    names = {t.name for t in reader.tensors}
    embd = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embd is None:
        raise SlmkitError(f"{source}: tensor 'token_embd.weight' missing")
    d, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = field(reader, f"{ARCH}.attention.key_length")
    rope_dim = field(reader, f"{ARCH}.rope.dimension_count")
    hd = int(head_dim or d // n_heads)
    if rope_dim is not None and int(rope_dim) != hd:
        raise SlmkitError(f"{source}: field '{ARCH}.rope.dimension_count'={rope_dim}: partial RoPE is not supported")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    ids = {k: field(reader, f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    return ModelConfig(
        vocab_size=int(field(reader, f"{ARCH}.vocab_size") or (len(tokens) if tokens else embd.shape[1])),
        d_model=d, n_layers=int(need("block_count")), n_heads=n_heads,
        n_kv_heads=int(field(reader, f"{ARCH}.attention.head_count_kv") or n_heads),
        d_ff=int(need("feed_forward_length")), max_seq_len=int(field(reader, f"{ARCH}.context_length", 2048)),
        rope_theta=float(field(reader, f"{ARCH}.rope.freq_base", 10000.0)),
        norm_eps=float(need("attention.layer_norm_rms_epsilon")),
        tie_embeddings="output.weight" not in names, head_dim=hd if hd * n_heads != d else None,
        bos_token_id=ids["bos"], eos_token_id=ids["eos"], pad_token_id=ids["padding"],
        name=str(field(reader, "general.name", "gguf-import")),
    )


def gguf_hf_tensors(reader, cfg, source: str = "gguf") -> dict[str, "np.ndarray"]:
    """Dequantized fp32 HF-named tensors (Q/K un-permuted back to HF's half-split layout)."""
    from gguf.quants import dequantize

    out = {}
    inverse = {v: k for k, v in tensor_name_table(cfg.n_layers).items()}
    for t in reader.tensors:
        name = inverse.get(t.name)
        if name is None:
            raise SlmkitError(f"{source}: tensor '{t.name}' is not part of a plain llama model")
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

    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        raise SlmkitError(f"{source}: field 'tokenizer.ggml.model'={model!r}: only BPE ('gpt2') vocabularies rebuild to HF")
    tokens = list(field(reader, "tokenizer.ggml.tokens"))
    types = list(field(reader, "tokenizer.ggml.token_type", [int(TokenType.NORMAL)] * len(tokens)))
    merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", [])]
    pre = field(reader, "tokenizer.ggml.pre", "default")
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
        tid = field(reader, f"tokenizer.ggml.{key}_token_id")
        return tokens[int(tid)] if tid is not None and 0 <= int(tid) < len(tokens) else None

    kwargs = {k: v for k, v in (("bos_token", token("bos")), ("eos_token", token("eos")),
                                 ("pad_token", token("padding")), ("unk_token", token("unknown"))) if v}
    template = field(reader, "tokenizer.chat_template")
    if template:
        kwargs["chat_template"] = template
    ctx = field(reader, f"{field(reader, 'general.architecture')}.context_length")
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


def tensor_types(path: str | Path) -> dict[str, int]:
    """How many tensors of each GGML type a GGUF holds (shows llama.cpp's fallbacks for odd shapes)."""
    counts: dict[str, int] = {}
    for t in open_gguf(path).tensors:
        counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return counts

