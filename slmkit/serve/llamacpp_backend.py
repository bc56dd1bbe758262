"""llama.cpp backend: a GGUF served in-process through llama-cpp-python.

Single-stream generation runs llama.cpp's own eval + sampler loop (`Llama.generate`), so it costs what
raw llama-cpp-python costs; `logits` fills llama.cpp batches directly. Batched generation
(`generate_batch`) and scoring (`loglikelihood`) run on the engine: parallel sequences in a second
context on the same weights (slmkit.serve.engine.llamacpp_exec).
The file's header is parsed and bounds-checked first (slmkit.formats.gguf.open_gguf): a truncated or
corrupt file must give an SlmkitError, never a crash inside llama.cpp.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.serve.base import Runtime, SamplingParams

GGML_TYPE_F32 = 0
EXTRA_BUFTS_ENV = "SLMKIT_LLAMA_EXTRA_BUFTS"
_PARAMS_LOCK = threading.RLock()


@contextlib.contextmanager
def model_params(**fields) -> Iterator[None]:
    """While active, every `llama_cpp.Llama(...)` loads its model with these `llama_model_params` fields set.

    `Llama()` has no arguments for `use_extra_bufts` or `tensor_buft_overrides`, and it reads its defaults
    from `llama_model_default_params()`; so that function is swapped for the duration, under a lock (one
    model load at a time; nested uses compose). This is the only place slmkit touches llama-cpp-python so.
    """
    import llama_cpp.llama_cpp as lib

    with _PARAMS_LOCK:
        original = lib.llama_model_default_params

        def params():
            p = original()
            for key, value in fields.items():
                setattr(p, key, value)
            return p

        lib.llama_model_default_params = params
        try:
            yield
        finally:
            lib.llama_model_default_params = original


def open_llama(path: str | os.PathLike, extra_bufts: bool = True, **kw):
    """llama_cpp.Llama with llama.cpp's extra weight buffers (AMX / repacked kernels) on or off."""
    import llama_cpp

    with model_params(use_extra_bufts=bool(extra_bufts)):
        return llama_cpp.Llama(str(path), **kw)


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return False


def extra_bufts_default() -> bool:
    """Whether to use llama.cpp's extra weight buffers (AMX / repacked quant kernels) by default.

    On CPUs that advertise AMX, llama.cpp puts quantized weights in its AMX buffer, and inside the VMs
    we run on that crashes (SIGSEGV in llama_decode; f32/f16/bf16 files are unaffected), so they are
    off there; elsewhere they are llama.cpp's normal fast path (repacked q4_0/q4_K/iq4_nl kernels).
    SLMKIT_LLAMA_EXTRA_BUFTS=0/1 overrides.
    """
    forced = os.environ.get(EXTRA_BUFTS_ENV)
    if forced in ("0", "1"):
        return forced == "1"
    return not _cpu_has_amx()


def _tokenizer_for(path: Path, reader, n_vocab: int):
    """HF tokenizer beside the GGUF (same vocab size) if there is one, else rebuilt from GGUF metadata."""
    from slmkit.formats.gguf import hf_tokenizer_from_gguf
    from slmkit.model.tokenizer import load_tokenizer

    if (path.parent / "tokenizer.json").exists():
        tok = load_tokenizer(path.parent)
        if len(tok) <= n_vocab:
            return tok
    tok = hf_tokenizer_from_gguf(reader, str(path))
    return tok


