"""Where data lives and how we write files without ever losing what was already there."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

from slmkit.errors import SlmkitError

DATA_ENV = "SLMKIT_DATA"
CACHE_ENV = "SLMKIT_CACHE"


def data_dir(required: bool = True) -> Path | None:
    """The local data root (setting SLMKIT_DATA); None when unset and not required."""
    value = os.environ.get(DATA_ENV)
    if not value:
        if required:
            raise SlmkitError(f"no data directory: set {DATA_ENV} to the folder holding benchmarks/, pretrain_corpus/, ...")
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise SlmkitError(f"{DATA_ENV}={value}: not a directory")
    return path


def cache_dir() -> Path:
    """Cache for pulled models and built artifacts (setting SLMKIT_CACHE, default ~/.cache/slmkit)."""
    path = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "slmkit").expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str | os.PathLike, missing: str = "missing") -> Any:
    """A JSON file's content, or one SlmkitError line naming the file: `{path}: {missing}` when absent,
    `{path}: corrupt JSON (reason, line N)` when unreadable."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SlmkitError(f"{path}: {missing}") from None
    except json.JSONDecodeError as exc:
        raise SlmkitError(f"{path}: corrupt JSON ({exc.msg}, line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise SlmkitError(f"{path}: corrupt JSON (not UTF-8 text)") from None


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or a directory's entries, to disk (a rename is durable only once its folder is synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root`, then `root` itself (before renaming it into place)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fsync_path(os.path.join(folder, name))
        fsync_path(folder)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside `path` for a writer that wants a file name (gguf-py, llama.cpp, safetensors);
    on success it is fsynced and renamed over `path`, on error removed. Readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the permissions a plain open() would
        os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write via a temp file in the same folder, then rename: readers never see half a file."""
    with atomic_file(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temp name and swap it in at the end; on error the old one is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
