"""Real models through the agent loop: the batched path (many episodes per generate_many on the generation
engine, its prefix cache serving each episode's trajectory so far) gives token-identical greedy trajectories
to the naive loop (one episode at a time, each call re-prefilled from scratch) — on a tiny random model and
on SmolLM2-135M-Instruct (pulled); the engine's counters show a step prefills only its new tokens."""

from __future__ import annotations

import pytest

from agentkit import tiny_runtime
from slmkit.agents.llm import AgentLLM, GenRequest, NaiveLLM
from slmkit.agents.react import Sampling, run_episodes, run_naive
from slmkit.serve.base import SamplingParams
from slmkit.serve.sampling import common_prefix


@pytest.fixture(scope="module")
def hotpot(data_dir, tmp_path_factory):
    import os

    os.environ["SLMKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    from slmkit.agents.hotpotqa import load_environment

    return load_environment()


def _ids(records):
    return [[p["ids"] for p in r["pieces"]] for r in records]


def test_tiny_model_batched_equals_naive(hotpot, tiny_tokenizer_dir, one_thread):
    env, fmt = hotpot
    rt, _ = tiny_runtime(tiny_tokenizer_dir)
    tasks = env.tasks(4)
    sampling = Sampling(max_new_tokens=16)
    llm = AgentLLM(rt, max_batch=4)
    fast = run_episodes(env, fmt, tasks, llm, sampling, parallel=4)
    naive = run_naive(env, fmt, tasks, rt, sampling)
    assert not any(r.get("error") for r in fast + naive)
    assert _ids(fast) == _ids(naive)
    untimed = lambda recs: [[{**s, "calls": [{**c, "seconds": 0} for c in s["calls"]]} for s in r["steps"]] for r in recs]  # noqa: E731
    assert untimed(fast) == untimed(naive)
    kept = sum(p["generated"] for r in fast for p in r["pieces"])
    assert kept > 50  # generated ids kept as generated where ReAct's reformatting (strip, first line) keeps the text
    assert sum(r["stats"]["calls"] for r in fast) >= 7 * 4  # a random model never stops: all steps ran
    tok = rt.tokenizer
    for r in fast:
        ids = [i for p in r["pieces"] for i in p["ids"]]
        assert tok.decode(ids) == "".join(p["text"] for p in r["pieces"])


class Recording(AgentLLM):
    """AgentLLM that keeps every (request, result) pair it served, per episode."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.log: dict[str, list] = {}

    def generate_many(self, requests):
        results = super().generate_many(requests)
        for req, res in zip(requests, results):
            self.log.setdefault(req.key, []).append((list(req.prompt_ids), res))
        return results


@pytest.mark.parametrize("block", [1, 16])
def test_each_step_prefills_only_its_new_tokens(hotpot, tiny_tokenizer_dir, one_thread, block):
    """Step k's prompt extends step k-1's prompt + kept output: the prefix cache serves all of that (to a
    block), so the engine prefills only the observation + next turn (+ the last generated id, never fed)."""
    env, fmt = hotpot
    rt, _ = tiny_runtime(tiny_tokenizer_dir)
    llm = Recording(rt, max_batch=2, engine_options={"block_tokens": block, "prefix_cache_mb": 256})
    tasks = env.tasks(2)
    records = run_episodes(env, fmt, tasks, llm, Sampling(max_new_tokens=16), parallel=2)
    assert not any(r.get("error") for r in records)
    checked = 0
    for key, calls in llm.log.items():
        for (prev, prev_res), (ids, res) in zip(calls, calls[1:]):
            known = prev + prev_res.ids[:-1]  # what the engine computed for the previous call
            shared = common_prefix(known, ids)
            assert shared >= len(prev)  # the trajectory only grows
            new = len(ids) - shared
            cached = res.info["cached_tokens"]
            assert cached == min(shared, len(ids) - 1) // block * block
            assert len(ids) - cached <= new + block - 1 and new < 200
            checked += 1
    assert checked >= 2 * 6
    stats = llm.engine_stats()
    served = sum(res.info["cached_tokens"] for calls in llm.log.values() for _, res in calls)
    assert stats["prefill_tokens"] == stats["prompt_tokens"] - served  # counters agree with the per-call facts
    # the few-shot prefix is computed once: the second episode's first call is served from the first's
    firsts = [calls[0] for calls in llm.log.values()]
    assert sum(res.info["cached_tokens"] for _, res in firsts) >= common_prefix(firsts[0][0], firsts[1][0]) // block * block - block


def test_sampled_generation_is_seeded_per_task_and_call(hotpot, tiny_tokenizer_dir, one_thread):
    env, fmt = hotpot
    rt, _ = tiny_runtime(tiny_tokenizer_dir, seed=1)
    tasks = env.tasks(2)
    hot = Sampling(temperature=1.0, top_k=50, seed=3, max_new_tokens=8)
    a = run_episodes(env, fmt, tasks, AgentLLM(rt), hot, parallel=2)
    b = run_episodes(env, fmt, tasks[::-1], AgentLLM(rt), hot, parallel=1)[::-1]  # other order, other batching
    assert _ids(a) == _ids(b)
    c = run_episodes(env, fmt, tasks, AgentLLM(rt), Sampling(temperature=1.0, top_k=50, seed=4, max_new_tokens=8))
    assert _ids(a) != _ids(c)


def test_generate_many_cuts_at_stop_strings_and_reports_finish(tiny_tokenizer_dir, one_thread):
    rt, _ = tiny_runtime(tiny_tokenizer_dir)
    llm = AgentLLM(rt)
    prompt = llm.encode("Question: 12 + 7 = ")
    free = llm.generate_many([GenRequest(prompt, SamplingParams(max_new_tokens=12))])[0]
    assert free.finish == "length" and len(free.ids) == 12
    text = llm.decode(free.ids, skip_special=True)
    stop = text[3:5]
    assert stop.strip()
    res = llm.generate_many([GenRequest(prompt, SamplingParams(max_new_tokens=12, stop=[stop])),
                             GenRequest(prompt, SamplingParams(max_new_tokens=12))])
    assert res[0].finish == "stop" and res[0].text == text[:text.find(stop)] and res[1].ids == free.ids
    assert stop in llm.decode(res[0].ids) and res[0].ids == free.ids[:len(res[0].ids)]
    full = llm.generate_many([GenRequest(list(range(5, 5 + 8192)), SamplingParams())])[0]
    assert full.finish == "context" and full.ids == []
    assert NaiveLLM(rt).generate_many([GenRequest(prompt, SamplingParams(max_new_tokens=12))])[0].ids == free.ids


@pytest.mark.slow
def test_smollm2_batched_equals_naive(hotpot, one_thread):
    from slmkit import hub, serve

    env, fmt = hotpot
    rt = serve.load(hub.pull("smollm2-135m-instruct")["hf_dir"], "torch")
    fmt.max_steps, saved = 2, fmt.max_steps  # two steps of two episodes keep this CPU test to minutes
    try:
        tasks = env.tasks(2)
        sampling = Sampling(max_new_tokens=48)
        fast = run_episodes(env, fmt, tasks, AgentLLM(rt), sampling, parallel=2)
        naive = run_naive(env, fmt, tasks, rt, sampling)
    finally:
        fmt.max_steps = saved
    assert not any(r.get("error") for r in fast + naive)
    assert _ids(fast) == _ids(naive)
    first = fast[0]["steps"][0]
    assert first["output"].strip()  # a real instruct model writes a thought
    tok = rt.tokenizer
    for r in fast:
        assert tok.decode([i for p in r["pieces"] for i in p["ids"]]) == "".join(p["text"] for p in r["pieces"])
