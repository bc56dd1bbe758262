"""slmkit runtimes as lm-eval models, registered as `slmkit-<backend>` (serve.backends' vocabulary):

  slmkit-torch        native torch model on an HF folder or slmkit checkpoint: scoring and generation on
                      the engine (many contexts per forward, continuations on the context's keys/values,
                      continuous batching, prefix cache)
  slmkit-llama.cpp    a GGUF through llama.cpp in-process (generation on the engine: parallel sequences)
  slmkit-onnxruntime  an ONNX folder through ONNX Runtime
(the names before the vocabulary, slmkit-hf / slmkit-gguf / slmkit-onnx, stay registered as aliases.)
Tokenisation, context/continuation splitting, truncation and stop handling follow lm-eval's `hf`
model (TemplateLM._encode_pair, lm_eval.models.utils), so the same requests give the same scores;
lm-eval's own `hf` and `vllm` stay available as reference backends.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text

from slmkit.errors import SlmkitError
from slmkit.serve.base import SamplingParams

DEFAULT_MAX_GEN_TOKS = 256  # lm-eval hf default
DEFAULT_BATCH = 32  # sequences the engine decodes together
SCORE_STEP_TOKENS = 2048  # tokens per forward (larger matrices: better CPU throughput)


class SlmkitLM(TemplateLM):
    """Shared lm-eval plumbing; subclasses provide `runtime` and `_score(pairs, progress)`; generation goes
    through `_generate` to the runtime's engine."""

    backend = "causal"
    backend_name = "base"
    chunk = 1024  # requests per scoring call (resumability granularity)

    def __init__(self, tokenizer, max_length: int, batch_size: int = DEFAULT_BATCH, path: str | Path | None = None) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self._max_length = int(max_length)
        self.batch_size = max(1, int(batch_size or DEFAULT_BATCH))
        self.path = Path(path) if path else None

    # ---- tokenisation (as lm-eval's hf model) ---------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        bos = getattr(self.tokenizer, "bos_token_id", None)
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name_or_path", "slmkit").replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        kw = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        if add_special_tokens is None:
            bos = self.tokenizer.decode([self.prefix_token_id])
            if bos and string.startswith(bos):
                kw["add_special_tokens"] = False
        return list(self.tokenizer.encode(string, **kw))

    def tok_decode(self, tokens, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history, add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt)

    # ---- lm-eval API ------------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """Scored in context order, in chunks whose results go to lm-eval's request cache as they finish."""
        order = sorted(range(len(requests)), key=lambda i: (requests[i][1], requests[i][2]))
        out: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=f"loglikelihood ({self.backend_name})", disable=disable_tqdm)
        for start in range(0, len(order), self.chunk):
            idx = order[start:start + self.chunk]
            scores = self._score([(requests[i][1], requests[i][2]) for i in idx], bar.update)
            for i, res in zip(idx, scores):
                out[i] = res
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], res)
        bar.close()
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise SlmkitError(f"loglikelihood_rolling (perplexity tasks) is not supported by the {self.backend_name} backend")

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Every request goes to the runtime's engine at once (continuous batching, `batch_size` rows); stop
        strings end a row as lm-eval's hf model does, and the text is cut by lm-eval's own post-processing."""
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        jobs = []
        for i, req in enumerate(requests):
            context, gen_kwargs = req.args
            kwargs = normalize_gen_kwargs(dict(gen_kwargs), DEFAULT_MAX_GEN_TOKS)
            if kwargs.get("do_sample"):
                raise SlmkitError(f"{self.backend_name} backend: sampled generation (do_sample) is not supported; tasks here are greedy")
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
            max_gen = int(kwargs.pop("max_gen_toks"))
            max_ctx = self.max_length - max_gen if max_gen < self.max_length else self.max_length
            ids = self.tok_encode(context)[-max_ctx:]
            jobs.append((i, ids, until, max_gen, context, gen_kwargs))
        jobs.sort(key=lambda j: j[1])  # by tokens: prompts sharing few-shot exemplars adjoin (the prefix cache)
        results: list[str | None] = [None] * len(jobs)
        bar = tqdm(total=len(jobs), desc=f"generate_until ({self.backend_name})", disable=disable_tqdm)

        def finished(k, token_ids):
            job = jobs[k]
            if results[job[0]] is not None:
                return
            text = postprocess_generated_text(self.tok_decode(token_ids[:job[3]]), job[2], None)
            results[job[0]] = text
            self.cache_hook.add_partial("generate_until", (job[4], job[5]), text)
            bar.update(1)

        self._on_generated = finished
        outs = self._generate([j[1] for j in jobs], [j[3] for j in jobs], [j[2] for j in jobs])
        for k, toks in enumerate(outs):
            finished(k, toks)
        bar.close()
        return results  # type: ignore[return-value]

    def _generate(self, prompts: list[list[int]], max_new: list[int], stops: list[list[str]]) -> list[list[int]]:
        """Greedy token ids per prompt (its own budget and stop strings) from the runtime's engine; each is
        handed to lm-eval's cache as soon as it is done (`_on_generated`), so an interrupted run resumes."""
        from slmkit.serve.engine import Request

        reqs = [Request(p, SamplingParams(max_new_tokens=m, stop=list(st))) for p, m, st in zip(prompts, max_new, stops)]
        done = getattr(self, "_on_generated", None)
        results = self.engine().generate_many(reqs, progress=(lambda k, r: done(k, r.token_ids)) if done else None)
        return [r.token_ids for r in results]

    def engine(self):
        """The runtime's engine with this model's batch size."""
        return self.runtime.engine(max_batch=self.batch_size, max_step_tokens=max(SCORE_STEP_TOKENS, self.batch_size))

    # ---- to implement -----------------------------------------------------------------------------
    def _score(self, pairs, progress) -> list[tuple[float, bool]]:
        raise NotImplementedError

    def get_model_info(self) -> dict:
        return {"slmkit_backend": self.backend_name, "model_path": str(self.path) if self.path else None}


