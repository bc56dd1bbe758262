"""Model configuration: one dataclass, presets, YAML/JSON loading, validation with one-line errors.

µP fields follow Xmodel-2 / MiniCPM naming:
  scale_emb       embedding output multiplier (s)
  scale_depth     residual branch multiplier; the branch output is scaled by scale_depth/√n_layers (r)
  dim_model_base  base width; m = d_model/dim_model_base scales init std (1/√m), hidden LR (1/m), logits (1/m)
Xmodel-2.5 keeps separate attention/FFN residual scales and an output scale: scale_depth_attn,
scale_depth_ffn (default: scale_depth) and scale_output (logits × scale_output/m).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int = 2
    d_ff: int = 384
    max_seq_len: int = 512
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    init_std: float = 0.02
    head_dim: int | None = None  # default d_model // n_heads
    # µP
    scale_emb: float = 1.0
    scale_depth: float | None = None  # None: no residual scaling (plain Llama)
    dim_model_base: int | None = None  # None: d_model (m = 1)
    scale_depth_attn: float | None = None  # Xmodel-2.5: separate residual scales
    scale_depth_ffn: float | None = None
    scale_output: float = 1.0
    # token ids (informational; exported to HF configs)
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    name: str = "custom"

    def __post_init__(self) -> None:
        self.validate()

    # ---- derived quantities -------------------------------------------------------------
    @property
    def hd(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    @property
    def width_mult(self) -> float:
        """m = d_model / dim_model_base."""
        return self.d_model / (self.dim_model_base or self.d_model)

    def residual_scale(self, branch: str) -> float:
        """r for 'attn' or 'ffn': scale_depth/√n_layers, or 1.0 when residual scaling is off."""
        specific = self.scale_depth_attn if branch == "attn" else self.scale_depth_ffn
        depth = specific if specific is not None else self.scale_depth
        return 1.0 if depth is None else depth / math.sqrt(self.n_layers)

    @property
    def logit_scale(self) -> float:
        return self.scale_output / self.width_mult

    def num_params(self, embeddings: bool = True) -> int:
        d, hd = self.d_model, self.hd
        attn = d * self.n_heads * hd * 2 + d * self.n_kv_heads * hd * 2
        mlp = 3 * d * self.d_ff
        per_layer = attn + mlp + 2 * d
        total = self.n_layers * per_layer + d
        if embeddings:
            total += self.vocab_size * d * (1 if self.tie_embeddings else 2)
        return total

    # ---- validation -------------------------------------------------------------------
    def validate(self, source: str = "model config") -> None:
        def bad(field_name: str, why: str) -> SlmkitError:
            return SlmkitError(f"{source}: field '{field_name}'={getattr(self, field_name)!r} {why}")

        for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "max_seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise bad(name, "must be a positive integer")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise bad("d_model", f"must be divisible by n_heads={self.n_heads} (or set head_dim)")
        if self.head_dim is not None and (not isinstance(self.head_dim, int) or self.head_dim <= 0):
            raise bad("head_dim", "must be a positive integer")
        if self.hd % 2:
            raise bad("head_dim" if self.head_dim else "d_model", f"gives odd head_dim={self.hd}; RoPE needs an even one")
        if self.n_heads % self.n_kv_heads:
            raise bad("n_kv_heads", f"must divide n_heads={self.n_heads}")
        for name in ("rope_theta", "norm_eps", "init_std", "scale_emb", "scale_output"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or not math.isfinite(value):
                raise bad(name, "must be a positive number")
        for name in ("scale_depth", "scale_depth_attn", "scale_depth_ffn"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, float)) or not value > 0):
                raise bad(name, "must be a positive number or null")
        if self.dim_model_base is not None and (not isinstance(self.dim_model_base, int) or self.dim_model_base <= 0):
            raise bad("dim_model_base", "must be a positive integer or null")
        if not isinstance(self.tie_embeddings, bool):
            raise bad("tie_embeddings", "must be true or false")

    # ---- (de)serialisation --------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "model config") -> "ModelConfig":
        if not isinstance(data, dict):
            raise SlmkitError(f"{source}: expected a mapping of model fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SlmkitError(f"{source}: unknown field '{unknown[0]}' (known: {', '.join(sorted(known))})")
        try:
            cfg = cls.__new__(cls)
            for f in dataclasses.fields(cls):
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
                setattr(cfg, f.name, data.get(f.name, default))
            if isinstance(cfg.rope_theta, int):
                cfg.rope_theta = float(cfg.rope_theta)
            cfg.validate(source)
        except SlmkitError:
            raise
        return cfg

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if not path.exists():
            raise SlmkitError(f"{path}: config file not found")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:  # noqa: BLE001 - parser errors vary by format
            raise SlmkitError(f"{path}: cannot parse ({str(exc).splitlines()[0]})") from None
        if isinstance(data, dict) and "model" in data and isinstance(data["model"], dict):
            data = data["model"]  # a full training config: take its model section
        if isinstance(data, dict) and "preset" in data:
            data = dict(data)
            base = cls.from_preset(data.pop("preset")).to_dict()
            base.update(data)
            data = base
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ModelConfig":
        if name not in PRESETS:
            raise SlmkitError(f"unknown model preset '{name}' (known: {', '.join(PRESETS)})")
        data = dict(PRESETS[name], name=name)
        data.update(overrides)
        return cls.from_dict(data, source=f"preset '{name}'")

    def replace(self, **changes: Any) -> "ModelConfig":
        data = self.to_dict()
        data.update(changes)
        return ModelConfig.from_dict(data)


# Xmodel-2.5 µP (release flags): input scale 12, residual scale 1.4 (÷√L), base width 256, output scale 1.
_XMODEL_MUP = dict(scale_emb=12.0, scale_depth=1.4, dim_model_base=256, init_std=0.1, scale_output=1.0)

PRESETS: dict[str, dict[str, Any]] = {
    # CPU demo: ~1M non-embedding params, trains in minutes on 2 cores.
    "nano": dict(vocab_size=1024, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, d_ff=320, max_seq_len=256,
                 rope_theta=10000.0, **_XMODEL_MUP),
    # µP proxy (~20M params with a 32k vocabulary): the width hyper-parameters are tuned at.
    "proxy-20m": dict(vocab_size=32000, d_model=256, n_layers=16, n_heads=4, n_kv_heads=2, d_ff=640,
                      max_seq_len=1024, rope_theta=10000.0, **_XMODEL_MUP),
    # Xmodel-2.5 shape: DeepSeek-V3 tokenizer (128,815 entries) padded to 129,280.
    "xmodel2.5-1.3b": dict(vocab_size=129280, d_model=1536, n_layers=48, n_heads=24, n_kv_heads=8, d_ff=3840,
                           max_seq_len=4096, rope_theta=500000.0, **_XMODEL_MUP),
}
