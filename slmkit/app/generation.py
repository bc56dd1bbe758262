"""The one place the app generates: the API server and the UI submit jobs here and read them back as streams.

A `GenerationService` owns the runtime and its generation engine (`slmkit.serve.engine`: continuous
batching with a prefix cache). `submit(job)` hands a completion to the engine — `parallel` is the engine's
`max_batch`, the number of sequences decoding together — and streams its text back through a `Handle`;
cancelling the handle (a client that went away, a stop button) ends the sequence at the engine's next step,
which frees its row for the next waiting request. Admission is bounded: beyond `parallel + max_queue`
outstanding requests `submit` raises `QueueFull` (the API answers 503).

One worker thread loads the model (so /health can answer while it loads) and then runs `submit_call`
functions one at a time — agent episodes, latency measurements, and the log-probabilities a job asked for
(one full forward over prompt + output, after the engine produced the output).
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Iterator, Sequence

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.serve.base import Runtime, SamplingParams, log_softmax


class QueueFull(Exception):
    """More requests wait than the service admits (the API answers 503)."""


class Cancelled(Exception):
    """Raised inside a `submit_call` function when its handle was cancelled."""


@dataclass
class Job:
    """One completion: prompt ids, sampling (with stop strings), and which log-probabilities to return.

    `logprobs`/`prompt_logprobs`: None = none; k >= 0 = each token's log-probability plus its k most likely
    alternatives (for the prompt: every token after the first, the OpenAI `echo` + `logprobs` form)."""

    prompt_ids: list[int]
    params: SamplingParams
    logprobs: int | None = None
    prompt_logprobs: int | None = None


@dataclass
class TokenLogprob:
    token_id: int
    token: str
    logprob: float
    top: list[tuple[int, str, float]] = field(default_factory=list)


@dataclass
class Result:
    text: str
    finish_reason: str  # "stop" (EOS or a stop string) | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    prompt_logprobs: list[TokenLogprob | None] | None = None
    queued_s: float = 0.0  # submit -> decoding started
    ttft_s: float | None = None  # submit -> first token (None: no token)
    total_s: float = 0.0  # submit -> end
    cached_tokens: int = 0  # prompt tokens the engine's prefix cache served
    value: Any = None  # what a submit_call function returned


class Handle:
    """A submitted request: stream its pieces (sync `for piece in handle`, async `astream`), then read
    `result`. `cancel()` is safe from any thread; a cancelled request ends with finish_reason "cancelled"."""

    def __init__(self) -> None:
        self.submitted = time.perf_counter()
        self.result: Result | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
        self._on_cancel: list[Callable[[], None]] = []  # e.g. the engine handle's cancel
        self._cond = threading.Condition()
        self._pieces: deque = deque()
        self._done = False
        self._wakers: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    # ---- producer side (the worker) --------------------------------------------------------------
    def emit(self, piece: Any) -> None:
        self._push(piece=piece)

    def _finish(self, result: Result | None = None, error: BaseException | None = None) -> None:
        self._push(result=result, error=error, done=True)

    def _push(self, piece: Any = None, result=None, error=None, done: bool = False) -> None:
        with self._cond:
            if piece is not None:
                self._pieces.append(piece)
            if done:
                self.result, self.error, self._done = result, error, True
            self._cond.notify_all()
            wakers = list(self._wakers)
        for loop, event in wakers:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop has closed: nobody is listening any more
                pass

    # ---- consumer side ---------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancel.set()
        for fn in list(self._on_cancel):
            fn()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self._done

    def __iter__(self) -> Iterator[Any]:
        while True:
            with self._cond:
                while not self._pieces and not self._done:
                    self._cond.wait()
                if not self._pieces:
                    break
                piece = self._pieces.popleft()
            yield piece
        if self.error is not None:
            raise self.error

    def wait(self) -> Result:
        for _ in self:
            pass
        return self.result  # type: ignore[return-value]

    async def astream(self, disconnected: Callable[[], Any] | None = None, poll_s: float = 0.25) -> AsyncIterator[Any]:
        """Pieces as they come; `disconnected` (an async predicate, e.g. Request.is_disconnected) is polled
        while waiting and cancels the request when it turns true."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        with self._cond:
            self._wakers.append((loop, event))
        try:
            while True:
                event.clear()
                with self._cond:
                    pieces = list(self._pieces)
                    self._pieces.clear()
                    done = self._done
                for piece in pieces:
                    yield piece
                if pieces:
                    continue
                if done:
                    break
                try:
                    await asyncio.wait_for(event.wait(), poll_s if disconnected else None)
                except asyncio.TimeoutError:
                    if disconnected is not None and await disconnected():
                        self.cancel()
                        disconnected = None
        finally:
            with self._cond:
                self._wakers = [w for w in self._wakers if w[1] is not event]
        if self.error is not None:
            raise self.error


