"""`slmkit serve api`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) over one GenerationService.

Routes: GET /health (503 while the model loads, then 200), GET /v1/models, POST /v1/completions,
POST /v1/chat/completions (the tokenizer's chat template). `stream: true` answers Server-Sent Events,
`data: {chunk}\\n\\n` per piece and `data: [DONE]` at the end; `stream_options.include_usage` adds a usage
chunk. Every error is OpenAI-shaped, `{"error": {"message", "type", "param", "code"}}`, with its status:
400 bad JSON / bad or unknown fields / context too long, 401 bad key, 403 a remote client when the server
has no key, 404 unknown model or route, 413 body too large, 503 loading or queue full. A client that
disconnects cancels its generation (checked every token), which frees its slot for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
import json
import os
import secrets
import sys
import threading
import time
import uuid
from typing import Any, AsyncIterator, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from slmkit.app.generation import GenerationService, Handle, Job, QueueFull, Result, TokenLogprob, context_length
from slmkit.app.openai_schema import APIError, ChatRequest, CompletionRequest, validation_error
from slmkit.errors import SlmkitError
from slmkit.serve.base import SamplingParams

MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_TOKENS = 256  # chat completions when the runtime does not say how long its context is
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _error_response(err: APIError) -> JSONResponse:
    headers = {"Retry-After": "1"} if err.status == 503 else None
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


class OpenAIServer:
    """The routes, bound to one service and one served model name."""

    def __init__(self, service: GenerationService, model_name: str, api_key: str | None = None,
                 local_only: bool | None = None) -> None:
        self.service, self.model_name, self.api_key = service, model_name, api_key
        self.local_only = (api_key is None) if local_only is None else local_only
        self.created = int(time.time())

    # ---- request guards ----------------------------------------------------------------------------
    def check_client(self, request: Request, need_key: bool = True) -> None:
        if self.api_key is not None:
            if not need_key:
                return
            auth = request.headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), self.api_key.encode()):
                raise APIError(401, "Incorrect API key provided." if given else
                               "You didn't provide an API key (Authorization: Bearer KEY).", None, "invalid_api_key")
        elif self.local_only and not is_loopback(request.client.host if request.client else None):
            raise APIError(403, "this server has no API key, so it only serves clients on this machine", None,
                           "local_only")

    def check_ready(self) -> None:
        if not self.service.ready.is_set():
            raise APIError(503, "the model is still loading; retry when /health answers 200", None, "model_loading")
        if self.service.load_error is not None:
            raise APIError(500, f"the model failed to load: {self.service.load_error}", None, "model_load_failed")

    async def parse(self, request: Request, schema):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is {length} bytes; the limit is {MAX_BODY_BYTES}", None,
                           "body_too_large")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise APIError(413, f"the request body is {len(raw)} bytes; the limit is {MAX_BODY_BYTES}", None,
                           "body_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise APIError(400, f"We could not parse the JSON body of your request ({exc}).", None,
                           "invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "the request body must be a JSON object", None, "invalid_json")
        try:
            body = schema.model_validate(data)
        except ValidationError as exc:
            raise validation_error(exc) from None
        if body.model != self.model_name:
            raise APIError(404, f"The model `{body.model}` does not exist (this server has `{self.model_name}`).",
                           "model", "model_not_found")
        return body

    # ---- building jobs ------------------------------------------------------------------------------
    def _budget(self, n_prompt: int, asked: int | None, what: str) -> int:
        ctx = context_length(self.service.runtime)
        if ctx is None:
            return DEFAULT_MAX_TOKENS if asked is None else asked
        if asked is None:
            if n_prompt >= ctx:
                raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, your {what} "
                               f"resulted in {n_prompt} tokens.", "messages" if what == "messages" else "prompt",
                               "context_length_exceeded")
            return ctx - n_prompt
        if n_prompt + asked > ctx:
            raise APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                           f"{n_prompt + asked} tokens ({n_prompt} in the {what}, {asked} in the completion). "
                           f"Please reduce the length of the {what} or completion.",
                           "messages" if what == "messages" else "prompt", "context_length_exceeded")
        return asked

    def _params(self, body, budget: int, choice: int, seed: int) -> SamplingParams:
        temperature = 1.0 if body.temperature is None else float(body.temperature)
        return SamplingParams(max_new_tokens=budget, temperature=temperature, top_k=int(body.top_k or 0),
                              top_p=1.0 if body.top_p is None else float(body.top_p), seed=seed + choice,
                              stop=body.stop_list())

    def _submit(self, jobs: list[Job]) -> list[Handle]:
        handles: list[Handle] = []
        try:
            for job in jobs:
                handles.append(self.service.submit(job))
        except QueueFull as exc:
            for h in handles:
                h.cancel()
            raise APIError(503, f"The server is busy: {exc}. Retry later.", None, "queue_full") from None
        return handles

    def _prompt_ids(self, prompt) -> list[int]:
        runtime = self.service.runtime
        try:
            ids = runtime.encode_prompt(prompt)
        except SlmkitError as exc:
            raise APIError(400, str(exc), "messages" if isinstance(prompt, list) else "prompt") from None
        except Exception as exc:  # noqa: BLE001 - a template that rejects these messages
            raise APIError(400, f"the chat template could not render these messages: {exc}", "messages") from None
        if not ids:
            bos = getattr(runtime.tokenizer, "bos_token_id", None)
            if bos is None:
                raise APIError(400, "the prompt is empty and the tokenizer has no BOS token", "prompt", "invalid_value")
            ids = [int(bos)]
        vocab = getattr(runtime, "n_vocab", None) or getattr(getattr(runtime, "cfg", None), "vocab_size", None) \
            or len(runtime.tokenizer)
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise APIError(400, f"token id {bad[0]} is outside the vocabulary (0..{vocab - 1})", "prompt",
                           "invalid_value")
        return ids

    # ---- endpoints ------------------------------------------------------------------------------------
    def models(self) -> dict:
        return {"object": "list", "data": [self.model_card()]}

    def model_card(self) -> dict:
        runtime = self.service.runtime
        card = {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "slmkit"}
        if runtime is not None:
            card["backend"] = runtime.name
            card["max_model_len"] = context_length(runtime)
        return card

    async def chat(self, request: Request) -> Response:
        self.check_client(request)
        self.check_ready()
        body: ChatRequest = await self.parse(request, ChatRequest)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        ids = self._prompt_ids(messages)
        budget = self._budget(len(ids), body.budget(), "messages")
        seed = body.seed if body.seed is not None else secrets.randbits(31)
        top = (body.top_logprobs or 0) if body.logprobs else None
        jobs = [Job(ids, self._params(body, budget, i, seed), logprobs=top) for i in range(body.n)]
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        handles = self._submit(jobs)
        if body.stream:
            return StreamingResponse(self._chat_stream(request, handles, rid, created, body.include_usage, len(ids)),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        results = await self._gather(request, handles)
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text},
                    "logprobs": _chat_logprobs(r.logprobs) if body.logprobs else None,
                    "finish_reason": _finish(r)} for i, r in enumerate(results)]
        return JSONResponse({"id": rid, "object": "chat.completion", "created": created, "model": self.model_name,
                             "choices": choices, "usage": _usage(len(ids), results)})

    async def completions(self, request: Request) -> Response:
        self.check_client(request)
        self.check_ready()
        body: CompletionRequest = await self.parse(request, CompletionRequest)
        prompts = [self._prompt_ids(p) for p in body.prompts()]
        seed = body.seed if body.seed is not None else secrets.randbits(31)
        jobs = []
        for ids in prompts:
            budget = self._budget(len(ids), body.budget(), "prompt")
            for i in range(body.n):
                jobs.append(Job(ids, self._params(body, budget, i, seed), logprobs=body.logprobs,
                                prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None))
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        handles = self._submit(jobs)
        n_prompt = sum(len(p) for p in prompts)
        if body.stream:
            return StreamingResponse(self._completion_stream(request, handles, rid, created, body.include_usage,
                                                             n_prompt),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        results = await self._gather(request, handles)
        tok = self.service.runtime.tokenizer
        choices = []
        for i, r in enumerate(results):
            prompt_ids = jobs[i].prompt_ids
            prefix = tok.decode(prompt_ids, skip_special_tokens=False) if body.echo else ""
            logprobs = None
            if body.logprobs is not None:
                logprobs = _legacy_logprobs((r.prompt_logprobs or []) if body.echo else [], r.logprobs or [],
                                            prompt_ids if body.echo else [], tok)
            choices.append({"index": i, "text": prefix + r.text, "logprobs": logprobs, "finish_reason": _finish(r)})
        return JSONResponse({"id": rid, "object": "text_completion", "created": created, "model": self.model_name,
                             "choices": choices, "usage": _usage(n_prompt, results)})

    # ---- waiting and streaming -------------------------------------------------------------------------
    async def _gather(self, request: Request, handles: list[Handle]) -> list[Result]:
        async def one(h: Handle) -> Result:
            async for _ in h.astream(request.is_disconnected):
                pass
            return h.result  # type: ignore[return-value]

        try:
            return list(await asyncio.gather(*(one(h) for h in handles)))
        except SlmkitError as exc:
            raise APIError(400, str(exc)) from None
        finally:
            for h in handles:
                h.cancel()  # a no-op for finished ones; stops the rest when the client left

    async def _pieces(self, request: Request, handles: list[Handle]) -> AsyncIterator[tuple[int, str | None]]:
        """(choice, text piece) in choice order, then (choice, None) when that choice ends."""
        for i, h in enumerate(handles):
            async for piece in h.astream(request.is_disconnected):
                yield i, piece
            yield i, None

    async def _chat_stream(self, request, handles, rid, created, include_usage, n_prompt) -> AsyncIterator[str]:
        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.model_name}
        extra = {"usage": None} if include_usage else {}
        try:
            for i in range(len(handles)):
                yield _sse({**head, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}], **extra})
            async for i, piece in self._pieces(request, handles):
                if piece is None:
                    delta, reason = {}, _finish(handles[i].result)
                else:
                    delta, reason = {"content": piece}, None
                yield _sse({**head, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                                 "finish_reason": reason}], **extra})
            if include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(n_prompt, [h.result for h in handles])})
        except Exception as exc:  # noqa: BLE001 - the status line is gone: report inside the stream
            yield _sse(_stream_error(exc))
        finally:
            for h in handles:
                h.cancel()
        yield "data: [DONE]\n\n"

    async def _completion_stream(self, request, handles, rid, created, include_usage, n_prompt) -> AsyncIterator[str]:
        head = {"id": rid, "object": "text_completion", "created": created, "model": self.model_name}
        extra = {"usage": None} if include_usage else {}
        try:
            async for i, piece in self._pieces(request, handles):
                text, reason = (piece, None) if piece is not None else ("", _finish(handles[i].result))
                yield _sse({**head, "choices": [{"index": i, "text": text, "logprobs": None,
                                                 "finish_reason": reason}], **extra})
            if include_usage:
                yield _sse({**head, "choices": [], "usage": _usage(n_prompt, [h.result for h in handles])})
        except Exception as exc:  # noqa: BLE001
            yield _sse(_stream_error(exc))
        finally:
            for h in handles:
                h.cancel()
        yield "data: [DONE]\n\n"


def _stream_error(exc: Exception) -> dict:
    if isinstance(exc, APIError):
        return exc.body()
    status = 400 if isinstance(exc, SlmkitError) else 500
    return APIError(status, str(exc)).body()


def _finish(result: Result | None) -> str:
    if result is None or result.finish_reason == "cancelled":
        return "stop"
    return result.finish_reason


def _usage(n_prompt: int, results: list[Result | None]) -> dict:
    completion = sum(r.completion_tokens for r in results if r is not None)
    return {"prompt_tokens": n_prompt, "completion_tokens": completion, "total_tokens": n_prompt + completion}


def _chat_logprobs(items: list[TokenLogprob] | None) -> dict:
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(s, lp) for _, s, lp in t.top]}
                        for t in items or []]}


def _legacy_logprobs(prompt_items: list[TokenLogprob | None], items: list[TokenLogprob], prompt_ids, tok) -> dict:
    """The completions API's logprobs object: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    offset = 0
    for pos, item in enumerate(prompt_items):
        token = item.token if item is not None else tok.decode([int(prompt_ids[pos])])
        tokens.append(token)
        token_logprobs.append(None if item is None else item.logprob)
        tops.append(None if item is None else {s: lp for _, s, lp in item.top})
        offsets.append(offset)
        offset += len(token)
    for item in items:
        tokens.append(item.token)
        token_logprobs.append(item.logprob)
        tops.append({s: lp for _, s, lp in item.top})
        offsets.append(offset)
        offset += len(item.token)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


