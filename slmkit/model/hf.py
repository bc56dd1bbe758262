"""Exact conversion between the native µP model and a plain Hugging Face `LlamaForCausalLM` folder.

Export folds the µP multipliers into the weights (s = scale_emb, r = scale_depth/√L, m = width mult):
E stays unscaled and tied; o_proj × r_attn/s; down_proj × r_ffn/s; final norm × scale_output/m;
rms_norm_eps × 1/s². The residual stream of the HF model is the native one divided by s, and RMSNorm(x/s)
with eps/s² equals RMSNorm(x) with eps, so logits agree up to float rounding.

Import reads any Llama-family folder (llama, mistral without sliding window) and Xmodel-2 / MiniCPM
style µP configs (multipliers applied in forward, weights unfolded) into the native model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from slmkit.errors import SlmkitError
from slmkit.model.config import ModelConfig
from slmkit.model.transformer import Transformer
from slmkit.paths import atomic_dir, atomic_write_json, read_json

HF_PREFIX = "model."


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """config.json for LlamaForCausalLM that transformers 4.x (rope_theta) and 5.x (rope_parameters) both read."""
    s = cfg.scale_emb
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.hd,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.norm_eps if s == 1.0 else cfg.norm_eps / (s * s),
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": cfg.init_std,
        "use_cache": True,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "torch_dtype": "float32",
        "dtype": "float32",
        "transformers_version": "4.57.0",
    }


@torch.no_grad()
def hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Native weights renamed to HF Llama names with the µP multipliers folded in (fp32)."""
    cfg = model.cfg
    s = cfg.scale_emb
    out_scale = cfg.logit_scale
    fold = {"o_proj": cfg.residual_scale("attn") / s, "down_proj": cfg.residual_scale("ffn") / s}
    tensors = {}
    for name, value in model.state_dict().items():
        value = value.detach().to("cpu", torch.float32)
        leaf = name.split(".")[-2] if name.count(".") >= 2 else ""
        if leaf in fold and fold[leaf] != 1.0:
            value = value * fold[leaf]
        if name == "norm.weight" and out_scale != 1.0:
            value = value * out_scale
        key = "lm_head.weight" if name == "lm_head.weight" else HF_PREFIX + name
        tensors[key] = value.contiguous()
    return tensors


def generation_config(cfg: ModelConfig) -> dict[str, Any]:
    return {"bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
            "do_sample": False, "transformers_version": "4.57.0"}


def export_hf(model: Transformer, out_dir: str | Path, tokenizer_dir: str | Path | None = None) -> Path:
    """Write a plain LlamaForCausalLM folder (atomically)."""
    from safetensors.torch import save_file

    from slmkit.model.tokenizer import copy_tokenizer_files

    out_dir = Path(out_dir)
    cfg = model.cfg
    with atomic_dir(out_dir) as tmp:
        save_file(hf_state_dict(model), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        atomic_write_json(tmp / "config.json", hf_config(cfg))
        atomic_write_json(tmp / "generation_config.json", generation_config(cfg))
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, tmp)
    return out_dir


# ----------------------------------------------------------------------------------------------
# import


