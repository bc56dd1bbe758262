"""The agent tab's live trace: the agents' own HotpotQA environment and ReAct loop, with a runtime that plays
scripted model text (token by token, through the real tokenizer, stop strings cut by the runtime layer).
The events seen live must agree with the episode record the loop itself returns."""

from __future__ import annotations

import pytest

from slmkit.app.agent_trace import TraceEvent, run_episode, split_tool, thought_of
from slmkit.app.generation import Cancelled, GenerationService, Handle
from slmkit.model.tokenizer import load_tokenizer
from slmkit.serve.base import Runtime


class ScriptedRuntime(Runtime):
    """Plays `turns[k]` on the k-th call, then runs on past it (the call's stop string and more text, then EOS)
    as a model would, so the runtime layer has to cut it."""

    name = "scripted"

    def __init__(self, tokenizer, turns: list[str]) -> None:
        self.tokenizer, self.turns, self.calls = tokenizer, turns, 0
        self.n_ctx = 1 << 20

    def generate_ids(self, prompt_ids, params):
        text = self.turns[min(self.calls, len(self.turns) - 1)]
        self.calls += 1
        tail = (params.stop[0] if params.stop else "\n") + " made up"
        for i, tid in enumerate(self.tokenizer.encode(text + tail, add_special_tokens=False)):
            if i >= params.max_new_tokens:
                return
            yield tid
        yield self.tokenizer.eos_token_id


@pytest.fixture(scope="module")
def hotpotqa():
    from slmkit.agents.registry import load_environment

    env, fmt = load_environment("hotpotqa")
    return env, fmt, env.tasks()[0]  # Lucie Hradecká or Raffaella Reggi?


@pytest.fixture(scope="module")
def tok(tiny_tokenizer_dir):
    return load_tokenizer(tiny_tokenizer_dir)


def collect(runtime, env, fmt, task):
    handle = Handle()
    record = run_episode(runtime, handle, env, fmt, task)
    handle._finish()
    return [ev for ev in handle], record


def test_live_events_match_the_loops_record(hotpotqa, tok):
    env, fmt, task = hotpotqa
    turns = [" I need to search Raffaella Reggi.\nAction 1: Search[Raffaella Reggi]",
             " Reggi was born in 1965. I need the other one.",  # no action line: ReAct's follow-up call
             " search[Lucie Hradecká]",
             " Hradecká was born in 1985.\nAction 3: Finish[Raffaella Reggi]"]
    events, record = collect(ScriptedRuntime(tok, turns), env.spawn(), fmt, task)
    kinds = [e.kind for e in events if e.kind != "token"]
    assert kinds[0] == "prompt" and kinds[-1] == "done" and events[0].text.startswith("Question: ")
    assert kinds.count("generating") == 4 and kinds.count("output") == 4  # three steps, one with a follow-up
    actions = [e for e in events if e.kind == "action"]
    observations = [e for e in events if e.kind == "observation"]
    steps = record["steps"]
    assert [a.text for a in actions] == [s["action"] for s in steps]
    assert [o.text for o in observations] == [s["observation"] for s in steps]
    assert [a.step for a in actions] == [s["i"] for s in steps] == [1, 2, 3]
    assert record["metrics"]["em"] == 1.0 and events[-1].record is record
    assert split_tool(actions[0].text) == ("search", "Raffaella Reggi")
    outputs = [e.text for e in events if e.kind == "output"]
    assert thought_of(outputs[0]) == "I need to search Raffaella Reggi."
    first_call = events[events.index(next(e for e in events if e.kind == "generating")):
                        events.index(next(e for e in events if e.kind == "output"))]
    tokens = [e.text for e in first_call if e.kind == "token"]  # the call's text so far, token by token
    assert len(tokens) > 10 and all(len(a) < len(b) for a, b in zip(tokens, tokens[1:]))
    assert tokens[-1].startswith(outputs[0])  # the last ones ran into the stop string, which the output drops


def test_invalid_action_and_forced_finish_are_shown(hotpotqa, tok):
    env, fmt, task = hotpotqa
    import copy

    fmt2 = copy.copy(fmt)
    fmt2.max_steps = 2
    turns = [" Hmm.\nAction 1: search[\x07]",  # control character: refused before it reaches the tools
             " I give up.\nAction 2: lookup[nothing]"]
    events, record = collect(ScriptedRuntime(tok, turns), env.spawn(), fmt2, task)
    invalid = [e for e in events if e.kind == "invalid"]
    assert [e.step for e in invalid] == [1] and record["steps"][0]["invalid"]
    forced = [e for e in events if e.kind == "action" and e.forced]
    assert [e.text for e in forced] == ["finish[]"] and record["steps"][-1].get("forced")


