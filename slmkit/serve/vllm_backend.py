"""vLLM backend (GPU only): a thin wrapper around `vllm.LLM` for high-throughput serving.

UNTESTED HERE: the development machines have neither a GPU nor vllm, so this module has never been run;
it follows vLLM's documented offline API (LLM, SamplingParams, TokensPrompt, prompt_logprobs).
slmkit checkpoints are first converted to a plain HF Llama folder (µP folded, exact), which vLLM loads.
vLLM does not return full-vocabulary logits, so `logits()` (parity gates) is not available; `score`
and `loglikelihood` use prompt log-probabilities instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from slmkit.errors import SlmkitError
from slmkit.serve.base import Runtime, SamplingParams


def _import_vllm():
    try:
        import vllm
    except ImportError:
        raise SlmkitError("backend 'vllm' needs the vllm package and an NVIDIA GPU (pip install 'slmkit[vllm]'); "
                          "use backend='torch' or 'onnxruntime' on CPU") from None
    return vllm


def _hf_folder(path: Path) -> Path:
    """vLLM reads HF folders; convert an slmkit checkpoint once into the cache."""
    from slmkit.model.checkpoint import is_checkpoint, read_meta

    if not is_checkpoint(path):
        return path
    from slmkit.model.hf import export_hf, load_any, tokenizer_dir_of
    from slmkit.paths import cache_dir

    sha = read_meta(path).get("files", {}).get("model.safetensors", {}).get("sha256", "nohash")[:16]
    out = cache_dir() / "vllm" / f"{path.name}-{sha}"
    if not (out / "config.json").exists():
        export_hf(load_any(path), out, tokenizer_dir_of(path))
    return out


class VllmRuntime(Runtime):
    """vllm.LLM behind the slmkit Runtime interface (untested here: no GPU / vllm on the dev machines)."""

    name = "vllm"

    def __init__(self, path: str | Path, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1, **llm_kwargs) -> None:
        vllm = _import_vllm()
        self.path = Path(path)
        if not self.path.exists():
            raise SlmkitError(f"{self.path}: not found")
        folder = _hf_folder(self.path)
        kwargs = dict(model=str(folder), dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                      tensor_parallel_size=tensor_parallel_size, **llm_kwargs)
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        try:
            self.llm = vllm.LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - vLLM raises many types (CUDA, config, OOM)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise SlmkitError(f"{folder}: vLLM could not load the model ({first[:200]})") from None
        self.tokenizer = self.llm.get_tokenizer()
        self._vllm = vllm

    def _prompt(self, ids: Sequence[int]):
        try:
            from vllm.inputs import TokensPrompt

            return TokensPrompt(prompt_token_ids=list(ids))
        except ImportError:  # older vLLM
            return {"prompt_token_ids": list(ids)}

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        raise SlmkitError("backend 'vllm' does not expose full-vocabulary logits; run parity gates with "
                          "backend='torch' or 'onnxruntime'")

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        sp = self._vllm.SamplingParams(
            max_tokens=params.max_new_tokens, temperature=max(params.temperature, 0.0),
            top_k=params.top_k if params.top_k and params.top_k > 0 else -1, top_p=params.top_p,
            seed=params.seed if params.temperature > 0 else None)
        out = self.llm.generate([self._prompt(prompt_ids)], sp, use_tqdm=False)
        yield from (int(t) for t in out[0].outputs[0].token_ids)

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """Prompt log-probs of ctx+cont in one batched call; greedy means every cont token has rank 1."""
        sp = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0)
        prompts = [self._prompt(list(ctx) + list(cont)) for ctx, cont in requests]
        outs = self.llm.generate(prompts, sp, use_tqdm=False)
        results = []
        for (ctx, cont), out in zip(requests, outs):
            total, greedy = 0.0, True
            for i, tok in enumerate(cont):
                entry = out.prompt_logprobs[len(ctx) + i][int(tok)]
                total += float(entry.logprob)
                greedy &= getattr(entry, "rank", 1) == 1
            results.append((total, greedy))
        return results

    def score(self, context, continuation) -> list[float]:
        ctx = self.encode_prompt(context) if not isinstance(context, (list, tuple)) else list(context)
        cont = self.tokenizer.encode(continuation, add_special_tokens=False) if isinstance(continuation, str) else list(continuation)
        if not cont:
            return []
        sp = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, temperature=0.0)
        out = self.llm.generate([self._prompt(ctx + cont)], sp, use_tqdm=False)[0]
        return [float(out.prompt_logprobs[len(ctx) + i][int(t)].logprob) for i, t in enumerate(cont)]

    def close(self) -> None:
        self.llm = None
