"""The one way we draw: matplotlib on the Agg backend (no display anywhere), figures saved atomically as PNG."""

from __future__ import annotations

import io
import os
from pathlib import Path


def pyplot():
    """matplotlib.pyplot with the Agg backend selected (imported lazily: matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 100, tight: bool = True) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    plt = pyplot()
    buf = io.BytesIO()
    if tight:
        fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def save_png(fig, path: str | os.PathLike, dpi: int = 100, tight: bool = True) -> Path:
    """Write the figure to `path` atomically (temp + rename) and close it."""
    from slmkit.paths import atomic_write_bytes

    return atomic_write_bytes(path, png_bytes(fig, dpi, tight))
