"""Token shards and the deterministic mixture sampler.

`prepare` tokenizes sources (synthetic corpus, JSONL/text files) into packed token shards: raw
uint16/uint32 arrays (chosen by vocab size) read back through np.memmap, each document followed by
the end-of-text id, with a per-shard document index and a manifest of sources and token counts.

`MixtureSampler.batch(step, ...)` draws a global batch as a pure function of (seed, step): the
source of each row by the phase's mixture weights, then a uniformly random window inside that
source. Nothing else is needed to resume exactly, and every rank derives the same global batch and
reads only its own rows.
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from slmkit.corpus.files import iter_file_texts
from slmkit.errors import SlmkitError
from slmkit.paths import atomic_write_bytes, atomic_write_json, read_json, sha256_file

MANIFEST = "manifest.json"
FORMAT = "slmkit-tokens"
SHARD_TOKENS = 64 * 1024 * 1024


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size < 65536 else np.uint32)


# ---------------------------------------------------------------- reading source documents

def _expand(pattern: str, base: Path | None) -> list[Path]:
    pattern = os.path.expandvars(os.path.expanduser(str(pattern)))
    if "$" in pattern:
        raise SlmkitError(f"data source path '{pattern}': unset environment variable (set SLMKIT_DATA?)")
    if base is not None and not os.path.isabs(pattern):
        pattern = str(base / pattern)
    hits = sorted(Path(p) for p in glob.glob(pattern))
    if not hits:
        raise SlmkitError(f"data source path '{pattern}': no files match")
    return hits


def iter_documents(name: str, spec: dict, base: Path | None = None) -> Iterator[str]:
    """The texts of one source spec (synthetic | jsonl | text), capped by `max_docs`."""
    kind = spec.get("type")
    limit = spec.get("max_docs") or spec.get("docs")
    if kind == "synthetic":
        from slmkit.corpus.synthetic import iter_training_texts

        n = spec.get("docs")
        if not isinstance(n, int) or isinstance(n, bool) or n <= 0:
            raise SlmkitError(f"data source '{name}': field 'docs'={n!r} must be a positive integer")
        it = iter_training_texts(spec.get("seed", 0))
        for _ in range(n):
            yield next(it)
        return
    paths = spec.get("paths") or ([spec["path"]] if spec.get("path") else None)
    if not paths:
        raise SlmkitError(f"data source '{name}': field 'paths' must list files or globs")
    files = [f for p in paths for f in _expand(p, base)]
    field = spec.get("text_field", "text")
    count = 0
    for path in files:
        for text in iter_file_texts(path, "text" if kind == "text" else "jsonl", field):
            yield text
            count += 1
            if limit and count >= limit:
                return


# ---------------------------------------------------------------- writing shards

def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def tokenizer_fingerprint(tokenizer_dir: str | Path) -> str:
    from slmkit.model.tokenizer import tokenizer_json_path

    return sha256_file(tokenizer_json_path(Path(tokenizer_dir)))[:16]


def prepare(sources: dict[str, dict], tokenizer_dir: str | Path, out_dir: str | Path, *, base: Path | None = None,
            shard_tokens: int = SHARD_TOKENS, batch_docs: int = 256, progress: bool = True) -> dict:
    """Tokenize each source into `out_dir/<name>/NNNNN.bin` (+ `.idx.npy`) and write the manifest."""
    from slmkit.model.tokenizer import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    backend = tok.backend_tokenizer
    eos_id = tok.eos_token_id
    if eos_id is None:
        raise SlmkitError(f"{tokenizer_dir}: tokenizer has no eos token (needed to separate documents)")
    vocab = len(tok)
    dtype = token_dtype(vocab)
    out_dir = Path(out_dir)
    manifest = {"format": FORMAT, "version": 1, "dtype": dtype.name, "vocab_size": vocab, "eos_id": int(eos_id),
                "tokenizer": {"path": str(tokenizer_dir), "sha256_16": tokenizer_fingerprint(tokenizer_dir)},
                "sources": {}}
    ctx = _progress(progress)
    with ctx as bar:
        for name, spec in sources.items():
            task = bar.add_task(f"tokenize {name}", total=spec.get("max_docs") or spec.get("docs")) if bar else None
            shards, buf, starts, n_docs, n_tok = [], [], [], 0, 0
            buf_len = 0

            def flush() -> None:
                nonlocal buf, starts, buf_len
                if not buf:
                    return
                arr = np.concatenate(buf).astype(dtype, copy=False)
                rel = f"{name}/{len(shards):05d}.bin"
                atomic_write_bytes(out_dir / rel, arr.tobytes())
                atomic_write_bytes(out_dir / (rel[:-4] + ".idx.npy"), _npy_bytes(np.asarray(starts, dtype=np.int64)))
                shards.append({"file": rel, "index": rel[:-4] + ".idx.npy", "tokens": int(arr.size), "docs": len(starts)})
                buf, starts, buf_len = [], [], 0

            def encode(texts: list[str]) -> None:
                nonlocal n_docs, n_tok, buf_len
                for enc in backend.encode_batch(texts, add_special_tokens=False):
                    ids = np.asarray(enc.ids + [eos_id], dtype=np.int64)
                    if ids.max() >= vocab:
                        raise SlmkitError(f"{tokenizer_dir}: token id {int(ids.max())} >= vocab {vocab}")
                    starts.append(buf_len)
                    buf.append(ids)
                    buf_len += ids.size
                    n_docs += 1
                    n_tok += ids.size
                    if buf_len >= shard_tokens:
                        flush()
                if bar:
                    bar.update(task, advance=len(texts))

            pending: list[str] = []
            for text in iter_documents(name, spec, base):
                pending.append(text)
                if len(pending) >= batch_docs:
                    encode(pending)
                    pending = []
            if pending:
                encode(pending)
            flush()
            if n_tok == 0:
                raise SlmkitError(f"data source '{name}': no documents")
            manifest["sources"][name] = {"spec": spec, "docs": n_docs, "tokens": n_tok, "shards": shards}
    manifest["total_tokens"] = sum(s["tokens"] for s in manifest["sources"].values())
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


def _progress(enabled: bool):
    import contextlib

    if not enabled:
        return contextlib.nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    transient=True)


def read_manifest(prepared_dir: str | Path) -> dict:
    path = Path(prepared_dir) / MANIFEST
    manifest = read_json(path, missing="missing (run `slmkit data prepare` first)")
    if manifest.get("format") != FORMAT:
        raise SlmkitError(f"{path}: field 'format' must be '{FORMAT}'")
    return manifest


# ---------------------------------------------------------------- sources for training

class TokenSource:
    """The shards of one prepared source, memory-mapped; windows never cross shard ends."""

    def __init__(self, prepared_dir: Path, name: str, manifest: dict) -> None:
        if name not in manifest["sources"]:
            raise SlmkitError(f"{prepared_dir / MANIFEST}: no source '{name}' (has {', '.join(manifest['sources'])})")
        self.name = name
        self.dtype = np.dtype(manifest["dtype"])
        self.vocab_size = manifest["vocab_size"]
        self.tokens = manifest["sources"][name]["tokens"]
        self.arrays, self.index_files, self._starts, self._inside = [], [], None, None
        for shard in manifest["sources"][name]["shards"]:
            path = prepared_dir / shard["file"]
            if not path.exists() or path.stat().st_size != shard["tokens"] * self.dtype.itemsize:
                raise SlmkitError(f"{path}: missing or wrong size (expected {shard['tokens']} tokens)")
            self.arrays.append(np.memmap(path, dtype=self.dtype, mode="r"))
            self.index_files.append(prepared_dir / shard["index"])

    def doc_starts(self, window: int) -> list[np.ndarray]:
        """Per shard, the document starts that leave a whole window inside the shard."""
        if self._starts is None or self._starts[0] != window:
            starts = []
            for arr, idx in zip(self.arrays, self.index_files):
                s = np.load(idx)
                starts.append(s[s + window <= arr.size])
            self._starts = (window, starts)
        return self._starts[1]

    def inside_doc_windows(self, window: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per shard, (document starts, cumulative count of windows) over documents of >= `window` tokens."""
        key = ("inside", window)
        if self._inside is None or self._inside[0] != key:
            out = []
            for arr, idx in zip(self.arrays, self.index_files):
                starts = np.load(idx)
                lengths = np.diff(np.append(starts, arr.size))
                fits = lengths >= window
                out.append((starts[fits], np.cumsum(lengths[fits] - window + 1)))
            self._inside = (key, out)
        return self._inside[1]

    def check(self, window: int, align: str = "token") -> None:
        if align == "within_doc":
            if not any(len(s) for s, _ in self.inside_doc_windows(window)):
                raise SlmkitError(f"data source '{self.name}': no document has {window} tokens (needed for "
                                  "long-context windows inside one document; use long_context.align: token to pack)")
            return
        if not any(a.size >= window for a in self.arrays):
            raise SlmkitError(f"data source '{self.name}': {self.tokens} tokens, shorter than one window of {window}")

    def draw(self, rng: np.random.Generator, window: int, align: str = "token") -> tuple[int, int]:
        """(shard, offset) of a uniformly random window; align='doc' starts it at a document start,
        'within_doc' keeps it inside one document (uniform over all such windows)."""
        if align == "within_doc":
            per_shard = self.inside_doc_windows(window)
            counts = np.array([float(c[-1]) if len(c) else 0.0 for _, c in per_shard])
            shard = int(rng.choice(len(counts), p=counts / counts.sum())) if len(counts) > 1 else 0
            starts, cum = per_shard[shard]
            u = int(rng.integers(0, cum[-1]))
            doc = int(np.searchsorted(cum, u, side="right"))
            return shard, int(starts[doc]) + u - (int(cum[doc - 1]) if doc else 0)
        if align == "doc":
            starts = self.doc_starts(window)
            counts = np.array([len(s) for s in starts], dtype=np.float64)
            shard = int(rng.choice(len(counts), p=counts / counts.sum())) if len(counts) > 1 else 0
            return shard, int(starts[shard][rng.integers(0, counts[shard])])
        spans = np.array([max(a.size - window + 1, 0) for a in self.arrays], dtype=np.float64)
        shard = int(rng.choice(len(spans), p=spans / spans.sum())) if len(spans) > 1 else 0
        return shard, int(rng.integers(0, spans[shard]))

    def read(self, shard: int, offset: int, window: int) -> np.ndarray:
        return np.asarray(self.arrays[shard][offset:offset + window], dtype=np.int64)


