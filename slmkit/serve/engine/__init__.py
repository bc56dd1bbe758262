"""The generation and scoring engine: continuous batching with a prefix cache, one engine under evaluation,
agents, `slmkit generate` and the API server.

    from slmkit.serve import load
    from slmkit.serve.engine import Request
    rt = load("model.gguf")                      # or a checkpoint / HF folder (torch)
    engine = rt.engine(max_batch=32, prefix_cache_mb=512)
    h = engine.submit(Request(ids, SamplingParams(max_new_tokens=64, stop=["\\n\\n"])))
    for piece in h: print(piece, end="")         # text as it is generated
    res = h.result()                             # Result(token_ids, text, finish_reason, ...)
    results = engine.generate_many([Request(...), ...])
    scores = engine.loglikelihood([(context_ids, continuation_ids), ...])
    engine.stats()

API (everything else is internal):
  Runtime.engine(**options) -> Engine      the runtime's shared engine (same options: same engine, so
                                           its prefix cache lives across calls). Options:
      max_batch=32          sequences decoded together (rows)
      max_step_tokens=512   tokens per forward (decode rows + prefill chunks); long prompts are split
      prefix_cache_mb=512   memory for the keys/values of computed prefixes (0: off)
      block_tokens=16       prefix cache granularity
  Engine.submit(request: Request) -> Handle        thread-safe; returns at once
  Engine.generate_many(requests, progress=None) -> list[Result]     blocking, results in order;
                                           progress(index, result) is called as each finishes
  Engine.loglikelihood(pairs, progress=None) -> list[(logprob_sum, is_greedy)]   blocking
  Engine.stats() -> dict                   counters, prefix-cache hit rate, KV memory
  Engine.close()
  Request(prompt_ids, params=SamplingParams(), stop=(), on_token=None)
      params: max_new_tokens, temperature (0 = greedy), top_k, top_p, seed, stop strings;
      on_token(token_id, text_piece) runs on the engine thread per token; returning True stops the request
  Handle: iter(handle) -> text pieces; .result(timeout=None) -> Result; .cancel(); .done(); .id
  Result: token_ids, text, finish_reason ("stop" | "length" | "eos" | "cancelled"), prompt_tokens,
      cached_tokens (prompt tokens served by the prefix cache), queued_s, first_token_s, total_s

Guarantees: greedy output does not depend on what else is in flight, arrival order, batch size or cache
state (fp32 torch and f32 GGUFs: identical text; quantized GGUFs may differ where llama.cpp's multi-row
kernels round differently from its one-row kernel). A caller that resubmits a growing token trajectory
(chat history, an agent episode: each prompt extends the last prompt + its output) gets the keys/values of
what it sent before from the prefix cache, and the same greedy tokens as prefilling it from scratch.
The first token of every continuation is sampled from the same logits either way; sampling draws from
`numpy.random.default_rng(seed)` per request, so a seeded request gives the same tokens in any batch.

Backends: torch (one Transformer.forward per step over a RowCache), llama.cpp (one llama_decode per step
over parallel sequences, one KV stream each), ONNX Runtime (its own loop, one request at a time),
vLLM (passed through to vLLM's own continuous batching).
"""

from slmkit.serve.engine.core import CANCELLED, EOS, LENGTH, STOP, Engine, Handle, Request, Result

__all__ = ["Engine", "Request", "Result", "Handle", "STOP", "LENGTH", "EOS", "CANCELLED"]
