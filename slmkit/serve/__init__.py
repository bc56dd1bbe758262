"""Serving: one runtime interface over torch, llama.cpp, ONNX Runtime and vLLM.

`load(path, backend=None)` picks the backend from the artifact when not given (serve.backends.detect):
*.gguf → llama.cpp, a folder with model.onnx → onnxruntime, anything else → torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.serve.backends import BACKENDS, canonical, detect
from slmkit.serve.base import Runtime, SamplingParams


def runtime_class(backend: str):
    """The Runtime subclass of a backend (imported on demand: each needs its own optional package)."""
    module_name, cls_name = BACKENDS[canonical(backend)][0].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SlmkitError(f"backend '{backend}' needs an optional dependency that is not installed ({exc.name}); "
                          f"install slmkit with the matching extra") from None
    return getattr(module, cls_name)


def load(path: str | Path, backend: str | None = None, **options) -> Runtime:
    backend = canonical(backend) if backend else detect(path)
    return runtime_class(backend)(path, **options)


__all__ = ["load", "runtime_class", "Runtime", "SamplingParams", "BACKENDS", "canonical", "detect"]