def test_cancel_stops_the_episode_within_a_token(hotpotqa, tok):
    env, fmt, task = hotpotqa
    handle = Handle()
    seen: list[TraceEvent] = []

    def emit(ev):
        seen.append(ev)
        if ev.kind == "token" and len([e for e in seen if e.kind == "token"]) == 3:
            handle.cancel()

    handle.emit = emit
    with pytest.raises(Cancelled):
        run_episode(ScriptedRuntime(tok, [" I need to search it.\nAction 1: search[Raffaella Reggi]"]), handle,
                    env.spawn(), fmt, task)
    assert not [e for e in seen if e.kind in ("action", "observation", "done")]
    assert len([e for e in seen if e.kind == "token"]) == 3


def test_trace_through_the_service_renders_boxes(hotpotqa, tok):
    import gradio as gr

    from slmkit.app.ui import TraceView

    env, fmt, task = hotpotqa
    service = GenerationService(ScriptedRuntime(tok, [" Search it.\nAction 1: search[Raffaella Reggi]",
                                                      " Found.\nAction 2: finish[Raffaella Reggi]"]))
    try:
        handle = service.submit_call(lambda rt, h: run_episode(rt, h, env.spawn(), fmt, task))
        view = TraceView(gr)
        for ev in handle:
            view.add(ev)
        assert handle.result.finish_reason == "stop" and handle.result.value["metrics"]["em"] == 1.0
    finally:
        service.close()
    titles = [m.metadata["title"] for m in view.messages if m.metadata]
    assert titles == ["Thought 1", "Action 1: search[Raffaella Reggi]", "Observation 1", "Thought 2",
                      "Action 2: finish[Raffaella Reggi]", "Observation 2"]
    assert all(m.metadata["status"] == "done" for m in view.messages if m.metadata)
    assert view.messages[0].role == "user" and "**Finished** after 2 steps" in view.messages[-1].content


def test_trace_view_drops_a_thought_that_is_only_the_action():
    import gradio as gr

    from slmkit.app.ui import TraceView

    view = TraceView(gr)
    for ev in [TraceEvent("prompt", text="You are in the middle of a room."), TraceEvent("generating", 1),
               TraceEvent("output", 1, " go to desk 1", 0.5), TraceEvent("action", 1, "go to desk 1"),
               TraceEvent("observation", 1, "On the desk 1, you see a pen.", 0.01),
               TraceEvent("generating", 2), TraceEvent("output", 2, " I see a pen.\nAction 2: take[pen]", 0.4),
               TraceEvent("action", 2, "take[pen]"), TraceEvent("observation", 2, "You take the pen.", 0.01)]:
        view.add(ev)
    titles = [m.metadata["title"] for m in view.messages if m.metadata]
    assert titles == ["Action 1: go to desk 1", "Observation 1", "Thought 2", "Action 2: take[pen]", "Observation 2"]


@pytest.mark.parametrize("benchmark,turns", [
    ("FEVER", [" The claim is wrong.\nAction 1: Finish[REFUTES]"]),
    ("WebShop", [" search[long clip-in hair extension]", " click[b0000]", " think[done]"]),
    ("ALFWorld", [" think: I should look around.", " go to desk 1", " look"]),
    ("Free question (local corpus)", [" Search it.\nAction 1: search[Raffaella Reggi]", " Done.\nAction 2: finish[1965]"]),
])
def test_every_benchmark_of_the_agent_tab_runs_an_episode(benchmark, turns, tok):
    """The tab's own setup (DemoApp.episode_setup: task 0, 3 steps) on each benchmark's real environment."""
    from slmkit.app.ui import DemoApp

    env, fmt, task = DemoApp(None, "unused").episode_setup(benchmark, 0, "When was Raffaella Reggi born?", 3)
    events, record = collect(ScriptedRuntime(tok, turns), env, fmt, task)
    assert "error" not in record, record.get("error")
    actions = [e.text for e in events if e.kind == "action"]
    assert actions and actions == [s["action"] for s in record["steps"] if s.get("action")]  # every env call
    assert events[-1].kind == "done" and record["n_steps"] <= 3
