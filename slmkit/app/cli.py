"""`slmkit serve api MODEL` (OpenAI-compatible server) and `slmkit serve ui [MODEL]` (Gradio chat + agent demo)."""

from __future__ import annotations

import argparse
import os


def add_commands(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="serve a model: OpenAI-compatible API or a local web UI")
    sub = serve.add_subparsers(dest="serve_command", metavar="WHAT")
    serve.set_defaults(func=lambda args: (serve.print_help(), 2)[1])

    api = sub.add_parser("api", help="OpenAI-compatible HTTP API (/v1/chat/completions, /v1/completions, /v1/models)",
                         description="Serve MODEL (GGUF, ONNX folder, slmkit checkpoint or HF folder) over the OpenAI "
                                     "API. Without --api-key only clients on this machine are served.")
    api.add_argument("model")
    _runtime_args(api)
    api.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback only)")
    api.add_argument("--port", type=int, default=8000)
    api.add_argument("--api-key", default=os.environ.get("SLMKIT_API_KEY"),
                     help="require 'Authorization: Bearer KEY' (default: $SLMKIT_API_KEY; none = local clients only)")
    api.add_argument("--parallel", type=int, default=1, help="requests decoding together")
    api.add_argument("--max-queue", type=int, default=16, help="requests that may wait; more get 503")
    api.add_argument("--served-model-name", default=None, help="the `model` clients pass (default: the file name)")
    api.set_defaults(func=_run_api)

    ui = sub.add_parser("ui", help="local web demo: streaming chat, ReAct agent traces, model facts (Gradio)",
                        description="A Gradio app on MODEL (default: the pulled SmolLM2-135M-Instruct q4_k_m GGUF).")
    ui.add_argument("model", nargs="?", default=None)
    _runtime_args(ui)
    ui.add_argument("--host", default="127.0.0.1")
    ui.add_argument("--port", type=int, default=7860)
    ui.add_argument("--corpus", default=None, help="local wiki corpus folder/JSONL for the agent tab's free questions")
    ui.add_argument("--max-queue", type=int, default=16, help="UI events that may wait")
    ui.set_defaults(func=_run_ui)


def _runtime_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default=None, help="torch | llama.cpp | onnxruntime | vllm | remote (default: from the file)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime")
    p.add_argument("--n-ctx", type=int, default=None, help="llama.cpp context length (default min(training, 4096))")


def load_options(model: str, backend: str | None, threads: int | None, n_ctx: int | None) -> dict:
    """Keyword arguments for serve.load: each backend names its thread/context options its own way."""
    from slmkit.serve import canonical, detect

    name = canonical(backend) if backend else detect(model)
    opts: dict = {}
    if name == "llama.cpp":
        if threads:
            opts["n_threads"] = threads
        if n_ctx:
            opts["n_ctx"] = n_ctx
    elif name == "torch" and threads:
        opts["threads"] = threads
    return opts


def _run_api(args: argparse.Namespace) -> int:
    from slmkit.app.api import serve_api

    return serve_api(args.model, backend=args.backend, host=args.host, port=args.port, api_key=args.api_key,
                     parallel=args.parallel, max_queue=args.max_queue, served_name=args.served_model_name,
                     load_options=load_options(args.model, args.backend, args.threads, args.n_ctx))


def _run_ui(args: argparse.Namespace) -> int:
    from slmkit.app.ui import default_model, serve_ui

    model = args.model or str(default_model())
    return serve_ui(model, backend=args.backend, host=args.host, port=args.port, corpus=args.corpus,
                    max_queue=args.max_queue, load_options=load_options(model, args.backend, args.threads, args.n_ctx))
