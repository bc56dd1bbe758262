"""`slmkit generate MODEL PROMPT`: streaming generation on any runtime (torch, llama.cpp, onnxruntime, vllm)."""

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

    runtime = load(args.model, backend=args.backend)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                            top_p=args.top_p, seed=args.seed)
    for piece in runtime.generate(prompt, params, stop=args.stop):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    runtime.close()
    return 0
