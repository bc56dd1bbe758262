"""Token ids in, text out: streaming detokenisation and stop strings, the one implementation
`Runtime.generate` and the engine use."""

from __future__ import annotations

from typing import Sequence

from slmkit.errors import SlmkitError


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest stop string in `text` (None if none occurs)."""
    hits = [text.find(s) for s in stops if s and s in text]
    return min(hits) if hits else None


class TextStream:
    """Token ids in, text pieces out: incremental detokenisation and stop strings (Runtime.generate and
    the engine both use this one).

    Each token decodes a short window (from a few tokens back, so a tokenizer's leading-space rules see
    context) instead of the whole continuation; a piece waits while it ends in an incomplete UTF-8
    character, and text that could be the start of a stop string is held back until it is not. `stopped`
    turns true on the token that completes a stop string; `finish()` returns what is left, cut before
    the first stop, and `text` is then the whole continuation as `decode(ids)` gives it, cut likewise.
    """

    def __init__(self, tokenizer, stops: Sequence[str] = ()) -> None:
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        if self.stops and tokenizer is None:
            raise SlmkitError("stop strings need a tokenizer; this runtime has none")
        self.ids: list[int] = []
        self.text = ""  # decoded so far (incrementally)
        self.emitted = 0  # characters of self.text handed out
        self.stopped = False
        self._prefix = self._read = 0
        self._longest = max((len(s) for s in self.stops), default=0)

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text that became safe to show (maybe "")."""
        self.ids.append(token_id)
        if self.tokenizer is None or self.stopped:
            return ""
        window = self.tokenizer.decode(self.ids[self._prefix:], skip_special_tokens=True)
        before = self.tokenizer.decode(self.ids[self._prefix:self._read], skip_special_tokens=True) if self._read > self._prefix else ""
        if window.endswith("\ufffd") or len(window) <= len(before):
            return ""  # the rest of a multi-byte character is still to come (or nothing visible yet)
        old = len(self.text)
        self.text += window[len(before):]
        self._prefix, self._read = self._read, len(self.ids)
        if self.stops:
            tail_from = max(0, old - self._longest)
            cut = first_stop(self.text[tail_from:], self.stops)
            if cut is not None:
                self.stopped = True
                self.text = self.text[:tail_from + cut]
                return self._emit(len(self.text))
            return self._emit(len(self.text) - self._held())
        return self._emit(len(self.text))

    def finish(self) -> str:
        """The rest of the text after the last token (cut before the first stop string)."""
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        cut = first_stop(text, self.stops)
        text = text if cut is None else text[:cut]
        shown = self.text[:self.emitted]
        self.text = text
        if not text.startswith(shown):  # the incremental decode disagreed (rare tokenizer clean-up rules)
            self.emitted = len(text)
            return ""
        return self._emit(len(text))

    def _held(self) -> int:
        """Length of the longest end of the text that is the start of some stop string."""
        text = self.text
        for n in range(min(self._longest - 1, len(text)), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stops):
                return n
        return 0

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        piece = self.text[self.emitted:upto]
        self.emitted = upto
        return piece
