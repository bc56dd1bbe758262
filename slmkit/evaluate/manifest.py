"""What a result depends on: versions, git commit, backend, model file hash, seed, data hashes, fallbacks."""

from __future__ import annotations

import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

from slmkit.paths import sha256_file


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """HEAD of the slmkit checkout (with '-dirty' when it has uncommitted changes), None outside git."""
    repo = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "slmkit"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def model_files(path: str | Path) -> list[Path]:
    """The weight file(s) that identify a model artifact."""
    path = Path(path)
    if path.is_file():
        return [path]
    for pattern in ("model.safetensors", "model*.safetensors", "model.onnx", "*.onnx", "pytorch_model.bin", "*.gguf"):
        found = sorted(path.glob(pattern))
        if found:
            return found
    return []


def model_hash(path: str | Path) -> dict:
    files = model_files(path)
    return {"path": str(path), "files": {f.name: {"sha256": sha256_file(f), "bytes": f.stat().st_size} for f in files}}


def build(*, backend: str, model: str, seed: int, limit, suite: str, data_mode: str, tasks: dict[str, dict]) -> dict:
    import slmkit

    fallbacks = {name: rec["fallback"] for name, rec in tasks.items() if rec.get("fallback")}
    data_sha = {}
    for rec in tasks.values():
        data_sha.update(rec.get("files") or {})
    return {
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "slmkit": getattr(slmkit, "__version__", _version("slmkit")),
        "lm_eval": _version("lm_eval"),
        "torch": _version("torch"),
        "transformers": _version("transformers"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_commit(),
        "backend": backend,
        "model": model_hash(model) if Path(model).exists() else {"path": model, "files": {}},
        "seed": seed,
        "limit": limit,
        "suite": suite,
        "data": data_mode,
        "data_sha256": data_sha,
        "tasks": tasks,
        "fallbacks": fallbacks,
    }
