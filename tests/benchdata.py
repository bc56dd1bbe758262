"""Real strings from the shared benchmark files, for tokenizer agreement tests."""

import gzip
import json
from pathlib import Path

import pytest


def _strings(obj, found: list[str]) -> None:
    if isinstance(obj, str):
        if obj.strip():
            found.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _strings(v, found)
    elif isinstance(obj, list):
        for v in obj:
            _strings(v, found)


def benchmark_strings(data: Path, files: list[str], per_file: int, min_total: int) -> list[str]:
    """Every non-empty string field of the first records of `files` (under data/benchmarks)."""
    out: list[str] = []
    for rel in files:
        path = data / "benchmarks" / rel
        if not path.exists():
            continue
        found: list[str] = []
        with (gzip.open if path.suffix == ".gz" else open)(path, "rt", encoding="utf-8") as f:
            for line in f:
                _strings(json.loads(line), found)
                if len(found) >= per_file:
                    break
        out += found[:per_file]
    if len(out) < min_total:
        pytest.fail(f"benchmark data not found under {data}/benchmarks (set SLMKIT_DATA)")
    return out
