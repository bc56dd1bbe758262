"""`slmkit generate MODEL PROMPT`: streaming generation on any runtime (torch, llama.cpp, onnxruntime, vllm),
through the runtime's engine (slmkit.serve.engine) like every other caller."""

from __future__ import annotations

import sys


def add_commands(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a model (checkpoint, HF folder, GGUF or ONNX folder)")
    p.add_argument("model")
    p.add_argument("prompt")
    p.add_argument("--backend", default=None)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--chat", action="store_true",
                      help="wrap the prompt as a user chat message (the default when the tokenizer has a chat template)")
    mode.add_argument("--raw", action="store_true", help="plain continuation of PROMPT, no chat template")
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
        # an instruct model continues a bare question with its end-of-turn token at once: chat by default
        chat = args.chat or (not args.raw and bool(getattr(runtime.tokenizer, "chat_template", None)))
        prompt = [{"role": "user", "content": args.prompt}] if chat else args.prompt
        params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                                top_p=args.top_p, seed=args.seed)
        handle = runtime.engine().submit(Request(runtime.encode_prompt(prompt), params, stop=args.stop))
        wrote = False
        try:
            for piece in handle:
                sys.stdout.write(piece)
                sys.stdout.flush()
                wrote = wrote or bool(piece)
        except KeyboardInterrupt:
            handle.cancel()
            raise
        sys.stdout.write("\n")
        if not wrote:
            hint = " (--raw: the model ended the continuation at once; an instruct model wants --chat)" if not chat \
                else " (the model ended its reply at once)"
            print(f"generate: 0 tokens generated{hint}", file=sys.stderr)
    finally:
        runtime.close()
    return 0
