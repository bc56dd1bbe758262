"""The llama.cpp executor: every step is one `llama_decode` over parallel sequences, each sequence its own
KV stream (a second context on the runtime's weights, `n_seq_max = max_batch`, `kv_unified = false`).

Streams, not one unified cache: in a unified cache every token attends over every sequence's cells
(masked). Measured on SmolLM2-135M q4_k_m, 8 GSM8K prompts of ~1,800 distinct tokens: prefill 119 s
unified vs 38 s streams, 179 vs 101 ms per decode step; with BBH's shared 3-shot prefix the two are
within 10 % (prefill 4.7 vs 4.1 s, 49 vs 53 ms per step).

Scoring continuations (read-only children of a context) run in spare streams: the context's stream is
copied into one (`llama_memory_seq_cp`), the continuation decoded after it, the stream cleared — many
contexts and their continuations per decode call, the context computed once.

The context is sized for the longest sequence seen so far (cells per stream, rounded up); a request that
needs more waits until the running ones are done and the context is rebuilt larger. The prefix cache
keeps finished sequences' states on the host (`llama_state_seq_get_data`) keyed by their tokens; a new
prompt restores the entry sharing its longest prefix (`llama_state_seq_set_data`) and drops the unshared
tail (`llama_memory_seq_rm`) — benchmarks/generation_throughput.py --llama-prefix-check measures that
against copying a resident stream (`llama_memory_seq_cp`).
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.serve.sampling import common_prefix
from slmkit.serve.engine.step import ALL, LAST

CELLS_STEP = 256
KID_STREAMS = 8  # spare streams for scoring continuations, beyond max_batch


class LlamaCppExecutor:
    steps = True
    scores = True

    def __init__(self, runtime, max_batch: int, max_step_tokens: int, prefix_cache_mb: float, block_tokens: int,
                 **_opts) -> None:
        self.rt, self.lib = runtime, runtime._lib
        self.max_len = int(runtime.n_ctx)
        self.max_batch = int(max_batch)
        self.n_batch = int(max_step_tokens) + self.max_batch
        # logits rows one decode call may return (llama.cpp keeps at least one per stream)
        self.n_outputs = max(self.max_batch + KID_STREAMS, min(self.n_batch, 2 * self.max_batch + 1024))
        self.n_vocab = int(runtime.n_vocab)
        self.block_tokens = int(block_tokens) if prefix_cache_mb > 0 else 0
        self.capacity = int(prefix_cache_mb * 2 ** 20)
        self.entries: OrderedDict[tuple[int, ...], bytes] = OrderedDict()  # tokens -> sequence state
        self.entry_bytes = 0
        self.lookups = self.lookup_tokens = self.hit_tokens = self.saved = self.evicted = 0
        self.ctx = self.batch = self.mem = None
        self.cells = 0
        self.rows: dict[int, object] = {}

    # ---- the context ---------------------------------------------------------------------------------
    def _build(self, cells: int) -> None:
        self._free()
        lib, llm = self.lib, self.rt.llama
        params = lib.llama_context_default_params()
        base = llm.context_params
        for name in ("n_threads", "n_threads_batch", "type_k", "type_v", "flash_attn_type", "offload_kqv"):
            setattr(params, name, getattr(base, name))
        streams = self.max_batch + KID_STREAMS
        params.n_ctx, params.n_seq_max, params.kv_unified = streams * cells, streams, False
        params.n_batch = params.n_ubatch = self.n_batch
        params.n_outputs_max, params.n_outputs_max_per_seq = self.n_outputs, 0  # per sequence: up to the total
        ctx = lib.llama_init_from_model(llm.model, params)
        if not ctx:
            raise SlmkitError(f"{self.rt.path}: llama.cpp could not make a {self.max_batch}-sequence context of "
                              f"{cells} cells each")
        self.ctx, self.cells = ctx, cells
        self.mem = lib.llama_get_memory(ctx)
        self.batch = lib.llama_batch_init(self.n_batch, 0, 1)

    def _free(self) -> None:
        if self.batch is not None:
            self.lib.llama_batch_free(self.batch)
            self.batch = None
        if self.ctx is not None:
            self.lib.llama_free(self.ctx)
            self.ctx = self.mem = None

    def close(self) -> None:
        self.reset()
        self._free()
        self.entries.clear()
        self.entry_bytes = 0

    def reset(self) -> None:
        for seq in self.rows.values():
            seq.row = -1
        self.rows.clear()
        if self.mem is not None:
            self.lib.llama_memory_clear(self.mem, True)

    # ---- sequences and the prefix cache ----------------------------------------------------------------
    def _best(self, ids, limit: int) -> tuple[int, tuple[int, ...] | None]:
        best, key = 0, None
        for tokens in self.entries:
            n = common_prefix(tokens, ids[:limit])
            if n > best:
                best, key = n, tokens
        return (best, key) if best >= max(self.block_tokens, 1) else (0, None)

    def peek(self, ids) -> int:
        return self._best(ids, len(ids) - 1)[0] if self.block_tokens else 0

    def reserve(self, need: int) -> None:
        """Called while no sequence runs: size the streams for the longest request waiting."""
        need = min(need, self.max_len)
        if self.ctx is None or need > self.cells:
            self._build(min(max(-(-need // CELLS_STEP) * CELLS_STEP, 2 * self.cells), max(self.max_len, need)))

    def start(self, seq):
        """A stream for `seq` with its cached prefix restored (cached tokens), or None: not now (the context
        must grow first, which waits until no sequence is running)."""
        need = min(len(seq.prompt) + seq.budget, self.max_len)
        if self.ctx is None or need > self.cells:
            if self.rows:
                return None
            self.reserve(need)
        row = next(r for r in range(self.max_batch) if r not in self.rows)
        self.rows[row] = seq
        seq.row = row
        lib = self.lib
        lib.llama_memory_seq_rm(self.mem, row, -1, -1)
        if not self.block_tokens:
            return 0
        self.lookups += 1
        self.lookup_tokens += len(seq.prompt) - 1
        keep, key = self._best(seq.prompt, len(seq.prompt) - 1)
        if not keep:
            return 0
        state = self.entries[key]
        self.entries.move_to_end(key)
        buf = (ctypes.c_uint8 * len(state)).from_buffer_copy(state)
        if lib.llama_state_seq_set_data(self.ctx, buf, len(state), row) == 0:
            lib.llama_memory_seq_rm(self.mem, row, -1, -1)
            return 0
        lib.llama_memory_seq_rm(self.mem, row, keep, -1)
        self.hit_tokens += keep
        return keep

    def save(self, seq, ids, n_valid: int) -> None:
        """Keep the state of seq's stream (its first n_valid tokens are `ids[:n_valid]`) for later prompts."""
        if not self.block_tokens or seq.row < 0 or n_valid < self.block_tokens:
            return
        tokens = tuple(ids[:n_valid])
        if tokens in self.entries or any(len(t) >= len(tokens) and t[:len(tokens)] == tokens for t in self.entries):
            return  # covered by what is kept already
        lib = self.lib
        if n_valid < self.rt.n_ctx and lib.llama_memory_seq_pos_max(self.mem, seq.row) >= n_valid:
            lib.llama_memory_seq_rm(self.mem, seq.row, n_valid, -1)  # only what `tokens` describes
        size = lib.llama_state_seq_get_size(self.ctx, seq.row)
        if size <= 0 or size > self.capacity:
            return
        buf = (ctypes.c_uint8 * size)()
        got = lib.llama_state_seq_get_data(self.ctx, buf, size, seq.row)
        if got <= 0:
            return
        for old in [t for t in self.entries if len(t) < len(tokens) and tokens[:len(t)] == t]:
            self.entry_bytes -= len(self.entries.pop(old))  # a longer entry covers the shorter one
        self.entries[tokens] = bytes(buf[:got])
        self.entry_bytes += got
        self.saved += 1
        while self.entry_bytes > self.capacity and self.entries:
            _, old = self.entries.popitem(last=False)
            self.entry_bytes -= len(old)
            self.evicted += 1

    def finish(self, seq, ids, n_valid: int) -> None:
        if seq.row < 0:
            return
        self.save(seq, ids, n_valid)
        self.lib.llama_memory_seq_rm(self.mem, seq.row, -1, -1)
        self.rows.pop(seq.row, None)
        seq.row = -1

    # ---- one decode call -----------------------------------------------------------------------------
    def run(self, chunks):
        """Logits [M, vocab] of the rows the chunks ask for, in chunk order: decode calls for the stored
        chunks, then the scoring children in spare streams (their contexts are in place by then)."""
        rows: dict[int, list] = {}
        main = [(i, chunks[i], chunks[i].seq.row) for i, c in enumerate(chunks) if c.store]
        kids = [i for i, c in enumerate(chunks) if not c.store]
        self._decode_all(main, rows)
        lib = self.lib
        for start in range(0, len(kids), KID_STREAMS):
            group = [(i, chunks[i], self.max_batch + j) for j, i in enumerate(kids[start:start + KID_STREAMS])]
            for _, c, stream in group:  # the context's cells, then nothing past them
                lib.llama_memory_seq_cp(self.mem, c.seq.row, stream, -1, -1)
                lib.llama_memory_seq_rm(self.mem, stream, c.start, -1)
            try:
                self._decode_all(group, rows)
            finally:
                for _, _, stream in group:
                    lib.llama_memory_seq_rm(self.mem, stream, -1, -1)
        parts = [np.stack(rows[i]) for i in range(len(chunks)) if rows.get(i)]
        return np.concatenate(parts) if parts else None

    def _decode_all(self, items, rows: dict) -> None:
        """Decode (chunk index, chunk, stream) items in as few calls as the batch and output limits allow
        (a chunk may be split across calls; its pieces stay in order)."""
        call, tokens, outs = [], 0, 0
        for idx, c, stream in items:
            at = 0
            while at < len(c.tokens):
                take = min(len(c.tokens) - at, self.n_batch - tokens)
                if c.logits == ALL:
                    take = min(take, self.n_outputs - outs)
                if take <= 0:
                    self._decode(call, rows)
                    call, tokens, outs = [], 0, 0
                    continue
                last = at + take == len(c.tokens)
                logits = c.logits if c.logits == ALL or last else 0
                call.append((idx, c.tokens[at:at + take], c.start + at, logits, stream))
                tokens += take
                outs += take if logits == ALL else int(logits == LAST)
                at += take
        if call:
            self._decode(call, rows)

    def _decode(self, items, rows: dict) -> None:
        """One llama_decode of (chunk index, tokens, first position, logits kind, stream) pieces."""
        lib, batch = self.lib, self.batch
        j, want = 0, []
        for idx, tokens, start, logits, stream in items:
            n = len(tokens)
            for i, tok in enumerate(tokens):
                batch.token[j], batch.pos[j], batch.n_seq_id[j] = tok, start + i, 1
                batch.seq_id[j][0] = stream
                out = logits == ALL or (logits == LAST and i == n - 1)
                batch.logits[j] = out
                if out:
                    want.append((idx, j))
                j += 1
        batch.n_tokens = j
        rc = lib.llama_decode(self.ctx, batch)
        if rc != 0:
            raise SlmkitError(f"{self.rt.path}: llama_decode failed with code {rc} in an engine step of {j} tokens")
        for idx, pos in want:
            rows.setdefault(idx, []).append(np.ctypeslib.as_array(lib.llama_get_logits_ith(self.ctx, pos),
                                                                  shape=(self.n_vocab,)).copy())

    @staticmethod
    def argmax(matrix, rows) -> list[int]:
        return matrix[rows].argmax(-1).tolist()

    @staticmethod
    def row_numpy(matrix, row: int):
        return matrix[row]

    @staticmethod
    def logprobs(matrix, rows, targets) -> tuple[list[float], list[bool]]:
        """log p(target) and whether it is the argmax, per (row, target) pair (log-sum-exp per row)."""
        sub = matrix[rows]
        tgt = np.asarray(targets)
        top = sub.max(-1, keepdims=True)
        lse = top[:, 0].astype(np.float64) + np.log(np.exp(sub - top).sum(-1, dtype=np.float64))
        lp = sub[np.arange(len(rows)), tgt].astype(np.float64) - lse
        return lp.tolist(), (sub.argmax(-1) == tgt).tolist()

    def stats(self) -> dict:
        return {"executor": "llama.cpp", "kv_streams": self.max_batch, "kv_cells_per_stream": self.cells,
                "prefix_cache": {"entries": len(self.entries), "bytes": self.entry_bytes, "capacity_bytes": self.capacity,
                                 "lookups": self.lookups, "lookup_tokens": self.lookup_tokens,
                                 "hit_tokens": self.hit_tokens,
                                 "hit_rate": round(self.hit_tokens / self.lookup_tokens, 4) if self.lookup_tokens else 0.0,
                                 "saved": self.saved, "evicted": self.evicted}}
