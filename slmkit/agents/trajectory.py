"""A trajectory as token ids: the exact ids the model was conditioned on, piece by piece.

Pieces are appended, never re-tokenized, so a trajectory only grows (an engine keeps its KV between
steps). Text the loop adds (prompt, `Thought i:`, observations) is tokenized on its own. Model text is
kept as the model generated it, with one precise rule for where kept text and generated ids part:

    kept ids = the longest prefix of the generated ids whose decoded text (special tokens included, no
               replacement characters) is a prefix of the kept text; the rest of the kept text is tokenized.

So a stop string that begins inside a token (e.g. a token ".\\n" before "Observation 1:") drops that
token and re-tokenizes the characters of it that are kept ("."); text the format rewrites (ReAct strips
whitespace, keeps only the first line of a thought) is kept up to the first difference. The decoded
trajectory therefore equals its text whenever the tokenizer's decode is concatenative (byte-level BPE).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class Piece:
    kind: str  # prompt | turn | model | followup | observation
    text: str
    ids: list[int]
    generated: int = 0  # how many of `ids` are the model's own (the rest were tokenized from text)
    info: dict = field(default_factory=dict)


def kept_prefix(decode, generated: Sequence[int], kept_text: str) -> int:
    """How many leading generated ids decode to a prefix of `kept_text` (the rule above)."""
    best, n = 0, len(generated)
    for j in range(1, n + 1):
        text = decode(generated[:j])
        if "\ufffd" in text:
            continue  # an incomplete multi-byte character: never split the bytes of one across pieces
        if not kept_text.startswith(text):
            break
        best = j
    return best


class Trajectory:
    def __init__(self, llm) -> None:
        self.llm = llm
        self.pieces: list[Piece] = []

    @property
    def ids(self) -> list[int]:
        return [t for p in self.pieces for t in p.ids]

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    def __len__(self) -> int:
        return sum(len(p.ids) for p in self.pieces)

    def feed(self, text: str, kind: str) -> Piece | None:
        if not text:
            return None
        piece = Piece(kind, text, self.llm.encode(text))
        self.pieces.append(piece)
        return piece

    def keep(self, kept_text: str, generated: Sequence[int], kind: str = "model") -> Piece | None:
        """Append model text: its generated ids as far as they agree with `kept_text`, the rest tokenized."""
        generated = [int(t) for t in generated]
        k = kept_prefix(self.llm.decode, generated, kept_text)
        head = self.llm.decode(generated[:k]) if k else ""
        rest = kept_text[len(head):]
        if not kept_text:
            return None
        piece = Piece(kind, kept_text, generated[:k] + self.llm.encode(rest), generated=k,
                      info={"dropped_generated": len(generated) - k, "retokenized": rest})
        self.pieces.append(piece)
        return piece

    def view(self, max_context_chars: int | None = None) -> list[int]:
        """The ids a request sends. With `max_context_chars`, the text after the first (prompt) piece is cut
        to its last that many characters and that tail is tokenized afresh (WebShop-style windows)."""
        ids = self.ids
        if max_context_chars is None or not self.pieces:
            return ids
        head = self.pieces[0]
        tail = "".join(p.text for p in self.pieces[1:])
        if len(tail) <= max_context_chars:
            return ids
        return list(head.ids) + self.llm.encode(tail[-max_context_chars:] if max_context_chars > 0 else "")

    def to_records(self, with_ids: bool = True) -> list[dict]:
        out = []
        for p in self.pieces:
            rec = {"kind": p.kind, "text": p.text, "n_tokens": len(p.ids), "generated": p.generated}
            if p.info:
                rec.update(p.info)
            if with_ids:
                rec["ids"] = p.ids
            out.append(rec)
        return out