@register_model("slmkit-torch", "slmkit-hf")
class TorchLM(SlmkitLM):
    """The native µP torch model (fp32 on CPU) through TorchRuntime: scoring and generation on its engine."""

    backend_name = "torch"

    def __init__(self, pretrained: str, batch_size: int | str = 8, max_length: int | None = None,
                 threads: int | None = None, **kwargs) -> None:
        from slmkit.model.tokenizer import load_tokenizer
        from slmkit.serve.torch_backend import TorchRuntime

        tokenizer = load_tokenizer(pretrained)
        self.runtime = TorchRuntime(pretrained, tokenizer=tokenizer, threads=threads)  # owns the model: no weight copy
        self.model = self.runtime.model
        bs = DEFAULT_BATCH if batch_size in (None, "auto") else int(batch_size)
        super().__init__(tokenizer, int(max_length or self.model.cfg.max_seq_len), bs, pretrained)

    def _score(self, pairs, progress):
        keep = self.max_length + 1  # as lm-eval's hf model: the last max_length+1 tokens of ctx+cont
        pairs = [(list(c)[max(0, len(c) + len(t) - keep):], list(t)) for c, t in pairs]
        return self.engine().loglikelihood(pairs, progress=progress)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        args = simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k == "batch_size"}
        return cls(**args, **extra)


class RuntimeLM(SlmkitLM):
    """Any slmkit.serve runtime: scoring and generation on the runtime's engine (`batch_size` sequences
    together, default 32; 1 = one prompt at a time; ONNX Runtime keeps its own loops behind it)."""

    serve_backend = ""

    def __init__(self, pretrained: str, batch_size: int | str | None = None, max_length: int | None = None, **options) -> None:
        from slmkit import serve

        self.runtime = serve.load(pretrained, backend=self.serve_backend, **options)
        tok = self.runtime.tokenizer
        if tok is None:
            raise SlmkitError(f"{pretrained}: the {self.serve_backend} runtime exposes no tokenizer")
        window = getattr(self.runtime, "n_ctx", None) or getattr(self.runtime, "max_seq_len", None)
        limit = max_length or (window - 1 if window else None) or 2048  # the runtime holds ctx+cont: max_length+1
        bs = DEFAULT_BATCH if batch_size in (None, "auto") else int(batch_size)
        super().__init__(tok, int(limit), bs, pretrained)

    def _score(self, pairs, progress):
        keep = self.max_length + 1  # as lm-eval's hf model: the last max_length+1 tokens of ctx+cont
        pairs = [(list(c)[max(0, len(c) + len(t) - keep):], list(t)) for c, t in pairs]
        return [(float(lp), bool(g)) for lp, g in self.engine().loglikelihood(pairs, progress=progress)]

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        from lm_eval.utils import simple_parse_args_string

        return cls(**simple_parse_args_string(arg_string))

    def get_model_info(self) -> dict:
        return {"slmkit_backend": self.backend_name, "model_path": str(self.path)}


@register_model("slmkit-llama.cpp", "slmkit-gguf")
class LlamaCppLM(RuntimeLM):
    backend_name = serve_backend = "llama.cpp"


@register_model("slmkit-onnxruntime", "slmkit-onnx")
class OnnxRuntimeLM(RuntimeLM):
    backend_name = serve_backend = "onnxruntime"


@register_model("slmkit-remote")
class RemoteLM(RuntimeLM):
    """A model behind an OpenAI-compatible server (our `serve api`, vLLM, llama.cpp's server), scored on token
    ids through prompt logprobs with the served model's tokenizer held locally (`tokenizer=DIR`), so the
    requests and scores are the ones every local backend gets. (lm-eval's `local-completions` re-tokenizes
    text on the server and does not batch the way the engine does; it stays available as a stock model.)"""

    backend_name = serve_backend = "remote"

    def __init__(self, pretrained: str, batch_size: int | str | None = None, max_length: int | None = None,
                 tokenizer: str | None = None, **options) -> None:
        if tokenizer is None:
            raise SlmkitError(f"{pretrained}: the remote backend needs the served model's tokenizer folder "
                              "(slmkit eval --tokenizer DIR)")
        super().__init__(pretrained, batch_size, max_length, tokenizer=tokenizer, **options)
        window = getattr(self.runtime, "n_ctx", None)
        if max_length is None and window:  # a scored prompt (context + continuation) plus the 1 token echo asks for
            self._max_length = int(window) - 2

    def get_model_info(self) -> dict:
        return {"slmkit_backend": self.backend_name, "model_url": self.runtime.url, "served_model": self.runtime.model}

