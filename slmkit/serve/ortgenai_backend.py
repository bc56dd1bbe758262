"""ONNX Runtime GenAI backend: GenAI's own C++ generator loop on a folder with genai_config.json.

Why a second ONNX backend: on SmolLM2-135M GenAI's int8 graph (fused GroupQueryAttention over one shared
KV buffer, fused QKV / gate-up MatMulNBits, 341 nodes against our 1841) decodes faster than our export on
our OnnxRuntime loop at about the same parity (docs/results/onnx-interop.md). Its runtime on *our* graph is
no faster than ours, so the win is GenAI's graph: this backend runs what `slmkit.export.genai.build_genai`
builds (and our own exports, through the genai_config.json the exporter writes).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.serve.base import Runtime, SamplingParams


class OrtGenaiRuntime(Runtime):
    """`threads` overrides the config's intra-op threads (None: the config's / ORT's default)."""

    name = "ort-genai"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        try:
            import onnxruntime_genai as og
        except ImportError as exc:
            raise SlmkitError(f"backend 'ort-genai' needs the onnxruntime-genai package ({exc.name}); "
                              f"install slmkit[export]") from None
        self.og, self.path = og, Path(path)
        config_file = self.path / "genai_config.json"
        if not config_file.exists():
            raise SlmkitError(f"{config_file}: missing (not an ONNX Runtime GenAI folder; `slmkit export onnx` "
                              f"writes one, so does slmkit.export.genai.build_genai)")
        try:
            config = og.Config(str(self.path))
            if threads:
                config.overlay(json.dumps({"model": {"decoder": {"session_options": {
                    "intra_op_num_threads": int(threads), "inter_op_num_threads": 1}}}}))
            self.model = og.Model(config)
        except Exception as exc:  # noqa: BLE001 - GenAI raises RuntimeError for every bad file
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SlmkitError(f"{self.path}: ONNX Runtime GenAI cannot load it ({first[:200]})") from None
        model_cfg = json.loads(config_file.read_text(encoding="utf-8"))["model"]
        self.vocab_size = int(model_cfg["vocab_size"])
        self.max_seq_len = int(model_cfg.get("context_length") or 0) or None
        self.tokenizer = None
        if (self.path / "tokenizer.json").exists():
            from slmkit.model.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(self.path)

    def _generator(self, ids: Sequence[int], max_length: int, min_length: int = 0,
                   params: SamplingParams | None = None):
        search = {"max_length": max_length, "min_length": min_length, "do_sample": False}
        if params is not None and params.temperature and params.temperature > 0:
            search.update(do_sample=True, temperature=float(params.temperature), top_k=int(params.top_k) if params.top_k and params.top_k > 0 else self.vocab_size,
                          top_p=float(params.top_p if params.top_p is not None else 1.0), random_seed=int(params.seed))
        gp = self.og.GeneratorParams(self.model)
        gp.set_search_options(**search)
        gen = self.og.Generator(self.model, gp)
        gen.append_tokens(np.asarray([list(ids)], dtype=np.int32))
        return gen

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        if len(token_ids) == 0:
            raise SlmkitError(f"{self.path}: logits() needs at least one token id")
        return np.asarray(self._generator(token_ids, len(token_ids) + 1).get_output("logits")[0], dtype=np.float32)

    def stream(self, prompt_ids: Sequence[int], max_new_tokens: int, ignore_eos: bool = False,
               params: SamplingParams | None = None) -> Iterator[int]:
        """GenAI's loop; it stops at genai_config.json's EOS ids unless ignore_eos (then min_length holds it)."""
        ids = [int(t) for t in prompt_ids] or [int(getattr(self.tokenizer, "bos_token_id", None) or 0)]
        budget = max_new_tokens if not self.max_seq_len else min(max_new_tokens, self.max_seq_len - len(ids))
        if budget <= 0:
            return
        gen = self._generator(ids, len(ids) + budget, len(ids) + budget if ignore_eos else 0, params)
        for _ in range(budget):
            if gen.is_done():
                return
            gen.generate_next_token()
            yield int(gen.get_next_tokens()[0])

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        return self.stream(prompt_ids, params.max_new_tokens, params=params)

    def close(self) -> None:
        self.model = None