def _rope_theta(hf: dict[str, Any]) -> float:
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling") or {}
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    if kind not in ("default", None):
        raise SlmkitError(f"config.json: rope type '{kind}' is not supported (only default RoPE)")
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    return float(theta)


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> ModelConfig:
    """Native config from a Llama / Mistral / Xmodel-2 / MiniCPM style config.json."""
    model_type = hf.get("model_type", "llama")
    if model_type not in ("llama", "mistral", "xmodel", "xmodel2", "minicpm"):
        raise SlmkitError(f"{source}: field 'model_type'={model_type!r} is not a Llama-family model this importer reads")
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise SlmkitError(f"{source}: biases (attention_bias/mlp_bias) are not supported")
    if model_type == "mistral" and hf.get("sliding_window") not in (None, 0) and hf.get("sliding_window") < hf.get("max_position_embeddings", 0):
        raise SlmkitError(f"{source}: sliding_window attention is not supported")
    try:
        d, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        fields: dict[str, Any] = dict(
            vocab_size=int(hf["vocab_size"]), d_model=d, n_layers=int(hf["num_hidden_layers"]), n_heads=n_heads,
            n_kv_heads=int(hf.get("num_key_value_heads") or n_heads), d_ff=int(hf["intermediate_size"]),
            max_seq_len=int(hf.get("max_position_embeddings", 2048)), rope_theta=_rope_theta(hf),
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", 0.02)),
        )
    except KeyError as exc:
        raise SlmkitError(f"{source}: required field {exc} missing") from None
    if "tie_word_embeddings" not in hf:
        fields["tie_embeddings"] = model_type in ("minicpm", "xmodel", "xmodel2")
    head_dim = hf.get("head_dim")
    if head_dim and int(head_dim) != d // n_heads:
        fields["head_dim"] = int(head_dim)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = hf.get(key)
        fields[key] = value[0] if isinstance(value, list) and value else value
    if "mup_input_scale" in hf or "mup_base_width" in hf:  # Xmodel-2 / Xmodel-2.5 naming
        fields.update(scale_emb=float(hf.get("mup_input_scale", 1.0)), dim_model_base=int(hf.get("mup_base_width", d)),
                      scale_output=float(hf.get("mup_output_scale", 1.0)))
        attn, ffn = hf.get("mup_attention_residual_scale"), hf.get("mup_ffn_residual_scale")
        if attn is not None and attn == ffn:
            fields["scale_depth"] = float(attn)
        else:
            fields["scale_depth_attn"] = None if attn is None else float(attn)
            fields["scale_depth_ffn"] = None if ffn is None else float(ffn)
    elif "scale_emb" in hf or "dim_model_base" in hf:  # MiniCPM naming
        fields.update(scale_emb=float(hf.get("scale_emb", 1.0)), dim_model_base=int(hf.get("dim_model_base", d)),
                      scale_depth=None if hf.get("scale_depth") is None else float(hf["scale_depth"]))
    return ModelConfig.from_dict(fields, source=source)


def _load_hf_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    files: list[Path]
    if single.exists():
        files = [single]
    elif index.exists():
        weight_map = read_json(index).get("weight_map", {})
        files = [folder / name for name in sorted(set(weight_map.values()))]
    elif (folder / "pytorch_model.bin").exists():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    else:
        raise SlmkitError(f"{folder}: no model.safetensors, model.safetensors.index.json or pytorch_model.bin")
    tensors: dict[str, torch.Tensor] = {}
    for path in files:
        if not path.exists():
            raise SlmkitError(f"{path}: weight shard missing")
        try:
            tensors.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SlmkitError(f"{path}: corrupt safetensors file ({str(exc).splitlines()[0]})") from None
    return tensors


def import_hf(folder: str | Path) -> Transformer:
    """Native model from an HF Llama-family folder (exact: no folding is undone for plain Llama)."""
    from slmkit.model.checkpoint import load_weights_checked

    folder = Path(folder)
    if not folder.is_dir():
        raise SlmkitError(f"{folder}: model folder not found")
    cfg = config_from_hf(read_json(folder / "config.json"), source=str(folder / "config.json"))
    raw = _load_hf_tensors(folder)
    tensors = {}
    for key, value in raw.items():
        if key == "lm_head.weight":
            if cfg.tie_embeddings:
                continue  # some writers store the tied copy too
            tensors[key] = value
        elif key.startswith(HF_PREFIX):
            if "rotary_emb" in key:
                continue
            tensors[key[len(HF_PREFIX):]] = value
        else:
            raise SlmkitError(f"{folder}: unexpected tensor '{key}' in a Llama checkpoint")
    model = Transformer(cfg)
    load_weights_checked(model, tensors, folder)
    return model.eval()


def load_any(path: str | Path, verify: bool = True) -> Transformer:
    """A native model from an slmkit checkpoint folder or an HF Llama folder."""
    from slmkit.model.checkpoint import is_checkpoint, load_checkpoint

    path = Path(path)
    if is_checkpoint(path):
        return load_checkpoint(path, verify=verify)[0]
    if (path / "config.json").exists():
        return import_hf(path)
    if not path.exists():
        raise SlmkitError(f"{path}: not found")
    raise SlmkitError(f"{path}: neither an slmkit checkpoint (slmkit.json) nor an HF model folder (config.json)")


def tokenizer_dir_of(path: str | Path) -> Path | None:
    path = Path(path)
    return path if (path / "tokenizer.json").exists() else None