class LlamaCppRuntime(Runtime):
    name = "llama.cpp"
    engine_executor = "llama.cpp"  # batched generation: slmkit.serve.engine.llamacpp_exec

    def __init__(self, path: str | os.PathLike, n_ctx: int | None = None, n_threads: int | None = None,
                 f32_kv: bool = False, n_batch: int = 512, tokenizer=None, verbose: bool = False,
                 extra_bufts: bool | None = None, **kw) -> None:
        """n_ctx: default min(training context, 4096); n_threads None: llama-cpp-python's default;
        f32_kv: fp32 KV cache (parity runs); extra_bufts: AMX/repacked weight buffers (None: extra_bufts_default());
        other keywords go to llama_cpp.Llama."""
        try:
            import llama_cpp
        except ImportError:
            raise SlmkitError("backend 'llama.cpp' needs llama-cpp-python (pip install 'slmkit[serve]')") from None
        from slmkit.formats.gguf import field, open_gguf

        self.path = Path(path)
        reader = open_gguf(self.path)
        arch = field(reader, "general.architecture")
        train_ctx = int(field(reader, f"{arch}.context_length", 2048) or 2048)
        self.n_ctx = int(n_ctx or min(train_ctx, 4096))
        if f32_kv:
            kw.setdefault("type_k", GGML_TYPE_F32)
            kw.setdefault("type_v", GGML_TYPE_F32)
        if n_threads:
            kw.setdefault("n_threads_batch", n_threads)  # else prefill uses every core regardless of n_threads
        try:
            if extra_bufts is None:
                extra_bufts = extra_bufts_default()
            self.extra_bufts = bool(extra_bufts)
            self._llm = open_llama(self.path, extra_bufts=self.extra_bufts, n_ctx=self.n_ctx, n_threads=n_threads,
                                   n_batch=n_batch, n_ubatch=n_batch, logits_all=False, verbose=verbose, **kw)
        except ValueError as exc:
            raise SlmkitError(f"{self.path}: llama.cpp could not load the model ({exc})") from None
        self._lib = llama_cpp
        self.verbose = bool(verbose)
        self.n_vocab = int(self._llm.n_vocab())
        self.n_batch = int(n_batch)
        self.tokenizer = tokenizer if tokenizer is not None else _tokenizer_for(self.path, reader, self.n_vocab)
        template = field(reader, "tokenizer.chat_template")
        if template and not getattr(self.tokenizer, "chat_template", None):
            self.tokenizer.chat_template = template
        del reader

    # ---- raw access -------------------------------------------------------------------------------
    @property
    def llama(self):
        """The underlying llama_cpp.Llama (for benchmarks against raw llama-cpp-python)."""
        return self._llm

    def close(self) -> None:
        self.close_engine()  # its context lives on this model's weights
        llm = getattr(self, "_llm", None)
        if llm is not None:
            llm.close()
            self._llm = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # ---- KV cache bookkeeping (kept in llama_cpp.Llama's own fields so its generate() reuses it) ---
    def _rewind(self, keep: int) -> None:
        llm = self._llm
        if keep < llm.n_tokens:
            if not llm._ctx.kv_cache_seq_rm(-1, keep, -1):
                keep = 0
                llm._ctx.kv_cache_seq_rm(-1, 0, -1)
            llm.n_tokens = keep
        llm._requires_eval = True

    def _check_len(self, n: int) -> None:
        if n > self.n_ctx:
            raise SlmkitError(f"{self.path}: {n} tokens exceed the context n_ctx={self.n_ctx} (pass n_ctx=... to load)")

    def _decode(self, tokens: Sequence[int], first_logit: int) -> np.ndarray:
        """Append `tokens` after the cache; return logits [len(tokens) - first_logit, vocab] for the tail."""
        llm, lib = self._llm, self._lib
        n_total, n_vocab = len(tokens), self.n_vocab
        out = np.empty((max(n_total - first_logit, 0), n_vocab), dtype=np.float32)
        batch = llm._batch.batch
        row = 0
        for start in range(0, n_total, self.n_batch):
            chunk = tokens[start: start + self.n_batch]
            n_past = llm.n_tokens
            n_out = 0
            for i, tok in enumerate(chunk):
                batch.token[i] = int(tok)
                batch.pos[i] = n_past + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                want = start + i >= first_logit
                batch.logits[i] = want
                n_out += want
            batch.n_tokens = len(chunk)
            rc = lib.llama_decode(llm.ctx, batch)
            if rc != 0:
                self._rewind(n_past)
                raise SlmkitError(f"{self.path}: llama_decode failed with code {rc} at position {n_past}")
            llm.input_ids[n_past: n_past + len(chunk)] = chunk
            llm.n_tokens = n_past + len(chunk)
            if n_out:
                ptr = lib.llama_get_logits(llm.ctx)
                out[row: row + n_out] = np.ctypeslib.as_array(ptr, shape=(n_out * n_vocab,)).reshape(n_out, n_vocab)
                row += n_out
        llm._requires_eval = True
        return out

    # ---- Runtime interface --------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        ids = [int(t) for t in token_ids]
        self._check_len(len(ids))
        self._rewind(0)
        return self._decode(ids, 0)

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """Sum log p(continuation | context) and greedy flag per request, on the engine: many contexts per
        decode call, each context once (shared prefixes from the prefix cache), continuations after it."""
        for idx, (ctx, cont) in enumerate(requests):
            if cont and not ctx:
                raise SlmkitError(f"{self.path}: loglikelihood request {idx} has an empty context (prepend BOS/EOS)")
        return self.engine().loglikelihood(requests)

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        ids = [int(t) for t in prompt_ids]
        if not ids:
            raise SlmkitError(f"{self.path}: empty prompt")
        self._check_len(len(ids))
        budget = min(params.max_new_tokens, self.n_ctx - len(ids))
        if budget <= 0:
            return
        eos = self.eos_ids
        llm = self._llm
        if params.temperature > 0:
            llm.set_seed(int(params.seed))
            kwargs = dict(temp=float(params.temperature), top_k=int(params.top_k or 0), top_p=float(params.top_p),
                          min_p=0.0, typical_p=1.0, repeat_penalty=1.0)
        else:
            kwargs = dict(temp=0.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, repeat_penalty=1.0)
        produced = 0
        for tok in llm.generate(ids, **kwargs):
            produced += 1
            yield int(tok)
            if tok in eos or produced >= budget:
                break
