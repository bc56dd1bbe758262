"""The scheduler: requests in, one batched forward per step over every active sequence, results out.

A worker thread (started by the first submit) owns the backend's executor. Each step it
  1. ends cancelled sequences and admits waiting ones into free rows (up to `max_batch`), FIFO, except
     that a prompt whose next uncached block another sequence is computing right now waits a step (so a
     shared few-shot prefix is computed once and then found in the prefix cache);
  2. plans one forward: a token for every decoding sequence, then prefill chunks (and scoring
     continuations) until `max_step_tokens`, so a long prompt is spread over steps and never stalls the
     streams;
  3. runs it (executor.run) and samples / scores the rows that asked for logits;
  4. streams text (TextStream: the same detokenisation and stop strings as Runtime.generate), calls
     `on_token`, and retires sequences at EOS, a stop string, their token budget or cancel — a retired
     sequence's row is free for a waiting one on the next step, and its keys/values go to the prefix
     cache.
Backends without a step executor (ONNX Runtime, vLLM) run their own loops behind the same queue.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.serve.sampling import SamplingParams, group_by_context, sample_token
from slmkit.serve.engine.prefix import chain_keys
from slmkit.serve.engine.step import ALL, LAST, NONE, Chunk
from slmkit.serve.text import TextStream

STOP, LENGTH, EOS, CANCELLED = "stop", "length", "eos", "cancelled"
_END = object()


@dataclass
class Request:
    """One generation: prompt token ids, sampling (max_new_tokens, temperature, top_k, top_p, seed, stop
    strings), extra stop strings, and an optional per-token callback `on_token(token_id, text_piece)` (run on
    the engine's thread; returning True ends the request with finish_reason "stop")."""

    prompt_ids: Sequence[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    stop: Sequence[str] = ()
    on_token: Callable[[int, str], Any] | None = None


@dataclass
class Result:
    token_ids: list[int]  # every generated id (an EOS or the token completing a stop string included)
    text: str  # the continuation decoded without special tokens, cut before the first stop string
    finish_reason: str  # "stop" | "length" | "eos" | "cancelled"
    prompt_tokens: int
    cached_tokens: int  # prompt tokens whose keys/values came from the prefix cache
    queued_s: float = 0.0  # submit -> admitted
    first_token_s: float = 0.0  # submit -> first token (0 when none)
    total_s: float = 0.0  # submit -> finished


class Handle:
    """A submitted request: iterate it for text pieces as they are generated; `result()` waits for the end."""

    def __init__(self, request: Request, request_id: int, on_done: Callable[["Handle"], None] | None = None) -> None:
        self.request, self.id = request, request_id
        self._on_done = on_done
        self._pieces: queue.Queue = queue.Queue()
        self._done = threading.Event()
        self._result: Result | None = None
        self._error: BaseException | None = None
        self.cancelled = False

    def cancel(self) -> None:
        """Stop generating (the result keeps what was generated, finish_reason "cancelled")."""
        self.cancelled = True

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> Result:
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def __iter__(self) -> Iterator[str]:
        while True:
            piece = self._pieces.get()
            if piece is _END:
                if self._error is not None:
                    raise self._error
                return
            yield piece

    # engine side
    def _emit(self, piece: str) -> None:
        self._pieces.put(piece)

    def _finish(self, result: Result | None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._pieces.put(_END)
        self._done.set()
        if self._on_done is not None:
            self._on_done(self)


class Seq:
    """The engine's state of one request (generation) or one scoring context with its continuations."""

    __slots__ = ("handle", "prompt", "budget", "params", "stream", "rng", "greedy", "out", "pos", "last",
                 "state", "row", "cached", "t_submit", "t_admit", "t_first", "on_token", "conts", "scores",
                 "kids_left", "score_done", "keys")

    def __init__(self, prompt: list[int], budget: int, handle: Handle | None = None) -> None:
        self.handle, self.prompt, self.budget = handle, prompt, budget
        self.out: list[int] = []
        self.pos = 0  # positions whose keys/values the row holds
        self.last = -1
        self.state = "waiting"  # waiting -> prefill -> decode | kids -> done
        self.row = -1
        self.cached = 0
        self.t_submit = time.perf_counter()
        self.t_admit = self.t_first = 0.0
        self.params = None
        self.stream = self.rng = self.on_token = None
        self.greedy = True
        self.conts: list[list[int]] = []
        self.scores: list = []
        self.kids_left: list[int] = []
        self.score_done: Callable | None = None
        self.keys: list[int] | None = None  # prefix-cache block keys of the prompt (computed when needed)

    @property
    def cancelled(self) -> bool:
        return self.handle is not None and self.handle.cancelled


class Engine:
    """Continuous batching over one runtime (see slmkit.serve.engine for the API)."""

    OPTIONS = ("max_batch", "max_step_tokens", "prefix_cache_mb", "block_tokens")

    def __init__(self, runtime, executor, max_batch: int = 32, max_step_tokens: int = 512,
                 prefix_cache_mb: float = 512, block_tokens: int = 16, **_ignored) -> None:
        self.runtime, self.executor = runtime, executor
        self.max_batch, self.max_step_tokens = int(max_batch), int(max_step_tokens)
        self.tokenizer = runtime.tokenizer
        self.eos = set(runtime.eos_ids)
        self.options: dict = {}
        self.closed = False
        self._ids = itertools.count()
        self._cv = threading.Condition()
        self._incoming: deque[Seq] = deque()
        self._waiting: deque[Seq] = deque()
        self._active: list[Seq] = []
        self._thread: threading.Thread | None = None
        self._stats = dict(requests=0, finished=0, cancelled=0, prompt_tokens=0, cached_tokens=0, prefill_tokens=0,
                           generated_tokens=0, scored_contexts=0, scored_tokens=0, steps=0, step_seconds=0.0,
                           rows_per_step=0)

    @classmethod
    def for_runtime(cls, runtime, **options) -> "Engine":
        unknown = sorted(set(options) - set(cls.OPTIONS))
        if unknown:
            raise SlmkitError(f"engine option '{unknown[0]}' unknown (known: {', '.join(cls.OPTIONS)})")
        for key in ("max_batch", "max_step_tokens", "block_tokens"):
            if key in options and (not isinstance(options[key], int) or options[key] <= 0):
                raise SlmkitError(f"engine option {key}={options[key]!r} must be a positive integer")
        if "prefix_cache_mb" in options and not options["prefix_cache_mb"] >= 0:
            raise SlmkitError(f"engine option prefix_cache_mb={options['prefix_cache_mb']!r} must be >= 0")
        kind = getattr(runtime, "engine_executor", "serial")
        if kind == "torch":
            from slmkit.serve.engine.torch_exec import TorchExecutor as Executor
        elif kind == "llama.cpp":
            from slmkit.serve.engine.llamacpp_exec import LlamaCppExecutor as Executor
        elif kind == "passthrough":
            from slmkit.serve.engine.loops import PassthroughExecutor as Executor
        else:
            from slmkit.serve.engine.loops import SerialExecutor as Executor
        opts = dict(max_batch=32, max_step_tokens=512, prefix_cache_mb=512, block_tokens=16) | options
        opts["max_step_tokens"] = max(opts["max_step_tokens"], opts["max_batch"])
        engine = cls(runtime, Executor(runtime, **opts), **opts)
        engine.options = dict(options)
        if not hasattr(runtime, "_engines"):
            runtime._engines = weakref.WeakSet()
        runtime._engines.add(engine)  # runtime.close() closes it first
        return engine

    # ---- public API ---------------------------------------------------------------------------------
    def submit(self, request: Request) -> Handle:
        """Queue a request (thread-safe); the handle streams its text and gives its Result."""
        return self._submit_many([request])[0]

    def _submit_many(self, requests: Sequence[Request], on_done=None) -> list[Handle]:
        """Queue requests together (the scheduler sees them all at once: sizes, shared prefixes)."""
        if self.closed:
            raise SlmkitError("the engine is closed")
        handles = [Handle(r, next(self._ids), on_done) for r in requests]
        seqs = [self._make_seq(r, h) for r, h in zip(requests, handles)]
        with self._cv:
            self._stats["requests"] += len(seqs)
            self._stats["prompt_tokens"] += sum(len(s.prompt) for s in seqs)
            self._incoming.extend(seqs)
            self._ensure_thread()
            self._cv.notify()
        return handles

    def generate_many(self, requests: Sequence[Request], progress: Callable[[int, Result], None] | None = None
                      ) -> list[Result]:
        """Submit all, wait for all; results in request order. progress(index, result) as each finishes."""
        finished: queue.Queue = queue.Queue()
        handles = self._submit_many(requests, on_done=finished.put if progress is not None else None)
        if progress is not None:
            index = {h.id: i for i, h in enumerate(handles)}
            for _ in handles:
                h = finished.get()
                progress(index[h.id], h.result())
        return [h.result() for h in handles]

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                      progress: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is greedy) per request, in order. Each distinct
        context is computed once (prefix cache included) and its continuations run on its keys/values."""
        if self.closed:
            raise SlmkitError("the engine is closed")
        if not getattr(self.executor, "scores", False):
            out = self.runtime.loglikelihood(requests)
            if progress:
                progress(len(requests))
            return out
        results, groups = group_by_context(requests, self.runtime.start_id())
        if progress and len(groups) < len(requests):
            progress(len(requests) - sum(len(v) for v in groups.values()))
        finished_q: queue.Queue = queue.Queue()  # scored request counts, reported on the caller's thread
        seqs = []
        for ctx in sorted(groups):  # sorted: contexts sharing a prefix adjoin, so the prefix cache serves them
            idxs = groups[ctx]
            conts = [[int(t) for t in requests[i][1]] for i in idxs]
            longest = len(ctx) + max(len(c) for c in conts) - 1
            if longest > self.executor.max_len:
                raise SlmkitError(f"loglikelihood: context + continuation of {longest} tokens exceed the "
                                  f"window of {self.executor.max_len}")
            seq = Seq(list(ctx), 0)
            seq.conts = conts

            def finished(seq, idxs=idxs):
                for i, res in zip(idxs, seq.scores):
                    results[i] = res
                finished_q.put(len(idxs))
            seq.score_done = finished
            seqs.append(seq)
        if not seqs:
            return results
        for seq in seqs:
            seq.handle = Handle(Request([]), next(self._ids))
        with self._cv:
            self._incoming.extend(seqs)
            self._stats["scored_contexts"] += len(seqs)
            self._stats["prompt_tokens"] += sum(len(q.prompt) for q in seqs)
            self._ensure_thread()
            self._cv.notify()
        left = len(seqs)
        while left:
            try:
                n = finished_q.get(timeout=0.2)
            except queue.Empty:
                failed = next((s.handle._error for s in seqs if s.handle._error is not None), None)
                if failed is not None:
                    raise failed from None
                continue
            left -= 1
            if progress:
                progress(n)
        return results  # type: ignore[return-value]

    def stats(self) -> dict:
        """Counters since the engine started, the prefix cache's hit rate, and the executor's memory."""
        with self._cv:
            out = dict(self._stats)
            out["active"], out["waiting"] = len(self._active), len(self._waiting) + len(self._incoming)
        steps = max(out["steps"], 1)
        out["mean_rows_per_step"] = round(out.pop("rows_per_step") / steps, 2)
        out["step_seconds"] = round(out["step_seconds"], 3)
        out.update(self.executor.stats())
        return out

    def close(self) -> None:
        """Stop the worker (requests still queued fail) and free the executor's memory."""
        with self._cv:
            if self.closed:
                return
            self.closed = True
            self._cv.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.executor.close()

    # ---- worker ---------------------------------------------------------------------------------------
    def _make_seq(self, request: Request, handle: Handle) -> Seq:
        params = request.params or SamplingParams()
        prompt = [int(t) for t in request.prompt_ids] or [self.runtime.start_id()]
        budget = max(0, min(int(params.max_new_tokens), self.executor.max_len - len(prompt)))
        seq = Seq(prompt, budget, handle)
        seq.params = params
        seq.stream = TextStream(self.tokenizer, list(request.stop) + list(params.stop or []))
        seq.greedy = params.temperature is None or params.temperature <= 0
        seq.rng = None if seq.greedy else np.random.default_rng(params.seed)
        seq.on_token = request.on_token
        return seq

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="slmkit-engine", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self.closed and not self._incoming and not self._waiting and not self._active:
                    self._cv.wait()
                if self.closed:
                    break
                self._waiting.extend(self._incoming)
                self._incoming.clear()
            try:
                if getattr(self.executor, "steps", True):
                    self._step()
                else:
                    self._run_loop_executor()
            except BaseException as exc:  # noqa: BLE001 - every request in flight learns of it
                self._fail_all(exc)
        self._fail_all(SlmkitError("the engine was closed"))

    def _fail_all(self, exc: BaseException) -> None:
        with self._cv:
            seqs = self._active + list(self._waiting) + list(self._incoming)
            self._active, self._waiting, self._incoming = [], deque(), deque()
        try:
            self.executor.reset()
        finally:
            for seq in seqs:
                if seq.handle is not None and not seq.handle.done():
                    seq.handle._finish(None, exc)

    # ---- one step ---------------------------------------------------------------------------------------
    def _step(self) -> None:
        t0 = time.perf_counter()
        for seq in [s for s in self._active if s.cancelled]:
            self._retire(seq, CANCELLED)
        self._admit()
        chunks = self._plan()
        if not chunks:
            return
        matrix = self.executor.run(chunks)
        self._apply(chunks, matrix)
        st = self._stats
        st["steps"] += 1
        st["rows_per_step"] += len(chunks)
        st["step_seconds"] += time.perf_counter() - t0

    def _admit(self) -> None:
        pending = set()  # block keys that prefills in flight will compute (and then cache)
        for s in self._active:
            if s.state == "prefill":
                pending.update(self._keys(s))
        if not self._active and self._waiting and hasattr(self.executor, "reserve"):
            head = itertools.islice(self._waiting, 4 * self.max_batch)
            self.executor.reserve(max(len(s.prompt) + s.budget for s in head))
        scanned, kept = 0, deque()
        while self._waiting and len(self._active) < self.max_batch and scanned < 4 * self.max_batch:
            seq = self._waiting.popleft()
            if seq.cancelled:
                self._retire(seq, CANCELLED)
                continue
            if seq.conts == [] and seq.budget == 0:
                self._retire(seq, LENGTH)
                continue
            if self._deferred(seq, pending):
                kept.append(seq)
                scanned += 1
                continue
            cached = self.executor.start(seq)
            if cached is None:  # the executor cannot take it before the running sequences are done
                kept.append(seq)
                break
            seq.t_admit = time.perf_counter()
            seq.cached = seq.pos = cached
            self._stats["cached_tokens"] += seq.cached
            seq.state = "prefill"
            self._active.append(seq)
            pending.update(self._keys(seq))
        self._waiting.extendleft(reversed(kept))

    def _keys(self, seq: Seq) -> list[int]:
        bs = self.executor.block_tokens
        if seq.keys is None:
            seq.keys = chain_keys(seq.prompt, bs, len(seq.prompt) - 1) if bs > 0 else []
        return seq.keys

    def _deferred(self, seq: Seq, pending: set) -> bool:
        """Whether a prefill in flight computes the first block of `seq`'s prompt that is not cached yet (a
        prefill saves its blocks when its prompt is complete, so waiting for it saves a block or more)."""
        bs = self.executor.block_tokens
        if not pending or bs <= 0:
            return False
        keys, i = self._keys(seq), self.executor.peek(seq.prompt) // bs
        return i < len(keys) and keys[i] in pending

    def _plan(self) -> list[Chunk]:
        chunks: list[Chunk] = []
        budget = self.max_step_tokens
        for seq in self._active:
            if seq.state == "decode":
                chunks.append(Chunk(seq, [seq.last], seq.pos, True, LAST))
                budget -= 1
        for seq in self._active:
            if budget <= 0 and chunks:
                break
            if seq.state == "prefill":
                n = min(len(seq.prompt) - seq.pos, max(budget, 1))
                final = seq.pos + n == len(seq.prompt)
                chunks.append(Chunk(seq, seq.prompt[seq.pos:seq.pos + n], seq.pos, True, LAST if final else NONE))
                budget -= n
                if final and seq.conts:  # its continuations may run in this very forward
                    seq.kids_left = [i for i, c in enumerate(seq.conts) if len(c) > 1]
                    budget = self._plan_kids(seq, chunks, budget, len(seq.prompt))
            elif seq.state == "kids":
                budget = self._plan_kids(seq, chunks, budget, len(seq.prompt))
        return chunks

    def _plan_kids(self, seq: Seq, chunks: list[Chunk], budget: int, ctx_len: int) -> int:
        while seq.kids_left and (budget > 0 or not chunks):
            i = seq.kids_left.pop(0)
            toks = seq.conts[i][:-1]
            chunks.append(Chunk(seq, toks, ctx_len, False, ALL, kid=i))
            budget -= len(toks)
        return budget

    def _apply(self, chunks: list[Chunk], matrix) -> None:
        row = 0
        gen_rows, gen_seqs, score_parts = [], [], []
        for c in chunks:
            seq = c.seq
            if c.store:
                seq.pos = c.start + len(c.tokens)
            if c.logits == NONE:
                continue
            if c.logits == LAST:
                if seq.conts:
                    score_parts.append((seq, -1, row))
                else:
                    gen_rows.append(row)
                    gen_seqs.append(seq)
                row += 1
            else:
                score_parts.append((seq, c.kid, row))
                row += len(c.tokens)
        for c in chunks:
            if c.store and c.seq.state == "prefill" and c.seq.pos == len(c.seq.prompt):
                self._stats["prefill_tokens"] += len(c.seq.prompt) - c.seq.cached
                self.executor.save(c.seq, c.seq.prompt, len(c.seq.prompt))  # shareable by waiting prompts now
                c.seq.state = "kids" if c.seq.conts else "decode"
        if gen_rows:
            self._sample(gen_seqs, gen_rows, matrix)
        if score_parts:
            self._score(score_parts, matrix)

    def _sample(self, seqs: list[Seq], rows: list[int], matrix) -> None:
        greedy = [i for i, s in enumerate(seqs) if s.greedy]
        picked: dict[int, int] = {}
        if greedy:
            ids = self.executor.argmax(matrix, [rows[i] for i in greedy])
            picked.update(zip(greedy, ids))
        for i, seq in enumerate(seqs):
            if not seq.greedy:
                picked[i] = sample_token(self.executor.row_numpy(matrix, rows[i]), seq.params, seq.rng)
        now = time.perf_counter()
        for i, seq in enumerate(seqs):
            self._accept(seq, picked[i], now)

    def _accept(self, seq: Seq, tid: int, now: float) -> bool:
        """Take one generated token; returns False when the sequence is retired."""
        if not seq.out:
            seq.t_first = now
        seq.out.append(tid)
        self._stats["generated_tokens"] += 1
        piece = seq.stream.push(tid)
        if piece:
            seq.handle._emit(piece)
        stop = False
        if seq.on_token is not None:
            try:
                stop = bool(seq.on_token(tid, piece))
            except Exception as exc:  # noqa: BLE001 - the caller's callback fails its own request only
                self._retire(seq, STOP, error=exc)
                return False
        if tid in self.eos:
            self._retire(seq, EOS)
        elif seq.stream.stopped or stop:
            self._retire(seq, STOP)
        elif len(seq.out) >= seq.budget:
            self._retire(seq, LENGTH)
        else:
            seq.last = tid
            return True
        return False

    def _score(self, parts: list[tuple[Seq, int, int]], matrix) -> None:
        rows, targets, where = [], [], []
        for seq, kid, row in parts:
            if not seq.scores:
                seq.scores = [[0.0, True] for _ in seq.conts]
            if kid < 0:  # the context's last position predicts every continuation's first token
                for i, cont in enumerate(seq.conts):
                    rows.append(row)
                    targets.append(cont[0])
                    where.append((seq, i))
            else:
                cont = seq.conts[kid]
                for j in range(1, len(cont)):
                    rows.append(row + j - 1)
                    targets.append(cont[j])
                    where.append((seq, kid))
        lps, greedy = self.executor.logprobs(matrix, rows, targets)
        touched = {}
        for (seq, i), lp, g in zip(where, lps, greedy):
            seq.scores[i][0] += lp
            seq.scores[i][1] = seq.scores[i][1] and g
            touched[id(seq)] = seq
        self._stats["scored_tokens"] += len(targets)
        for seq in touched.values():
            if seq.state == "kids" and not seq.kids_left:  # every planned continuation is scored by now
                seq.scores = [(float(a), bool(b)) for a, b in seq.scores]
                self._retire(seq, STOP)

    def _retire(self, seq: Seq, reason: str, error: BaseException | None = None) -> None:
        if seq in self._active:
            self._active.remove(seq)
            computed = seq.prompt + seq.out[:-1] if seq.out else seq.prompt[:seq.pos]
            self.executor.finish(seq, computed, min(seq.pos, len(computed)))
        seq.state = "done"
        if error is not None:
            seq.handle._finish(None, error)
            return
        if seq.conts:
            if reason == CANCELLED:
                seq.handle._finish(None, SlmkitError("scoring cancelled"))
                return
            seq.score_done(seq)
            seq.handle._finish(None)
            return
        self._stats["finished"] += 1
        if reason == CANCELLED:
            self._stats["cancelled"] += 1
        piece = seq.stream.finish()
        if piece:
            seq.handle._emit(piece)
        now = time.perf_counter()
        res = Result(token_ids=list(seq.out), text=seq.stream.text, finish_reason=reason, prompt_tokens=len(seq.prompt),
                     cached_tokens=seq.cached, queued_s=(seq.t_admit or now) - seq.t_submit,
                     first_token_s=(seq.t_first - seq.t_submit) if seq.t_first else 0.0, total_s=now - seq.t_submit)
        seq.handle._finish(res)

    # ---- backends with their own loops ---------------------------------------------------------------------
    def _run_loop_executor(self) -> None:
        batch = []
        while self._waiting and len(batch) < self.executor.batch:
            seq = self._waiting.popleft()
            if seq.cancelled or seq.budget == 0:
                self._retire(seq, CANCELLED if seq.cancelled else LENGTH)
                continue
            seq.t_admit = time.perf_counter()
            batch.append(seq)
        if not batch:
            return
        live = set(id(s) for s in batch)

        def accept(seq: Seq, tid: int) -> bool:
            if id(seq) not in live:
                return False
            if seq.cancelled:
                live.discard(id(seq))
                self._retire(seq, CANCELLED)
                return False
            if not self._accept(seq, int(tid), time.perf_counter()):
                live.discard(id(seq))
                return False
            return True
        self.executor.generate(batch, accept)
        for seq in batch:
            if id(seq) in live:  # the backend stopped on its own (EOS it hides, or its budget)
                self._retire(seq, LENGTH if len(seq.out) >= seq.budget else EOS)
