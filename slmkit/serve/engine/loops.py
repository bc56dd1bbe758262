"""Executors for runtimes that keep their own decode loop behind the engine's queue.

SerialExecutor: one request at a time through `runtime.generate_ids` (ONNX Runtime and any runtime without
a step executor); the engine still does stop strings, streaming, callbacks and cancel.
PassthroughExecutor: vLLM is itself a continuous-batching engine, so every waiting request goes to one
`vllm.LLM.generate` call and the engine only post-processes (UNTESTED here: no GPU / vllm).
"""

from __future__ import annotations

from slmkit.serve.sampling import SamplingParams


def runtime_window(runtime) -> int:
    for value in (getattr(runtime, "n_ctx", None), getattr(runtime, "max_seq_len", None),
                  getattr(getattr(runtime, "cfg", None), "max_seq_len", None)):
        if value:
            return int(value)
    return 1 << 30


class SerialExecutor:
    steps = False
    scores = False
    block_tokens = 0
    batch = 1

    def __init__(self, runtime, **_opts) -> None:
        self.runtime = runtime
        self.max_len = runtime_window(runtime)

    def generate(self, seqs, accept) -> None:
        for seq in seqs:
            p = seq.params
            params = SamplingParams(max_new_tokens=seq.budget, temperature=p.temperature, top_k=p.top_k, top_p=p.top_p,
                                    seed=p.seed)
            tokens = self.runtime.generate_ids(seq.prompt, params)
            try:
                for tid in tokens:
                    if not accept(seq, tid):
                        break
            finally:
                close = getattr(tokens, "close", None)
                if close is not None:
                    close()

    def stats(self) -> dict:
        return {"executor": "serial"}

    def reset(self) -> None:
        pass

    def close(self) -> None:
        pass


class PassthroughExecutor(SerialExecutor):
    """All waiting requests in one call to the runtime's own batched engine (vLLM)."""

    def __init__(self, runtime, max_batch: int = 256, **_opts) -> None:
        super().__init__(runtime)
        self.batch = max(int(max_batch), 256)

    def generate(self, seqs, accept) -> None:
        vllm = self.runtime._vllm
        sps = [vllm.SamplingParams(max_tokens=s.budget, temperature=max(s.params.temperature, 0.0),
                                   top_k=s.params.top_k if s.params.top_k and s.params.top_k > 0 else -1,
                                   top_p=s.params.top_p, seed=s.params.seed if s.params.temperature > 0 else None)
               for s in seqs]
        outs = self.runtime.llm.generate([self.runtime._prompt(s.prompt) for s in seqs], sps, use_tqdm=False)
        for seq, out in zip(seqs, outs):
            for tid in out.outputs[0].token_ids:
                if not accept(seq, int(tid)):
                    break

    def stats(self) -> dict:
        return {"executor": "passthrough (vllm)"}
