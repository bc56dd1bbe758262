"""The one model definition: config, µP transformer, checkpoints, HF import/export, tokenizers."""

from slmkit.model.config import ModelConfig
from slmkit.model.transformer import KVCache, Transformer

__all__ = ["ModelConfig", "Transformer", "KVCache"]
