"""Real models through the agent loop: the batched path (many episodes per generate_many, the runtime's
batched decoder) gives token-identical greedy trajectories to the naive loop (one episode at a time, each
call re-prefilled from scratch) — on a tiny random model and on SmolLM2-135M-Instruct (pulled)."""

from __future__ import annotations

import pytest

from agentkit import tiny_runtime
from slmkit.agents.llm import AgentLLM, GenRequest, NaiveLLM
from slmkit.agents.react import Sampling, run_episodes, run_naive
from slmkit.serve.base import SamplingParams


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
