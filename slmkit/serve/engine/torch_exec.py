"""The torch executor: every step is one `Transformer.forward` over a RowCache (one row per sequence,
each at its own positions), with the runtime's fused inference weights.

Rows are handed out lowest-free-first, so the one-token rows of a step stay close together (they attend
as one SDPA over their span of rows). The prefix cache holds [n_layers, KV, block, hd] key and value
copies of computed blocks; a prompt's cached blocks are copied into its row when it is admitted (a
copy of a block costs far less than recomputing it: ~0.7 MB vs ~4 GFLOP for 16 SmolLM2-135M tokens).
Only the rows that need logits go through the LM head; scoring reduces them to log-probabilities of
the wanted tokens in torch (logsumexp), never a full-vocabulary array on the host.
"""

from __future__ import annotations

import torch

from slmkit.model.transformer import RowCache, Segment
from slmkit.serve.engine.step import ALL, LAST
from slmkit.serve.engine.prefix import PrefixCache

GROW_TO = 256  # row length granularity of the KV cache


class TorchExecutor:
    steps = True
    scores = True

    def __init__(self, runtime, max_batch: int, prefix_cache_mb: float, block_tokens: int, **_opts) -> None:
        self.runtime, self.model, self.cfg = runtime, runtime.model, runtime.cfg
        self.device, self.dtype = runtime.device, runtime.dtype
        self.max_len = self.cfg.max_seq_len
        self.max_batch = int(max_batch)
        self.prefix = PrefixCache(block_tokens, int(prefix_cache_mb * 2 ** 20))
        self.block_tokens = block_tokens if self.prefix.capacity else 0
        self.cache: RowCache | None = None
        self.rows: dict[int, object] = {}

    # ---- rows and the prefix cache ----------------------------------------------------------------------
    @torch.inference_mode()
    def _ensure(self, rows: int, length: int) -> None:
        """Grow the row cache to hold `rows` rows of `length` positions (rows double, lengths step by 256)."""
        length = min(-(-max(length, 1) // GROW_TO) * GROW_TO, max(self.max_len, length))
        if self.cache is None:
            self.cache = RowCache(self.cfg, min(self.max_batch, max(rows, 4)), length, device=self.device, dtype=self.dtype)
        elif rows > self.cache.rows or length > self.cache.max_len:
            rows = min(self.max_batch, max(rows, 2 * self.cache.rows)) if rows > self.cache.rows else rows
            self.cache.grow(length, rows)

    def peek(self, ids) -> int:
        """Prompt tokens the prefix cache could serve now (no statistics, nothing loaded)."""
        return self.prefix.peek(ids, len(ids) - 1) if self.block_tokens else 0

    @torch.inference_mode()
    def start(self, seq) -> int:
        """Give `seq` a row and load its cached prefix into it; returns the cached tokens."""
        row = next(r for r in range(self.max_batch) if r not in self.rows)
        self.rows[row] = seq
        seq.row = row
        blocks = self.prefix.match(seq.prompt, len(seq.prompt) - 1) if self.block_tokens else []
        bs = self.block_tokens
        self._ensure(row + 1, max(len(blocks) * bs, 1))
        k, v = self.cache.k, self.cache.v
        for i, block in enumerate(blocks):
            bk, bv = block.data
            k[:, row, :, i * bs:(i + 1) * bs] = bk
            v[:, row, :, i * bs:(i + 1) * bs] = bv
        return len(blocks) * bs

    @torch.inference_mode()
    def save(self, seq, ids, n_valid: int) -> None:
        """Offer the full blocks of ids[:n_valid] (held in seq's row) to the prefix cache."""
        if not self.block_tokens or seq.row < 0:
            return
        k, v, row = self.cache.k, self.cache.v, seq.row

        def fetch(a, b):
            bk, bv = k[:, row, :, a:b].clone(), v[:, row, :, a:b].clone()
            return (bk, bv), 2 * bk.numel() * bk.element_size()
        self.prefix.insert(ids, n_valid, fetch, skip=seq.cached)

    def finish(self, seq, ids, n_valid: int) -> None:
        self.save(seq, ids, n_valid)
        self.rows.pop(seq.row, None)
        seq.row = -1

    def reset(self) -> None:
        for seq in self.rows.values():
            seq.row = -1
        self.rows.clear()

    def close(self) -> None:
        self.reset()
        self.cache = None
        self.prefix.clear()

    # ---- one forward ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def run(self, chunks):
        """Logits [M, vocab] of the rows the chunks ask for, in chunk order."""
        segments, tokens, want = [], [], []
        need_len, need_rows = 1, 1
        for c in chunks:
            n = len(c.tokens)
            segments.append(Segment(c.seq.row, c.start, n, c.store))
            if c.logits == LAST:
                want.append(len(tokens) + n - 1)
            elif c.logits == ALL:
                want.extend(range(len(tokens), len(tokens) + n))
            tokens.extend(c.tokens)
            if c.store:
                need_len = max(need_len, c.start + n)
            need_rows = max(need_rows, c.seq.row + 1)
        self._ensure(need_rows, need_len)
        ids = torch.tensor([tokens], dtype=torch.long, device=self.device)
        h = self.model(ids, cache=self.cache.step(segments), hidden_only=True, fused=self.runtime.fused)[0]
        if not want:
            return None
        picked = h if len(want) == len(tokens) else h.index_select(0, torch.tensor(want, device=self.device))
        return self.model.project(picked).float()

    # ---- reading the logits ----------------------------------------------------------------------------
    @staticmethod
    def argmax(matrix, rows) -> list[int]:
        if rows == list(range(matrix.shape[0])):
            return matrix.argmax(-1).tolist()
        return matrix[rows].argmax(-1).tolist()

    @staticmethod
    def row_numpy(matrix, row: int):
        return matrix[row].cpu().numpy()

    @staticmethod
    def logprobs(matrix, rows, targets) -> tuple[list[float], list[bool]]:
        """log p(target) and whether it is the argmax, per (row, target) pair."""
        sub = matrix[torch.tensor(rows, device=matrix.device)]
        tgt = torch.tensor(targets, device=matrix.device)
        lp = sub.gather(1, tgt[:, None])[:, 0] - torch.logsumexp(sub, -1)
        return lp.tolist(), (sub.argmax(-1) == tgt).tolist()

    def stats(self) -> dict:
        out = {"executor": "torch", "kv_cache_bytes": self.cache.nbytes() if self.cache is not None else 0,
               "kv_rows": self.cache.rows if self.cache is not None else 0,
               "kv_row_len": self.cache.max_len if self.cache is not None else 0}
        out["prefix_cache"] = self.prefix.stats()
        return out

