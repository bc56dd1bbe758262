"""Local text files as documents: the one reader the tokenizer trainer and the data preparer share.

`jsonl` files give the `field` of each non-blank line, `text` files give the whole file as one document
(`lines=True`: each line), `.gz` either way; every failure is one line naming file:line.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from slmkit.errors import SlmkitError


def iter_file_texts(path: str | Path, kind: str, field: str = "text", lines: bool = False) -> Iterator[str]:
    """The documents of one file; kind = "jsonl" | "text"."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            if kind == "text" and not lines:
                raw = f.read()
                try:
                    yield raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    line_no = raw[:exc.start].count(b"\n") + 1
                    raise SlmkitError(f"{path}:{line_no}: not UTF-8 text") from None
                return
            for lineno, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise SlmkitError(f"{path}:{lineno}: not UTF-8 text") from None
                if kind == "text":
                    yield line
                    continue
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)[field]
                except (json.JSONDecodeError, KeyError, TypeError):
                    raise SlmkitError(f"{path}:{lineno}: expected a JSON object with a '{field}' field") from None
                if not isinstance(text, str):
                    raise SlmkitError(f"{path}:{lineno}: field '{field}' must be a string")
                yield text
    except (OSError, EOFError) as exc:  # e.g. a truncated .gz
        raise SlmkitError(f"{path}: cannot read ({exc.__class__.__name__}: {exc})") from None
