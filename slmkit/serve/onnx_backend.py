"""ONNX Runtime backend for folders written by `slmkit export onnx` (or any optimum-style decoder).

The graph takes input_ids / attention_mask / position_ids / past_key_values.N.{key,value} and returns
logits + present.N.{key,value}; decode feeds the presents back, and loglikelihood scores a shared
context once and reuses its KV for every continuation. No torch import: this backend stays light.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.serve.base import Runtime, SamplingParams, group_by_context, sample_token, score_rows

REQUIRED_INPUTS = ("input_ids", "attention_mask")


class OnnxRuntime(Runtime):
    """ONNX Runtime (CPU) decoder with KV cache; `threads` sets intra-op threads (None: ORT default)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None, batch_size: int = 16) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise SlmkitError(f"backend 'onnxruntime' needs the onnxruntime package ({exc.name}); "
                              f"install slmkit[serve]") from None
        path = Path(path)
        folder, model_file = (path.parent, path) if path.suffix == ".onnx" else (path, path / "model.onnx")
        if not model_file.exists():
            raise SlmkitError(f"{model_file}: missing (not an ONNX export folder)")
        self.path, self.batch_size = folder, max(1, int(batch_size))
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # noqa: BLE001 - ORT raises several types for bad files
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SlmkitError(f"{model_file}: cannot load ONNX model, file truncated or corrupt? ({first[:200]})") from None
        self._read_signature(model_file)
        self.max_seq_len = self._config_int(folder, "max_seq_len", "max_position_embeddings")
        self.config_eos = self._config_int(folder, "eos_token_id", "eos_token_id", positive=False)
        self.tokenizer = None
        if (folder / "tokenizer.json").exists() or (folder / "tokenizer.json.gz").exists():
            from slmkit.model.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(folder)

    # ---- graph plumbing ---------------------------------------------------------------------------
    def _read_signature(self, model_file: Path) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        missing = [n for n in REQUIRED_INPUTS if n not in inputs]
        if missing:
            raise SlmkitError(f"{model_file}: input '{missing[0]}' missing; not a causal-LM decoder graph")
        self.n_layers = sum(1 for n in inputs if n.startswith("past_key_values.") and n.endswith(".key"))
        if self.n_layers == 0:
            raise SlmkitError(f"{model_file}: no past_key_values.N.key inputs; export a decoder with KV cache")
        shape = inputs["past_key_values.0.key"].shape
        if len(shape) != 4 or not isinstance(shape[1], int) or not isinstance(shape[3], int):
            raise SlmkitError(f"{model_file}: past_key_values.0.key has shape {shape}; expected [batch, kv_heads, seq, head_dim]")
        self.n_kv_heads, self.head_dim = shape[1], shape[3]
        self.has_position_ids = "position_ids" in inputs
        self.output_names = [o.name for o in self.session.get_outputs()]
        want = ["logits"] + [f"present.{i}.{k}" for i in range(self.n_layers) for k in ("key", "value")]
        absent = [n for n in want if n not in self.output_names]
        if absent:
            raise SlmkitError(f"{model_file}: output '{absent[0]}' missing; not a KV-cache decoder graph")
        self.output_names = want

    @staticmethod
    def _config_int(folder: Path, meta_key: str, hf_key: str, positive: bool = True) -> int | None:
        """An integer from slmkit_onnx.json, else from config.json (None when neither has it)."""
        for name, key in (("slmkit_onnx.json", meta_key), ("config.json", hf_key)):
            try:
                value = json.loads((folder / name).read_text(encoding="utf-8")).get(key)
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(value, list) and value:
                value = value[0]
            if isinstance(value, int) and not isinstance(value, bool) and (value > 0 or not positive and value >= 0):
                return value
        return None

    @property
    def eos_ids(self) -> set[int]:
        ids = super().eos_ids if self.tokenizer is not None else set()
        if self.config_eos is not None:
            ids.add(self.config_eos)
        return ids

    def empty_past(self, batch: int = 1) -> list[np.ndarray]:
        z = np.zeros((batch, self.n_kv_heads, 0, self.head_dim), dtype=np.float32)
        return [z] * (2 * self.n_layers)

    def run(self, ids: np.ndarray, past: list[np.ndarray] | None = None,
            attention_mask: np.ndarray | None = None, position_ids: np.ndarray | None = None):
        """One graph call on [B, T] ids after `past` (flat [k0, v0, ...]); returns (logits [B,T,V], present)."""
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        B, T = ids.shape
        past = past if past is not None else self.empty_past(B)
        P = past[0].shape[2]
        feed = {"input_ids": ids,
                "attention_mask": np.ones((B, P + T), np.int64) if attention_mask is None else attention_mask.astype(np.int64)}
        if self.has_position_ids:
            feed["position_ids"] = (np.broadcast_to(np.arange(P, P + T, dtype=np.int64), (B, T)).copy()
                                    if position_ids is None else position_ids.astype(np.int64))
        for i in range(self.n_layers):
            feed[f"past_key_values.{i}.key"] = past[2 * i]
            feed[f"past_key_values.{i}.value"] = past[2 * i + 1]
        out = self.session.run(self.output_names, feed)
        return out[0], out[1:]

    def forward(self, token_ids: Sequence[int], past: list[np.ndarray] | None = None):
        """Batch-1 convenience: logits [1, T, V] and the new past."""
        return self.run(np.asarray([list(token_ids)], dtype=np.int64), past)

    # ---- Runtime interface --------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        if len(token_ids) == 0:
            raise SlmkitError(f"{self.path}: logits() needs at least one token id")
        return np.asarray(self.forward(token_ids)[0][0], dtype=np.float32)

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        ids = [int(t) for t in prompt_ids] or [self.start_id()]
        budget = params.max_new_tokens
        if self.max_seq_len:
            budget = min(budget, self.max_seq_len - len(ids))
        if budget <= 0:
            return
        rng = np.random.default_rng(params.seed)
        eos = self.eos_ids
        logits, past = self.forward(ids)
        for i in range(budget):
            nxt = sample_token(logits[0, -1], params, rng)
            yield nxt
            if nxt in eos or i + 1 == budget:
                return
            logits, past = self.forward([nxt], past)

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """Each distinct context runs once; its continuations run batched on top of its KV."""
        results, groups = group_by_context(requests, self.start_id())
        for ctx, idxs in groups.items():
            logits, past = self.forward(ctx)
            last = logits[0, -1:]
            for start in range(0, len(idxs), self.batch_size):
                chunk = idxs[start:start + self.batch_size]
                conts = [[int(t) for t in requests[i][1]] for i in chunk]
                rows = self._continuation_logits(past, len(ctx), conts, last)
                for i, cont, lg in zip(chunk, conts, rows):
                    results[i] = score_rows(lg, cont)
        return results  # type: ignore[return-value]

    def _continuation_logits(self, past, ctx_len: int, conts: list[list[int]], last: np.ndarray) -> list[np.ndarray]:
        """Logits predicting each continuation: the context's last row, then rows for cont[:-1] (right-padded)."""
        width = max(len(c) for c in conts) - 1
        if width == 0:
            return [last for _ in conts]
        B = len(conts)
        ids = np.zeros((B, width), np.int64)
        for b, c in enumerate(conts):
            ids[b, :len(c) - 1] = c[:-1]  # right padding only affects the padded rows (causal)
        batch_past = [np.ascontiguousarray(np.broadcast_to(p, (B,) + p.shape[1:])) for p in past]
        out, _ = self.run(ids, batch_past)
        return [np.concatenate([last, out[b, :len(c) - 1]], 0) for b, c in enumerate(conts)]

    def close(self) -> None:
        self.session = None
