"""The `remote` backend: a Runtime that speaks to any OpenAI-compatible server (vLLM `serve`, llama.cpp's
`llama-server`, llama-cpp-python's server, Ollama, `slmkit serve api`) — scale out to a GPU box or a cluster.

    rt = serve.load("http://gpu-box:8000/v1", backend="remote", model="my-model", tokenizer="HF_DIR")

- `generate(prompt)` streams: chat messages go to /v1/chat/completions (the server applies its chat
  template), text and token ids to /v1/completions. Sampling (temperature 0 = greedy, top_p, top_k where
  the server takes it, seed) and stop strings are the server's.
- `score` / `loglikelihood`: the prompt log-probabilities the server returns — the OpenAI `echo` +
  `logprobs` form with max_tokens 0 (vLLM, llama-cpp-python's server, llama-server builds with echo
  support, slmkit), or vLLM's `prompt_logprobs`; `score_mode` picks one ("auto" tries echo first). Servers
  that return neither (Ollama; llama-server's `n_probs` covers generated tokens only) cannot score; the error
  says so.
- Token-level calls (`generate_ids`, `loglikelihood` on ids, agents) need the served model's tokenizer
  locally (`tokenizer=DIR`): prompts are sent as token ids, and generated text is tokenized back (exact for a
  tokenizer whose encode(decode(ids)) == ids, which byte-level BPE gives for ordinary text).
- `logits` (full-vocabulary rows: the parity gates) is not available over the API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator, Sequence

from slmkit.errors import SlmkitError
from slmkit.serve.base import Runtime, SamplingParams

SCORE_MODES = ("auto", "echo", "prompt_logprobs")


class RemoteRuntime(Runtime):
    name = "remote"

    def __init__(self, path: str, model: str | None = None, api_key: str | None = None, tokenizer=None,
                 timeout: float = 600.0, score_mode: str = "auto", score_batch: int = 16, **_ignored) -> None:
        try:
            import openai
        except ImportError:
            raise SlmkitError("backend 'remote' needs the openai package (pip install 'slmkit[app]')") from None
        url = str(path).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise SlmkitError(f"{path}: the remote backend takes a server URL (http://HOST:PORT/v1)")
        if not url.endswith("/v1"):
            url += "/v1"
        if score_mode not in SCORE_MODES:
            raise SlmkitError(f"remote backend: score_mode '{score_mode}' unknown (known: {', '.join(SCORE_MODES)})")
        self.path, self.url, self.score_mode, self.score_batch = url, url, score_mode, max(1, int(score_batch))
        key = api_key or os.environ.get("SLMKIT_API_KEY") or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self._openai = openai
        self.client = openai.OpenAI(base_url=url, api_key=key, timeout=timeout, max_retries=2)
        try:
            cards = list(self.client.models.list().data)
        except openai.APIConnectionError as exc:
            raise SlmkitError(f"{url}: no OpenAI-compatible server answers there ({exc})") from None
        except openai.APIStatusError as exc:
            raise SlmkitError(f"{url}/models: {exc.status_code} {_message(exc)}") from None
        names = [c.id for c in cards]
        if model is None:
            if not names:
                raise SlmkitError(f"{url}: the server lists no models; pass model=NAME")
            model = names[0]
        elif names and model not in names:
            raise SlmkitError(f"{url}: model '{model}' is not served (served: {', '.join(names)})")
        self.model = model
        card = next((c for c in cards if c.id == model), None)
        extra = (getattr(card, "model_extra", None) or {}) if card is not None else {}
        self.n_ctx = extra.get("max_model_len") or extra.get("context_length") or None
        self.tokenizer = None
        if tokenizer is not None:
            if isinstance(tokenizer, (str, Path)):
                from slmkit.model.tokenizer import load_tokenizer

                tokenizer = load_tokenizer(tokenizer)
            self.tokenizer = tokenizer

    # ---- generation ------------------------------------------------------------------------------
    def _sampling(self, params: SamplingParams, stop: Sequence[str]) -> dict:
        body: dict = {"max_tokens": int(params.max_new_tokens), "temperature": float(params.temperature or 0.0),
                      "top_p": float(params.top_p if params.top_p is not None else 1.0), "seed": int(params.seed)}
        stops = [s for s in list(stop) + list(params.stop or []) if s]
        if stops:
            body["stop"] = stops
        if params.top_k:
            body["extra_body"] = {"top_k": int(params.top_k)}  # vLLM / llama.cpp / slmkit; OpenAI itself has none
        return body

    def _stream(self, prompt, params: SamplingParams, stop: Sequence[str]) -> Iterator[tuple[str, str | None]]:
        """(text piece, finish_reason or None) as the server streams them."""
        openai = self._openai
        body = self._sampling(params, stop)
        try:
            if isinstance(prompt, (list, tuple)) and prompt and isinstance(prompt[0], dict):
                stream = self.client.chat.completions.create(model=self.model, messages=list(prompt), stream=True,
                                                             **body)
                for chunk in stream:
                    for choice in chunk.choices:
                        yield choice.delta.content or "", choice.finish_reason
            else:
                if isinstance(prompt, (list, tuple)):
                    prompt = [int(t) for t in prompt]
                stream = self.client.completions.create(model=self.model, prompt=prompt, stream=True, **body)
                for chunk in stream:
                    for choice in chunk.choices:
                        yield choice.text or "", choice.finish_reason
        except openai.APIConnectionError as exc:
            raise SlmkitError(f"{self.url}: connection failed ({exc})") from None
        except openai.APIStatusError as exc:
            raise SlmkitError(f"{self.url}: {exc.status_code} {_message(exc)}") from None

    def generate(self, prompt, params: SamplingParams | None = None, stop: Sequence[str] = ()) -> Iterator[str]:
        """Stream text pieces: the server generates, samples and applies stop strings."""
        for piece, _finish in self._stream(prompt, params or SamplingParams(), stop):
            if piece:
                yield piece

    def generate_ids(self, prompt_ids: Sequence[int], params: SamplingParams) -> Iterator[int]:
        """Token ids of the server's continuation of `prompt_ids`, tokenized back with the local tokenizer
        (ids are held until later text cannot change them)."""
        tok = self._need_tokenizer("generate_ids")
        text, sent = "", 0
        for piece, _finish in self._stream([int(t) for t in prompt_ids], params, ()):
            if not piece:
                continue
            text += piece
            ids = tok.encode(text, add_special_tokens=False)
            stable = len(ids) - 1  # the last token may still merge with what comes next
            for tid in ids[sent:stable]:
                yield int(tid)
            sent = max(sent, stable)
        ids = tok.encode(text, add_special_tokens=False) if text else []
        for tid in ids[sent:]:
            yield int(tid)

    # ---- scoring ---------------------------------------------------------------------------------
    def logits(self, token_ids: Sequence[int]) -> "object":
        raise SlmkitError(f"{self.url}: an OpenAI-compatible server does not return full logits rows; "
                          "use score / loglikelihood (prompt log-probabilities) instead")

    def prompt_logprobs(self, prompt) -> list[tuple[str, int | None, float | None, bool]]:
        """(token text, text offset, log p(token | tokens before it), token is the most likely one) for every
        prompt token (the first has no log-probability), as the server scores them."""
        return self._prompt_logprobs_many([prompt])[0]

    def _prompt_logprobs_many(self, prompts: list) -> list[list[tuple[str, int | None, float | None, bool]]]:
        openai = self._openai
        modes = ("echo", "prompt_logprobs") if self.score_mode == "auto" else (self.score_mode,)
        errors = []
        for mode in modes:
            try:
                out = self._score_call(prompts, mode)
            except openai.APIConnectionError as exc:
                raise SlmkitError(f"{self.url}: connection failed ({exc})") from None
            except (openai.BadRequestError, openai.UnprocessableEntityError, openai.NotFoundError) as exc:
                errors.append(f"{mode}: {exc.status_code} {_message(exc)}")
                continue
            except openai.APIStatusError as exc:
                raise SlmkitError(f"{self.url}: {exc.status_code} {_message(exc)}") from None
            if out is not None:
                if self.score_mode == "auto":
                    self.score_mode = mode  # the server's way, for every later call
                return out
            errors.append(f"{mode}: the server returned no prompt log-probabilities")
        raise SlmkitError(f"{self.url}: this server cannot score prompts ({'; '.join(errors)}); scoring needs "
                          "echo + logprobs (OpenAI legacy, vLLM, llama-cpp-python, slmkit) or vLLM's prompt_logprobs")

    def _score_call(self, prompts: list, mode: str):
        # max_tokens 1, as lm-eval's API models ask (some servers refuse 0); the generated token is dropped below
        if mode == "echo":
            resp = self.client.completions.create(model=self.model, prompt=prompts, max_tokens=1, echo=True,
                                                  logprobs=1, temperature=0.0)
        else:
            resp = self.client.completions.create(model=self.model, prompt=prompts, max_tokens=1, temperature=0.0,
                                                  extra_body={"prompt_logprobs": 1})
        choices = sorted(resp.choices, key=lambda c: c.index)
        if len(choices) != len(prompts):
            return None
        out = []
        for prompt, choice in zip(prompts, choices):
            rows = _echo_rows(choice) if mode == "echo" else _vllm_rows(choice)
            if rows is None:
                return None
            if isinstance(prompt, str):  # the prompt's tokens are those starting inside its text
                rows = [r for r in rows if r[1] is None or r[1] < len(prompt)] if mode == "echo" else rows
            else:
                rows = rows[: len(prompt)]
            out.append(rows)
        return out

    def score(self, context, continuation) -> list[float]:
        """Per-token log-probabilities of `continuation` given `context`. Text: the server tokenizes
        context + continuation together and the continuation's tokens are those starting at or after the
        context's end (lm-eval's API models do the same); ids: exactly those tokens."""
        if isinstance(context, str) and isinstance(continuation, str):
            rows = self.prompt_logprobs(context + continuation)
            return [lp for _t, off, lp, _g in rows if off is not None and off >= len(context) and lp is not None]
        ctx = list(context) if not isinstance(context, str) else self._need_tokenizer("score").encode(
            context, add_special_tokens=False)
        cont = list(continuation) if not isinstance(continuation, str) else self._need_tokenizer("score").encode(
            continuation, add_special_tokens=False)
        rows = self._ids_rows([(ctx, cont)])[0]
        return [lp for _t, _o, lp, _g in rows[len(ctx):]]

    def loglikelihood(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """(sum log p(continuation | context), continuation is greedy) per (context ids, continuation ids)."""
        out: list[tuple[float, bool]] = []
        for start in range(0, len(requests), self.score_batch):
            batch = [(list(c), list(x)) for c, x in requests[start:start + self.score_batch]]
            for (ctx, cont), rows in zip(batch, self._ids_rows(batch)):
                tail = rows[len(ctx):]
                if not cont:
                    out.append((0.0, True))
                    continue
                if len(tail) != len(cont) or any(lp is None for _t, _o, lp, _g in tail):
                    raise SlmkitError(f"{self.url}: the server scored {len(rows)} tokens for a "
                                      f"{len(ctx) + len(cont)}-token prompt (it must not re-tokenize token ids)")
                out.append((float(sum(lp for _t, _o, lp, _g in tail)), all(g for _t, _o, _l, g in tail)))
        return out

    def _ids_rows(self, pairs: list[tuple[list[int], list[int]]]):
        prompts = []
        for ctx, cont in pairs:
            ids = [int(t) for t in ctx + cont]
            if not ctx:
                ids = [self.start_id()] + ids
            prompts.append(ids)
        rows = self._prompt_logprobs_many(prompts)
        return [r[1:] if not ctx else r for r, (ctx, _c) in zip(rows, pairs)]

    def start_id(self) -> int:
        self._need_tokenizer("an empty context")
        return super().start_id()

    def _need_tokenizer(self, what: str):
        if self.tokenizer is None:
            raise SlmkitError(f"remote backend: {what} works on token ids and needs the served model's tokenizer "
                              "locally (tokenizer=DIR)")
        return self.tokenizer


def _message(exc) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and err.get("message"):
            return str(err["message"])
        if isinstance(err, str):
            return err
    return str(exc)


def _echo_rows(choice):
    """Rows from an OpenAI legacy logprobs object of an echoed prompt (max_tokens 0)."""
    lp = choice.logprobs
    if lp is None or not lp.tokens:
        return None
    tops = lp.top_logprobs or [None] * len(lp.tokens)
    offsets = lp.text_offset or [None] * len(lp.tokens)
    rows = []
    for token, off, value, top in zip(lp.tokens, offsets, lp.token_logprobs, tops):
        greedy = value is not None and (not top or value >= max(top.values()) - 1e-6)
        rows.append((token, off, value, greedy))
    return rows


def _vllm_rows(choice):
    """Rows from vLLM's `prompt_logprobs`: per position None or {token_id: {logprob, rank, decoded_token}}."""
    extra = getattr(choice, "model_extra", None) or {}
    plp = extra.get("prompt_logprobs")
    if not plp:
        return None
    rows, offset = [], 0
    for entry in plp:
        if entry is None:
            rows.append(("", 0, None, True))
            continue
        # prompt_logprobs=1 lists the top-1 token (rank 1) and, when it differs, the prompt's own (rank > 1)
        own = max(entry.values(), key=lambda v: v.get("rank") or 1)
        token = own.get("decoded_token") or ""
        rows.append((token, offset, float(own["logprob"]), own.get("rank") == 1))
        offset += len(token)
    return rows