class MixtureSampler:
    """Global batch at `step` = f(seed, step, phase mixture); rank r reads rows [r·B/W, (r+1)·B/W)."""

    def __init__(self, sources: dict[str, TokenSource], mix: dict[str, dict[str, float]], seed: int, seq_len: int,
                 align: str = "token") -> None:
        self.sources, self.seed, self.window, self.align = sources, int(seed), seq_len + 1, align
        self.mix = {}
        for phase, weights in mix.items():
            names = sorted(n for n, w in weights.items() if w > 0)  # order-free: YAML may sort keys
            w = np.array([weights[n] for n in names], dtype=np.float64)
            self.mix[phase] = (names, w / w.sum())
        for name in {n for names, _ in self.mix.values() for n in names}:
            sources[name].check(self.window, align)

    def phase_mix(self, phase: str):
        return self.mix.get(phase) or self.mix["stable"]

    def batch(self, step: int, phase: str, batch_size: int, rank: int = 0, world: int = 1) -> np.ndarray:
        names, probs = self.phase_mix(phase)
        rng = np.random.default_rng([self.seed, int(step), 0x5EED])
        picks = rng.choice(len(names), size=batch_size, p=probs)
        draws = [(names[i],) + self.sources[names[i]].draw(rng, self.window, self.align) for i in picks]
        per = batch_size // world
        rows = draws[rank * per:(rank + 1) * per]
        return np.stack([self.sources[n].read(s, o, self.window) for n, s, o in rows])


