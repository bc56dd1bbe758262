"""The one backend vocabulary: `serve.load`, `slmkit eval --backend`, `slmkit generate`, the bench, the
agents and the manifests all name runtimes with these words (lm-eval's `slmkit-<name>` models derive
from them). Old spellings are aliases that still work and say once what the new name is.
"""

from __future__ import annotations

import sys
from pathlib import Path

from slmkit.errors import SlmkitError

# name -> (module:class, what it runs)
BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("slmkit.serve.torch_backend:TorchRuntime", "native PyTorch (slmkit checkpoint or HF Llama folder)"),
    "llama.cpp": ("slmkit.serve.llamacpp_backend:LlamaCppRuntime", "a GGUF file through llama-cpp-python, in-process"),
    "onnxruntime": ("slmkit.serve.onnx_backend:OnnxRuntime", "an ONNX decoder folder through ONNX Runtime"),
    "vllm": ("slmkit.serve.vllm_backend:VllmRuntime", "vLLM on an NVIDIA GPU (HF folder)"),
    "ort-genai": ("slmkit.serve.ortgenai_backend:OrtGenaiRuntime",
                  "a genai_config.json folder through ONNX Runtime GenAI's generator loop"),
    "remote": ("slmkit.serve.remote_backend:RemoteRuntime",
               "any OpenAI-compatible server over HTTP (vLLM, llama.cpp, Ollama, slmkit serve api)"),
}
ALIASES: dict[str, str] = {
    "hf": "torch", "native": "torch",
    "gguf": "llama.cpp", "llamacpp": "llama.cpp", "llama_cpp": "llama.cpp",
    "onnx": "onnxruntime", "ort": "onnxruntime",
    "hf-stock": "lm-eval-hf",  # evaluation only: lm-eval's own hf model
}
_warned: set[str] = set()


def canonical(name: str, known: dict | None = None, what: str = "backend") -> str:
    """The vocabulary's name for `name` (an alias prints one deprecation line per process); SlmkitError if unknown."""
    known = BACKENDS if known is None else known
    key = name.strip()
    if key in known:
        return key
    if key.lower() in ALIASES and ALIASES[key.lower()] in known:
        new = ALIASES[key.lower()]
        if key not in _warned:
            _warned.add(key)
            print(f"warning: {what} name '{key}' is deprecated; use '{new}'", file=sys.stderr)
        return new
    raise SlmkitError(f"unknown {what} '{name}' (known: {', '.join(known)})")


def detect(path: str | Path) -> str:
    """The backend an artifact runs on by default: an http(s) URL → remote, *.gguf → llama.cpp, a folder with
    model.onnx → onnxruntime, anything else (slmkit checkpoint or HF folder) → torch."""
    if str(path).startswith(("http://", "https://")):
        return "remote"
    path = Path(path)
    if path.suffix == ".gguf":
        return "llama.cpp"
    if path.is_dir() and (path / "model.onnx").exists():
        return "onnxruntime"
    if path.is_dir() and (path / "genai_config.json").exists():  # a folder built by GenAI's model builder
        return "ort-genai"
    return "torch"
