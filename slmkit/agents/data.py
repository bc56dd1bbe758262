"""Where the agents' shared data lives: SLMKIT_DATA/react (ReAct's prompts and data), hotpotqa/, fever/."""

from __future__ import annotations

from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.paths import DATA_ENV, data_dir


def data_file(*parts: str) -> Path:
    """A path under SLMKIT_DATA that must exist; the error names it and the setting."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise SlmkitError(f"missing data {path} (set {DATA_ENV} to the folder that holds {'/'.join(parts)})")
    return path
