"""GGUF writing: a llama.cpp file from any slmkit/HF Llama model, gated on parity before it is kept.

Writing starts from `hf_state_dict` (µP multipliers folded), so the GGUF is a plain Llama: tied
embeddings → no `output.weight`; Q/K rows permuted into llama.cpp's interleaved-pair RoPE layout.
The tokenizer goes in as a GPT-2-style BPE with the llama.cpp pre-tokenizer name whose regex matches
the HF pre-tokenizer (llama.cpp picks its split regex by that name alone, so a wrong name silently
changes tokenization). Quantized types are made by llama.cpp itself (slmkit.export.quantize), not
re-implemented here. Reading (and GGUF → HF) is slmkit.formats.gguf.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.formats.gguf import ARCH, detect_pre, field, open_gguf, permute_rope, tensor_name_table, tensor_types
from slmkit.paths import atomic_file

DIRECT_TYPES = ("f32", "f16", "bf16")  # written here; everything else goes through llama.cpp's quantizer

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

    from slmkit.model.tokenizer import tokenizer_json_path

    folder = Path(tokenizer_dir)
    tj_path = tokenizer_json_path(folder)
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
    with atomic_file(out_path) as tmp:
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
        names = tensor_name_table(cfg.n_layers)
        for key, tensor in hf_state_dict(model).items():
            value = tensor.numpy()
            if key.endswith("q_proj.weight"):
                value = permute_rope(value, cfg.n_heads)
            elif key.endswith("k_proj.weight"):
                value = permute_rope(value, cfg.n_kv_heads)
            _add_tensor(w, names[key], value, dtype)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return out_path


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
                parity_batches: list[list[int]] | None = None, gate_text: str | Path | None = None) -> dict[str, Any]:
    """slmkit checkpoint / HF Llama folder → GGUF of `qtype`, checked against torch fp32 before it is kept.

    parity_batches: token ids to gate on; else `slmkit.export.parity.gate_batches` picks the text:
    `gate_text` (a file), the model folder's gate_text.txt, the generic held-out text as a last resort
    (a small in-domain model is near-uniform there). The report's `gate_text` says which.
    The file is built under a temporary name and renamed into place only after the parity gate passes;
    the report goes to OUT.parity.json either way. Returns {"path", "type", "bytes", "parity"}.
    """
    from slmkit.export.parity import HELDOUT_TEXT, gate_batches, run_parity
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
            batches = parity_batches or gate_batches(model_path, hf_tok, model.cfg.vocab_size, gate_text,
                                                     model.cfg.max_seq_len)
            n_ctx = max(len(b) for b in batches) + 8
            runtime = LlamaCppRuntime(stage, n_ctx=n_ctx, n_threads=n_threads, f32_kv=True, tokenizer=hf_tok)
            try:
                tok_check = tokenizer_agreement(runtime, hf_tok, HELDOUT_TEXT)
                failures = [] if not tok_check["mismatches"] else [
                    f"llama.cpp tokenizes {tok_check['mismatches']} of {tok_check['texts']} held-out texts differently "
                    f"from the HF tokenizer (pre-tokenizer '{field(open_gguf(stage), 'tokenizer.ggml.pre')}')"]
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