def context_length(runtime: Runtime) -> int | None:
    """Tokens a sequence may hold on this runtime (llama.cpp n_ctx, torch max_seq_len), None if unknown."""
    n = getattr(runtime, "n_ctx", None)
    if n:
        return int(n)
    cfg = getattr(runtime, "cfg", None)
    n = getattr(cfg, "max_seq_len", None)
    return int(n) if n else None


class ObservedRuntime(Runtime):
    """A runtime seen through one request: counts generated ids, checks `handle.cancelled` after every token
    (ending generation, or raising `Cancelled` when `raise_on_cancel`), calls `on_token(ids)` per token, and
    learns why generation ended. Text-level work (stop strings, detokenisation) stays in Runtime.generate;
    everything else (n_ctx, cfg, ...) is the inner runtime's."""

    def __init__(self, inner: Runtime, handle: Handle, on_token: Callable[[list[int]], None] | None = None,
                 raise_on_cancel: bool = False) -> None:
        self.inner, self.handle, self.on_token, self.raise_on_cancel = inner, handle, on_token, raise_on_cancel
        self.tokenizer, self.path, self.name = inner.tokenizer, inner.path, inner.name
        self.ids: list[int] = []
        self.exhausted = False  # the backend ended by itself (EOS or budget), not a stop string
        self.first_token_at: float | None = None

    def __getattr__(self, name: str):
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(name)
        return getattr(inner, name)

    @property
    def eos_ids(self) -> set[int]:
        return self.inner.eos_ids

    def encode_prompt(self, prompt) -> list[int]:
        return self.inner.encode_prompt(prompt)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        return self.inner.logits(token_ids)

    def engine(self, **options):
        return self.inner.engine(**options)  # the runtime's one engine, not a second one for this view

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        self.ids, self.exhausted = [], False
        for tid in self.inner.generate_ids(prompt_ids, params):
            if self.handle.cancelled:
                if self.raise_on_cancel:
                    raise Cancelled()
                return
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.ids.append(int(tid))
            if self.on_token is not None:
                self.on_token(self.ids)
            yield tid
        self.exhausted = True


def _token_logprobs(runtime: Runtime, logp_rows: np.ndarray, ids: Sequence[int], k: int) -> list[TokenLogprob]:
    tok = runtime.tokenizer
    out = []
    for row, tid in zip(logp_rows, ids):
        top = []
        if k > 0:
            best = np.argpartition(-row, min(k, row.size - 1))[:k]
            best = best[np.argsort(-row[best], kind="stable")]
            top = [(int(b), tok.decode([int(b)]), float(row[b])) for b in best]
        out.append(TokenLogprob(int(tid), tok.decode([int(tid)]), float(row[tid]), top))
    return out


def _kept_ids(runtime: Runtime, ids: list[int], text: str) -> list[int]:
    """The generated ids that make up `text` (ids held back for a stop string and EOS dropped)."""
    eos = runtime.eos_ids
    ids = [t for t in ids if t not in eos]
    for k in range(len(ids) + 1):
        if len(runtime.tokenizer.decode(ids[:k], skip_special_tokens=True)) >= len(text):
            return ids[:k]
    return ids


