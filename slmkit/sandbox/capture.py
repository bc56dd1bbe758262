"""Bounded capture of a sandboxed program's output: a program may print gigabytes, we keep a few KB."""

from __future__ import annotations


class Capture:
    """Keeps the first and last ``limit/2`` bytes of a stream; the rest is counted and dropped."""

    def __init__(self, limit: int) -> None:
        self.half = max(limit // 2, 64)
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.half - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data[-self.half:]
            if len(self.tail) > self.half:
                del self.tail[: len(self.tail) - self.half]

    def raw(self) -> bytes:
        return bytes(self.head + self.tail)

    def text(self) -> str:
        dropped = self.total - len(self.head) - len(self.tail)
        body = bytes(self.head) + (f"\n[... {dropped} bytes dropped ...]\n".encode() if dropped else b"") + bytes(self.tail)
        return body.decode("utf-8", "replace")