def create_app(service: GenerationService, model_name: str, api_key: str | None = None,
               local_only: bool | None = None) -> FastAPI:
    """The FastAPI application; closing the service is the caller's job (see `serve_api`)."""
    server = OpenAIServer(service, model_name, api_key, local_only)
    app = FastAPI(title="slmkit OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.openai = server

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return _error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return _error_response(APIError(exc.status_code, message, None, code))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        print(f"error: {request.method} {request.url.path}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return _error_response(APIError(500, f"internal error: {type(exc).__name__}: {exc}"))

    @app.get("/health")
    async def health(request: Request):
        server.check_client(request, need_key=False)  # probes need no key; a keyless server stays local
        if not service.ready.is_set():
            return JSONResponse({"status": "loading"}, status_code=503)
        if service.load_error is not None:
            return JSONResponse({"status": "error", "message": str(service.load_error)}, status_code=500)
        return {"status": "ok", "model": model_name, **service.snapshot()}

    @app.get("/v1/models")
    async def models(request: Request):
        server.check_client(request)
        return server.models()

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str, request: Request):
        server.check_client(request)
        if model_id != model_name:
            raise APIError(404, f"The model `{model_id}` does not exist.", "model", "model_not_found")
        return server.model_card()

    app.add_api_route("/v1/chat/completions", server.chat, methods=["POST"])
    app.add_api_route("/v1/completions", server.completions, methods=["POST"])
    return app


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Run `app` on uvicorn in a background thread; yields its base URL ("http://127.0.0.1:PORT") and stops it
    on exit. port=0 picks a free port."""
    import uvicorn

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="slmkit-uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise SlmkitError(f"the API server did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(10)


def serve_api(model: str, backend: str | None = None, host: str = "127.0.0.1", port: int = 8000,
              api_key: str | None = None, parallel: int = 1, max_queue: int = 16, served_name: str | None = None,
              load_options: dict | None = None, log_level: str = "info") -> int:
    """Load `model` in the background and serve it until Ctrl-C; returns the exit code."""
    import uvicorn

    from slmkit.serve import load

    name = served_name or model_display_name(model)
    if api_key is None and not is_loopback(host):
        print(f"warning: bound to {host} without --api-key: only clients on this machine are served "
              "(pass --api-key KEY to serve others)", file=sys.stderr)
    service = GenerationService(lambda: load(model, backend=backend, **(load_options or {})), parallel, max_queue)
    app = create_app(service, name, api_key)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                            timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)

    def stop_if_load_fails() -> None:
        service.ready.wait()
        if service.load_error is not None:
            server.should_exit = True

    threading.Thread(target=stop_if_load_fails, daemon=True).start()
    print(f"serving '{name}' on http://{host}:{port}/v1 (loading; /health answers 200 when ready)", file=sys.stderr)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: the normal way to stop
        print("stopped", file=sys.stderr)
    finally:
        stopped = service.close()
    code = 0
    if service.load_error is not None:
        print(f"error: {service.load_error}", file=sys.stderr)
        code = 2
    if not stopped:  # a native decode call still runs in the worker: end without running finalizers on it
        sys.stderr.flush()
        os._exit(code)
    return code


def model_display_name(model: str) -> str:
    """The name clients pass as `model`: the artifact's file or folder name."""
    from pathlib import Path

    path = Path(model)
    return path.name or str(model)