class GenerationService:
    """Owns a runtime (built by `load` on the worker thread, so /health can answer while it loads) and its
    engine; jobs go to the engine, calls to the worker, both behind one bounded admission count."""

    def __init__(self, load: Callable[[], Runtime] | Runtime, parallel: int = 1, max_queue: int = 16,
                 prefix_cache_mb: float | None = None) -> None:
        if parallel < 1:
            raise SlmkitError(f"parallel={parallel}: must be at least 1")
        if max_queue < 0:
            raise SlmkitError(f"max_queue={max_queue}: must be 0 or more")
        self.parallel, self.max_queue = int(parallel), int(max_queue)
        self.engine_options = {"max_batch": self.parallel}
        if prefix_cache_mb is not None:
            self.engine_options["prefix_cache_mb"] = prefix_cache_mb
        self.runtime: Runtime | None = load if isinstance(load, Runtime) else None
        self._load = None if self.runtime is not None else load
        self.engine = None
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.load_seconds = 0.0
        self._calls: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._outstanding: list[Handle] = []
        self._closing = False
        self.stats = {"submitted": 0, "finished": 0, "cancelled": 0, "rejected": 0, "errors": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}
        self._thread = threading.Thread(target=self._worker, name="slmkit-generation", daemon=True)
        self._thread.start()

    # ---- submitting -------------------------------------------------------------------------------
    def submit(self, job: Job) -> Handle:
        """Start a completion on the engine (waits for the model if it is still loading)."""
        self.ready.wait()
        if self.load_error is not None:
            raise SlmkitError(f"the model failed to load: {self.load_error}")
        handle = self._admit()
        from slmkit.serve.engine import Request

        try:
            engine_handle = self.engine.submit(Request(list(job.prompt_ids), job.params))
        except BaseException:
            self._done(handle, None)
            raise
        handle._on_cancel.append(engine_handle.cancel)
        if handle.cancelled:
            engine_handle.cancel()
        threading.Thread(target=self._follow, args=(job, handle, engine_handle), name="slmkit-stream",
                         daemon=True).start()
        return handle

    def submit_call(self, fn: Callable[[Runtime, Handle], Any]) -> Handle:
        """Run `fn(runtime, handle)` on the worker (e.g. an agent episode): it may `handle.emit(...)` pieces and
        should check `handle.cancelled`; its return value is `result.value`."""
        handle = self._admit()
        self._calls.put((fn, handle))
        return handle

    def _admit(self) -> Handle:
        handle = Handle()
        with self._lock:
            if self._closing:
                raise QueueFull("the service is shutting down")
            if len(self._outstanding) >= self.parallel + self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{len(self._outstanding)} requests are in flight or waiting "
                                f"(parallel {self.parallel} + queue {self.max_queue})")
            self._outstanding.append(handle)
            self.stats["submitted"] += 1
        return handle

    def _done(self, handle: Handle, result: Result | None, error: BaseException | None = None) -> None:
        with self._lock:
            if handle in self._outstanding:
                self._outstanding.remove(handle)
            if result is not None:
                self.stats["finished"] += 1
                self.stats["cancelled"] += result.finish_reason == "cancelled"
                self.stats["prompt_tokens"] += result.prompt_tokens
                self.stats["completion_tokens"] += result.completion_tokens
            if error is not None:
                self.stats["errors"] += 1
        handle._finish(result, error)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            out = dict(self.stats, outstanding=len(self._outstanding), parallel=self.parallel,
                       max_queue=self.max_queue, ready=self.ready.is_set())
        if self.engine is not None:
            engine = self.engine.stats()
            out.update(active=engine["active"], waiting=engine["waiting"],
                       engine={k: v for k, v in engine.items() if isinstance(v, (int, float, str))})
        else:
            out.update(active=0, waiting=0)
        return out

    # ---- following a job on the engine -------------------------------------------------------------
    def _follow(self, job: Job, handle: Handle, engine_handle) -> None:
        try:
            for piece in engine_handle:
                handle.emit(piece)
            res = engine_handle.result()
        except BaseException as exc:  # noqa: BLE001 - the request fails, the service goes on
            self._done(handle, None, exc)
            return
        reason = {"eos": "stop"}.get(res.finish_reason, res.finish_reason)
        result = Result(res.text, reason, res.prompt_tokens, len(res.token_ids), token_ids=list(res.token_ids),
                        queued_s=res.queued_s, ttft_s=res.first_token_s if res.token_ids else None,
                        total_s=res.total_s, cached_tokens=res.cached_tokens)
        if reason != "cancelled" and (job.logprobs is not None or job.prompt_logprobs is not None):
            self._calls.put((lambda rt, h: self._add_logprobs(job, result), _Followup(handle, result, self)))
            return
        self._done(handle, result)

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> bool:
        """Cancel everything, stop the worker and the engine, free the runtime; False when the worker is still
        inside a native call after `timeout` (the runtime is then left alone: freeing it under that call would
        crash)."""
        with self._lock:
            self._closing = True
            outstanding = list(self._outstanding)
        for h in outstanding:
            h.cancel()
        self._calls.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            print(f"warning: generation did not stop within {timeout:g}s; leaving the model to process exit",
                  file=sys.stderr)
            return False
        if self.runtime is not None:
            self.runtime.close()  # closes its engines first
        return True

    def _worker(self) -> None:
        if self.runtime is None:
            t0 = time.perf_counter()
            try:
                self.runtime = self._load()
            except BaseException as exc:  # noqa: BLE001 - reported through /health and every request
                self.load_error = exc
            self.load_seconds = time.perf_counter() - t0
        if self.runtime is not None and self.load_error is None:
            try:
                self.engine = self.runtime.engine(**self.engine_options)
            except BaseException as exc:  # noqa: BLE001
                self.load_error = exc
        self.ready.set()
        while True:
            entry = self._calls.get()
            if entry is None:
                break
            fn, handle = entry
            if isinstance(handle, _Followup):
                handle.run(fn, self.runtime)
                continue
            start = time.perf_counter()
            try:
                if self.load_error is not None:
                    raise SlmkitError(f"the model failed to load: {self.load_error}")
                if handle.cancelled or self._closing:
                    value, reason = None, "cancelled"
                else:
                    try:
                        value = fn(self.runtime, handle)
                        reason = "cancelled" if handle.cancelled else "stop"
                    except Cancelled:
                        value, reason = None, "cancelled"
                self._done(handle, Result("", reason, 0, 0, queued_s=start - handle.submitted,
                                          total_s=time.perf_counter() - handle.submitted, value=value))
            except BaseException as exc:  # noqa: BLE001 - a failing call never stops the worker
                self._done(handle, None, exc)

    def _add_logprobs(self, job: Job, result: Result) -> None:
        """Log-probabilities from one full forward over prompt + kept output (the model's own distribution,
        before temperature / top-p)."""
        runtime = self.runtime
        prompt = list(job.prompt_ids)
        kept = _kept_ids(runtime, result.token_ids, result.text) if job.logprobs is not None else []
        if not kept and (job.prompt_logprobs is None or len(prompt) < 2):
            result.logprobs = [] if job.logprobs is not None else None
            result.prompt_logprobs = [None] * len(prompt) if job.prompt_logprobs is not None else None
            return
        seq = prompt + kept
        logp = log_softmax(np.asarray(runtime.logits(seq), dtype=np.float32))
        if job.logprobs is not None:
            result.logprobs = _token_logprobs(runtime, logp[len(prompt) - 1: len(seq) - 1], kept, job.logprobs)
        if job.prompt_logprobs is not None:
            result.prompt_logprobs = [None] + _token_logprobs(runtime, logp[: len(prompt) - 1], prompt[1:],
                                                              job.prompt_logprobs)


class _Followup:
    """A finished engine job whose log-probabilities the worker still has to add."""

    def __init__(self, handle: Handle, result: Result, service: GenerationService) -> None:
        self.handle, self.result, self.service = handle, result, service

    def run(self, fn, runtime) -> None:
        try:
            fn(runtime, self.handle)
        except BaseException as exc:  # noqa: BLE001
            self.service._done(self.handle, None, exc)
            return
        self.service._done(self.handle, self.result)
