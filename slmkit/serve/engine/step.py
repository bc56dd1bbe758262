"""What the scheduler hands an executor each step: chunks of tokens per sequence, and which logits it wants."""

from __future__ import annotations

from dataclasses import dataclass

NONE, LAST, ALL = 0, 1, 2  # which logits rows a chunk asks for


@dataclass
class Chunk:
    """Tokens of one sequence in a step: `store` writes their keys/values into its row; `logits` asks for
    NONE, the LAST row or ALL rows. A read-only child (store=False) sits after the row's first `start`
    tokens (a scoring continuation)."""

    seq: object  # the engine's Seq (prompt, row, ...)
    tokens: list[int]
    start: int
    store: bool = True
    logits: int = NONE
    kid: int = -1  # which continuation (scoring children)
