"""Serving: one runtime interface over torch, llama.cpp, ONNX Runtime and vLLM.

`load(path, backend=None)` picks the backend from the artifact when not given:
*.gguf → llama.cpp, a folder with model.onnx → onnxruntime, anything else (slmkit checkpoint or HF
folder) → torch.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.serve.base import Runtime, SamplingParams

BACKENDS = {
    "torch": "slmkit.serve.torch_backend:TorchRuntime",
    "llama.cpp": "slmkit.serve.llamacpp_backend:LlamaCppRuntime",
    "onnxruntime": "slmkit.serve.onnx_backend:OnnxRuntime",
    "vllm": "slmkit.serve.vllm_backend:VllmRuntime",
}
ALIASES = {"gguf": "llama.cpp", "llamacpp": "llama.cpp", "llama_cpp": "llama.cpp", "onnx": "onnxruntime", "ort": "onnxruntime",
           "hf": "torch", "native": "torch"}


def detect_backend(path: str | Path) -> str:
    path = Path(path)
    if path.suffix == ".gguf":
        return "llama.cpp"
    if path.is_dir() and (path / "model.onnx").exists():
        return "onnxruntime"
    return "torch"


def load(path: str | Path, backend: str | None = None, **options) -> Runtime:
    backend = ALIASES.get(backend, backend) if backend else detect_backend(path)
    if backend not in BACKENDS:
        raise SlmkitError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    module_name, cls_name = BACKENDS[backend].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SlmkitError(f"backend '{backend}' needs an optional dependency that is not installed ({exc.name}); "
                          f"install slmkit with the matching extra") from None
    return getattr(module, cls_name)(path, **options)


__all__ = ["load", "Runtime", "SamplingParams", "BACKENDS", "detect_backend"]
