"""Prefix cache: keys/values of token prefixes the engine has computed, in fixed-size blocks keyed by the
whole prefix they end (a hash chain), least recently used first out, bounded in bytes.

A block of `block_tokens` tokens is stored under hash(previous block's key, its tokens), so two prompts
share exactly the blocks of their common prefix (few-shot exemplars, a system prompt, an agent's
trajectory so far) and a lookup walks the prompt block by block until the first miss. A matched chain is
touched from its end back to its root, so eviction takes the ends of chains before the blocks others
share. What a block holds is up to the backend (torch tensors here); the cache only counts bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Sequence


def chain_keys(ids: Sequence[int], block_tokens: int, n_tokens: int | None = None) -> list[int]:
    """Keys of the full blocks of ids[:n_tokens]: each hashes the previous key and the block's tokens, so a
    key names the whole prefix up to the end of its block."""
    n = len(ids) if n_tokens is None else min(n_tokens, len(ids))
    out, key = [], None
    for start in range(0, n - block_tokens + 1, block_tokens):
        key = hash((key, tuple(ids[start:start + block_tokens])))
        out.append(key)
    return out


@dataclass
class Block:
    tokens: tuple[int, ...]
    parent: int | None
    data: Any
    nbytes: int


class PrefixCache:
    def __init__(self, block_tokens: int, capacity_bytes: int) -> None:
        if block_tokens <= 0:
            raise ValueError("block_tokens must be positive")
        self.block_tokens = int(block_tokens)
        self.capacity = max(0, int(capacity_bytes))
        self.blocks: OrderedDict[int, Block] = OrderedDict()
        self.bytes = 0
        self.lookups = self.lookup_tokens = self.hit_tokens = 0
        self.inserted = self.evicted = 0

    def keys(self, ids: Sequence[int], n_tokens: int | None = None) -> list[int]:
        return chain_keys(ids, self.block_tokens, n_tokens)

    def match(self, ids: Sequence[int], limit: int) -> list[Block]:
        """The cached blocks covering the longest prefix of ids[:limit] (counted in the hit statistics)."""
        found: list[Block] = []
        parent = None
        bs = self.block_tokens
        for i, key in enumerate(self.keys(ids, limit)):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tuple(ids[i * bs:(i + 1) * bs]):
                break
            found.append(block)
            parent = key
        for key in reversed(self.keys(ids, len(found) * bs)):  # the chain's root ends up most recent
            self.blocks.move_to_end(key)
        self.lookups += 1
        self.lookup_tokens += max(0, limit)
        self.hit_tokens += len(found) * bs
        return found

    def peek(self, ids: Sequence[int], limit: int) -> int:
        """Tokens of ids[:limit] that `match` would serve, without touching statistics or recency."""
        parent, n = None, 0
        bs = self.block_tokens
        for i, key in enumerate(self.keys(ids, limit)):
            block = self.blocks.get(key)
            if block is None or block.parent != parent or block.tokens != tuple(ids[i * bs:(i + 1) * bs]):
                break
            parent, n = key, n + bs
        return n

    def insert(self, ids: Sequence[int], n_tokens: int, fetch: Callable[[int, int], tuple[Any, int]],
               skip: int = 0) -> int:
        """Store the full blocks of ids[:n_tokens] that are not cached yet; fetch(start, end) gives a block's
        data and its size in bytes. Blocks before `skip` tokens are known to be cached. Returns blocks added."""
        if self.capacity == 0:
            return 0
        bs, added, parent = self.block_tokens, 0, None
        keys = self.keys(ids, n_tokens)
        for i, key in enumerate(keys):
            if i * bs < skip and key in self.blocks:
                parent = key
                continue
            if key not in self.blocks:
                data, nbytes = fetch(i * bs, (i + 1) * bs)
                self.blocks[key] = Block(tuple(ids[i * bs:(i + 1) * bs]), parent, data, nbytes)
                self.bytes += nbytes
                self.inserted += 1
                added += 1
            parent = key
        for key in reversed(keys):
            if key in self.blocks:
                self.blocks.move_to_end(key)
        while self.bytes > self.capacity and self.blocks:
            _, old = self.blocks.popitem(last=False)
            self.bytes -= old.nbytes
            self.evicted += 1
        return added

    def clear(self) -> None:
        self.blocks.clear()
        self.bytes = 0

    def stats(self) -> dict:
        return {"block_tokens": self.block_tokens, "blocks": len(self.blocks), "bytes": self.bytes,
                "capacity_bytes": self.capacity, "lookups": self.lookups, "lookup_tokens": self.lookup_tokens,
                "hit_tokens": self.hit_tokens,
                "hit_rate": round(self.hit_tokens / self.lookup_tokens, 4) if self.lookup_tokens else 0.0,
                "inserted_blocks": self.inserted, "evicted_blocks": self.evicted}
