"""The one place the app generates: the API server and the UI submit jobs here and read them back as streams.

A `GenerationService` owns the runtime. Today it runs on the Runtime interface (`slmkit.serve`): one worker
thread loads the model, then decodes one request at a time; a request's cancel flag is checked after every
token, so a client that goes away stops its generation at once and the next waiting request starts. The
queue is bounded: `submit` raises `QueueFull` beyond `max_queue` waiting requests (the API answers 503).

The generation engine (`slmkit.serve.engine`, continuous batching) replaces `_run_job` and the worker loop
and nothing else: `parallel` then means that many sequences decoding together. Callers only see `submit`,
`submit_call`, `Handle` (iterate / `astream`, `cancel`, `result`) and `Result`.
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
    queued_s: float = 0.0  # submit -> start
    ttft_s: float | None = None  # start -> first token
    total_s: float = 0.0  # start -> end
    value: Any = None  # what a submit_call function returned


class Handle:
    """A submitted request: stream its pieces (sync `for piece in handle`, async `astream`), then read
    `result`. `cancel()` is safe from any thread; a cancelled request ends with finish_reason "cancelled"."""

    def __init__(self) -> None:
        self.submitted = time.perf_counter()
        self.result: Result | None = None
        self.error: BaseException | None = None
        self._cancel = threading.Event()
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
    """Owns a runtime (built by `load` on the worker thread, so /health can answer while it loads) and runs
    submitted jobs on it through a bounded queue."""

    def __init__(self, load: Callable[[], Runtime] | Runtime, parallel: int = 1, max_queue: int = 16) -> None:
        if parallel < 1:
            raise SlmkitError(f"parallel={parallel}: must be at least 1")
        if max_queue < 0:
            raise SlmkitError(f"max_queue={max_queue}: must be 0 or more")
        self.parallel, self.max_queue = int(parallel), int(max_queue)
        self.runtime: Runtime | None = load if isinstance(load, Runtime) else None
        self._load = None if self.runtime is not None else load
        self.ready = threading.Event()
        self.load_error: BaseException | None = None
        self.load_seconds = 0.0
        self._jobs: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0
        self._active: list[Handle] = []
        self._closing = False
        self._slots = 1  # sequences decoding at once: one worker on the Runtime interface
        self.stats = {"submitted": 0, "finished": 0, "cancelled": 0, "rejected": 0, "errors": 0,
                      "prompt_tokens": 0, "completion_tokens": 0}
        if self.parallel > 1:
            print(f"warning: parallel={self.parallel}: the generation engine (slmkit.serve.engine) is not available, "
                  "so requests decode one at a time", file=sys.stderr)
        self._thread = threading.Thread(target=self._worker, name="slmkit-generation", daemon=True)
        self._thread.start()

    # ---- submitting -------------------------------------------------------------------------------
    def submit(self, job: Job) -> Handle:
        return self._enqueue(("job", job))

    def submit_call(self, fn: Callable[[Runtime, Handle], Any]) -> Handle:
        """Run `fn(runtime, handle)` on the worker (e.g. an agent episode): it may `handle.emit(...)` pieces and
        should check `handle.cancelled`; its return value is `result.value`."""
        return self._enqueue(("call", fn))

    def _enqueue(self, item) -> Handle:
        handle = Handle()
        with self._lock:
            if self._closing:
                raise QueueFull("the service is shutting down")
            if self._waiting + len(self._active) >= self._slots + self.max_queue:
                self.stats["rejected"] += 1
                raise QueueFull(f"{self._waiting} requests are waiting (the queue holds {self.max_queue})")
            self._waiting += 1
            self.stats["submitted"] += 1
        self._jobs.put((item, handle))
        return handle

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.stats, waiting=self._waiting, active=len(self._active), parallel=self.parallel,
                        max_queue=self.max_queue, ready=self.ready.is_set())

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self, timeout: float = 30.0) -> bool:
        """Cancel everything, stop the worker and free the runtime; False when the worker is still inside a
        native call after `timeout` (the runtime is then left alone: freeing it under that call would crash)."""
        with self._lock:
            self._closing = True
            active = list(self._active)
        for h in active:
            h.cancel()
        self._jobs.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            # still inside one token's native call: freeing the model under it would crash the process
            print(f"warning: generation did not stop within {timeout:g}s; leaving the model to process exit",
                  file=sys.stderr)
            return False
        if self.runtime is not None:
            self.runtime.close()
        return True

    def _worker(self) -> None:
        if self.runtime is None:
            t0 = time.perf_counter()
            try:
                self.runtime = self._load()
            except BaseException as exc:  # noqa: BLE001 - reported through /health and every request
                self.load_error = exc
            self.load_seconds = time.perf_counter() - t0
        self.ready.set()
        while True:
            entry = self._jobs.get()
            if entry is None:
                break
            (kind, payload), handle = entry
            with self._lock:
                self._waiting -= 1
                self._active.append(handle)
                closing = self._closing
            try:
                if closing or handle.cancelled or self.load_error is not None:
                    if self.load_error is not None:
                        raise SlmkitError(f"the model failed to load: {self.load_error}")
                    handle._finish(Result("", "cancelled", len(payload.prompt_ids) if kind == "job" else 0, 0,
                                          queued_s=time.perf_counter() - handle.submitted))
                else:
                    handle._finish(self._run_job(payload, handle) if kind == "job" else self._run_call(payload, handle))
            except BaseException as exc:  # noqa: BLE001 - a failing request never stops the worker
                with self._lock:
                    self.stats["errors"] += 1
                handle._finish(error=exc)
            finally:
                with self._lock:
                    self._active.remove(handle)
                    res = handle.result
                    if res is not None:
                        self.stats["finished"] += 1
                        self.stats["cancelled"] += res.finish_reason == "cancelled"
                        self.stats["prompt_tokens"] += res.prompt_tokens
                        self.stats["completion_tokens"] += res.completion_tokens

    def _run_call(self, fn, handle: Handle) -> Result:
        start = time.perf_counter()
        try:
            value = fn(self.runtime, handle)
            reason = "cancelled" if handle.cancelled else "stop"
        except Cancelled:
            value, reason = None, "cancelled"
        return Result("", reason, 0, 0, queued_s=start - handle.submitted, total_s=time.perf_counter() - start,
                      value=value)

    def _run_job(self, job: Job, handle: Handle) -> Result:
        runtime = self.runtime
        start = time.perf_counter()
        tracked = ObservedRuntime(runtime, handle)
        pieces = []
        if job.params.max_new_tokens > 0:
            for piece in tracked.generate(list(job.prompt_ids), job.params):
                pieces.append(piece)
                handle.emit(piece)
                if handle.cancelled:
                    break
        text = "".join(pieces)
        ids = tracked.ids
        if handle.cancelled:
            reason = "cancelled"
        elif job.params.max_new_tokens > 0 and (not tracked.exhausted or (ids and ids[-1] in runtime.eos_ids)):
            reason = "stop"  # a stop string (the backend was still going) or EOS
        else:
            reason = "length"
        result = Result(text, reason, len(job.prompt_ids), len(ids), token_ids=list(ids),
                        queued_s=start - handle.submitted,
                        ttft_s=None if tracked.first_token_at is None else tracked.first_token_at - start)
        if reason != "cancelled" and (job.logprobs is not None or job.prompt_logprobs is not None):
            self._add_logprobs(job, result)
        result.total_s = time.perf_counter() - start
        return result

    def _add_logprobs(self, job: Job, result: Result) -> None:
        """Log-probabilities from one full forward over prompt + kept output (the model's own distribution,
        before temperature / top-p)."""
        runtime = self.runtime
        prompt = list(job.prompt_ids)
        kept = _kept_ids(runtime, result.token_ids, result.text) if job.logprobs is not None else []
        seq = prompt + kept
        if not kept and (job.prompt_logprobs is None or len(prompt) < 2):
            result.logprobs = [] if job.logprobs is not None else None
            result.prompt_logprobs = [None] * len(prompt) if job.prompt_logprobs is not None else None
            return
        logp = log_softmax(np.asarray(runtime.logits(seq), dtype=np.float32))
        if job.logprobs is not None:
            result.logprobs = _token_logprobs(runtime, logp[len(prompt) - 1: len(seq) - 1], kept, job.logprobs)
        if job.prompt_logprobs is not None:
            result.prompt_logprobs = [None] + _token_logprobs(runtime, logp[: len(prompt) - 1], prompt[1:],
                                                              job.prompt_logprobs)
