"""`--parallel N`: N requests decode together in the engine (one forward per step for all of them), and each
still gets exactly the text it gets alone."""

from __future__ import annotations

import threading

import openai

from slmkit.serve import SamplingParams, load
from test_app_support import MODEL_NAME, running_api, tiny_model_dir  # noqa: F401

QUESTIONS = ["Tell me a story", "What is two plus two?", "Name a colour", "Say something nice"]


def test_parallel_requests_decode_together_and_match_solo_runs(tiny_model_dir):
    rt = load(tiny_model_dir, threads=1)
    want = [rt.complete([{"role": "user", "content": q}], SamplingParams(max_new_tokens=300)) for q in QUESTIONS]
    rt.close()
    with running_api(tiny_model_dir, parallel=4, max_queue=4) as (url, service):
        client = openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0, timeout=300)
        got: dict[int, str] = {}
        barrier = threading.Barrier(len(QUESTIONS))

        def ask(i):
            barrier.wait()
            r = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": QUESTIONS[i]}],
                                               max_tokens=300, temperature=0)
            got[i] = r.choices[0].message.content

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(QUESTIONS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        engine = service.snapshot()["engine"]
    assert [got[i] for i in range(len(QUESTIONS))] == want
    # 4 x 300 tokens: decoding one at a time would average ~1 row per step
    assert engine["mean_rows_per_step"] >= 2.0, engine
