"""`slmkit generate MODEL PROMPT`: streaming generation on any runtime (torch, llama.cpp, onnxruntime, vllm),
through the runtime's engine (slmkit.serve.engine) like every other caller."""

from __future__ import annotations

import sys


def add_commands(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a model (checkpoint, HF folder, GGUF or ONNX folder)")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--backend", default=None)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as a user chat message")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stop", action="append", default=[])
    p.set_defaults(func=_generate)


def _generate(args) -> int:
    from slmkit.serve import SamplingParams, load
    from slmkit.serve.engine import Request

    runtime = load(args.model, backend=args.backend)
    try:
        prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed)
        handle = runtime.engine().submit(Request(runtime.encode_prompt(prompt), params, stop=args.stop))
        try:
            for piece in handle:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            handle.cancel()
            raise
        sys.stdout.write("\n")
    finally:
        runtime.close()
    return 0