class Prefetcher:
    """Computes `make(step)` for steps [start, stop) one or two ahead in a background thread.

    Batches are pure functions of the step, so drawing them early changes nothing but the wait;
    `get(step)` hands them out in order (or computes one directly if asked out of order)."""

    def __init__(self, make, start: int, stop: int, depth: int = 2) -> None:
        import queue
        import threading

        self.make, self.next = make, start
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._work, args=(start, stop), daemon=True, name="slmkit-prefetch")
        self.thread.start()

    def _work(self, start: int, stop: int) -> None:
        import queue

        for step in range(start, stop):
            try:
                item = (step, self.make(step), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the training thread, raised there
                item = (step, None, exc)
            while not self.closed.is_set():
                try:
                    self.queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self.closed.is_set() or item[2] is not None:
                return

    def get(self, step: int):
        if step != self.next or self.closed.is_set():
            return self.make(step)
        got, value, exc = self.queue.get()
        self.next = step + 1
        if exc is not None:
            raise exc
        if got != step:  # cannot happen while steps are asked in order; stay correct anyway
            return self.make(step)
        return value

    def close(self) -> None:
        self.closed.set()
        self.thread.join(timeout=5)


# ---------------------------------------------------------------- config sources -> token sources

def source_key(spec: dict, tokenizer_dir: str | Path, base: Path | None) -> str:
    """Cache key of an auto-prepared source: its spec, the files it expands to, and the tokenizer."""
    files: list[str] = []
    if spec.get("type") in ("jsonl", "text"):
        for p in spec.get("paths") or [spec.get("path")]:
            files += [f"{f}:{f.stat().st_size}" for f in _expand(p, base)]
    blob = json.dumps({"spec": spec, "files": files, "tok": tokenizer_fingerprint(tokenizer_dir)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def open_sources(cfg: dict, tokenizer_dir: str | Path | None, cache_dir: Path, progress: bool = True,
                 is_main: bool = True, barrier=None) -> dict[str, TokenSource]:
    """Open (preparing on first use, rank 0 only) every source the mixture names."""
    base = Path(cfg["_config_dir"]) if cfg.get("_config_dir") else None
    used = {n for w in cfg["data"]["mix"].values() for n, x in w.items() if x > 0}
    out: dict[str, TokenSource] = {}
    plan = []
    for name in sorted(used):
        spec = cfg["data"]["sources"][name]
        if spec["type"] == "prepared":
            path = Path(os.path.expandvars(str(spec.get("path"))))
            if base is not None and not path.is_absolute():
                path = base / path
            plan.append((name, path, spec.get("source", name), None))
            continue
        if tokenizer_dir is None:
            raise SlmkitError(f"data source '{name}': needs a tokenizer (set tokenizer.path)")
        path = cache_dir / f"{name}-{source_key(spec, tokenizer_dir, base)}"
        plan.append((name, path, name, spec))
    if is_main:
        for name, path, _, spec in plan:
            if spec is not None and not (path / MANIFEST).exists():
                prepare({name: spec}, tokenizer_dir, path, base=base, progress=progress)
    if barrier is not None:
        barrier()
    for name, path, src_name, _ in plan:
        manifest = read_manifest(path)
        out[name] = TokenSource(path, src_name, manifest)
    return out


def manifest_summary(sources: dict[str, TokenSource]) -> dict:
    return {n: {"tokens": s.tokens, "shards": len(s.arrays)} for n, s in sources.items()}

