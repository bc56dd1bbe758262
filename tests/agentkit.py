"""Test helpers for the agent loop: a model whose outputs are scripted text (or raw ids), run through the real
tokenizer, stop-string cutting and budget rules of the loop's model seam; and a tiny random torch model."""

from __future__ import annotations

import re
from typing import Callable, Sequence

from slmkit.agents.llm import FINISH_CONTEXT, FINISH_EOS, FINISH_LENGTH, FINISH_STOP, AgentLLM, GenRequest, GenResult, first_stop

TURN = re.compile(r"(?:Thought (\d+):|\nAction (\d+):)$")


class ScriptedLLM(AgentLLM):
    """`policy(task_id, step, is_followup, prompt_text) -> str | list[int]` plays the model. Its output is
    tokenized, cut where a stop string completes (ids kept up to the token that completed it), and capped
    at max_new_tokens, as a real decoder would produce it."""

    name = "scripted"

    def __init__(self, tokenizer, policy: Callable, context_limit: int = 1 << 30) -> None:
        self.tokenizer = tokenizer
        self.policy = policy
        self._limit = context_limit
        self.eos = set()
        self.calls = self.generated_tokens = self.prompt_tokens = 0
        self.batches: list[int] = []
        self.released: list[str] = []

    @property
    def context_limit(self) -> int:
        return self._limit

    def release(self, key: str) -> None:
        self.released.append(key)

    def generate_many(self, requests: Sequence[GenRequest]) -> list[GenResult]:
        self.batches.append(len(requests))
        return [self._one(r) for r in requests]

    def _one(self, req: GenRequest) -> GenResult:
        if len(req.prompt_ids) + 1 > self._limit:
            return GenResult([], "", FINISH_CONTEXT)
        prompt = self.decode(req.prompt_ids)
        m = TURN.search(prompt)
        step, followup = (int(m.group(1) or m.group(2)), m.group(2) is not None) if m else (0, False)
        out = self.policy(req.key, step, followup, prompt)
        ids = list(out) if isinstance(out, list) else self.encode(out)
        self.calls += 1
        budget = req.params.max_new_tokens
        for j in range(1, len(ids) + 1):
            text = self.decode(ids[:j], skip_special=True)
            cut = first_stop(text, req.params.stop)
            if cut is not None:
                return GenResult(ids[:j], text[:cut], FINISH_STOP)
            if j == budget:
                return GenResult(ids[:j], text, FINISH_LENGTH)
        return GenResult(ids, self.decode(ids, skip_special=True), FINISH_EOS)


def tiny_runtime(tokenizer_dir, seed: int = 0, max_seq_len: int = 8192):
    """A random-weight 2-layer model on the test BPE, as a TorchRuntime. Its output head can only pick
    tokens that decode to printable ASCII (their rows are random and large, the others zero), so what it
    writes is text — generated ids then survive into trajectories instead of being re-tokenized."""
    import torch

    from slmkit.model.config import ModelConfig
    from slmkit.model.tokenizer import load_tokenizer
    from slmkit.model.transformer import Transformer
    from slmkit.serve.torch_backend import TorchRuntime

    tok = load_tokenizer(tokenizer_dir)
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=len(tok), d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                      max_seq_len=max_seq_len, tie_embeddings=False, name="agent-tiny")
    model = Transformer(cfg).eval()
    special = set(tok.all_special_ids) | set(tok.added_tokens_decoder)  # EOS-like ids too: it never stops
    printable = torch.tensor([i not in special and tok.decode([i]) != "" and all(32 <= ord(c) < 127 or c == "\n" for c in tok.decode([i]))
                              for i in range(len(tok))])
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8.0)
        model.lm_head.weight[~printable] = 0.0
    return TorchRuntime.from_model(model, tokenizer=tok), model


def tiny_checkpoint(tokenizer_dir, folder):
    """The tiny random model of `tiny_runtime`, saved as a slmkit checkpoint (what `slmkit agent run` loads)."""
    from slmkit.model.checkpoint import save_checkpoint

    _, model = tiny_runtime(tokenizer_dir)
    save_checkpoint(folder, model, tokenizer_dir)
    return folder


def saved_episodes(folder) -> list[dict]:
    """A run folder's episodes in task order, wall times removed (everything else must be reproducible)."""
    import json

    lines = (folder / "trajectories.jsonl").read_text().splitlines()
    recs = sorted((json.loads(x) for x in lines), key=lambda r: r["index"])
    for r in recs:
        r.pop("seconds")
        for s in r["steps"]:
            for c in s["calls"]:
                c.pop("seconds")
    return recs


def results_without_timing(results: dict) -> dict:
    import json

    return json.loads(json.dumps({k: v for k, v in results.items() if k != "timing"}))


class Killed(Exception):
    """Raised from on_episode: the run stops as a killed process would (results.json never written)."""


def run_killed_then_resumed(benchmark, model, folder, kill_after: int, **kw) -> dict:
    """Run `benchmark` into `folder`, stop it after `kill_after` saved episodes (plus a torn last line, as a
    kill mid-write leaves), then rerun the same command; returns the resumed run's results."""
    import pytest

    from slmkit.agents.runner import run_agent

    seen = []

    def kill(record):
        seen.append(record["task_id"])
        if len(seen) == kill_after:
            raise Killed

    with pytest.raises(Killed):
        run_agent(benchmark, model, folder, progress=False, on_episode=kill, **kw)
    assert not (folder / "results.json").exists()
    with open(folder / "trajectories.jsonl", "a") as f:
        f.write('{"task_id": "torn-by-the-kill", "ste')
    return run_agent(benchmark, model, folder, progress=False, **kw)
