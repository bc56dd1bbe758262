"""A ReAct episode as it happens: the agents' own episode coroutine (slmkit.agents.react.episode), driven one
model call at a time, with a `TraceEvent` for every token, model output, action and observation.

The loop, prompts, parsing and scoring are the agents package's; this module only watches: the runtime
through `ObservedRuntime` (tokens, cancellation), the environment through a proxy that reports each action
and its observation, and the format's own `parse`/`followup` to tell a follow-up call from an invalid action.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable

from slmkit.agents.base import Environment, ReactFormat, StepResult, Task
from slmkit.agents.llm import AgentLLM
from slmkit.agents.react import Sampling, episode
from slmkit.app.generation import Cancelled, Handle, ObservedRuntime
from slmkit.serve.base import Runtime

TOOL_CALL = re.compile(r"^\s*([A-Za-z_][\w ]*?)\s*\[(.*)\]\s*$", re.S)


@dataclass
class TraceEvent:
    kind: str  # prompt | generating | token | output | action | observation | invalid | done
    step: int = 0
    text: str = ""
    seconds: float = 0.0
    record: dict | None = None
    forced: bool = False  # an action the loop ran itself (the step budget was spent), not the model's


def split_tool(action: str) -> tuple[str, str]:
    """'search[Colorado orogeny]' -> ('search', 'Colorado orogeny'); anything else -> (action, '')."""
    m = TOOL_CALL.match(action or "")
    return (m.group(1).strip(), m.group(2)) if m else ((action or "").strip(), "")


def thought_of(output: str) -> str:
    """The reasoning part of a model turn: the text before its `Action i:` line (ReAct's webthink layout)."""
    return re.split(r"\nAction \d+:", output, maxsplit=1)[0].strip()


class _ObservedEnv:
    """The environment, reporting each action and observation; every other attribute is the env's own."""

    def __init__(self, env: Environment, emit: Callable[[TraceEvent], None]) -> None:
        self.env, self.emit = env, emit
        self.calls = 0
        self.step_no = 0
        self._acted_in = -1  # the step whose action already ran (a second one there is the loop's forced final)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["env"], name)

    def reset(self, task: Task) -> str:
        first = self.env.reset(task)
        self.emit(TraceEvent("prompt", text=first))
        return first

    def step(self, action: str) -> StepResult:
        self.calls += 1
        forced = self._acted_in == self.step_no
        self._acted_in = self.step_no
        self.emit(TraceEvent("action", self.step_no, action, forced=forced))
        t0 = time.perf_counter()
        result = self.env.step(action)
        self.emit(TraceEvent("observation", self.step_no, result.observation, time.perf_counter() - t0))
        return result


def run_episode(runtime: Runtime, handle: Handle, env: Environment, fmt: ReactFormat, task: Task,
                sampling: Sampling | None = None) -> dict:
    """Run one episode on `runtime` (call it on the GenerationService worker), emitting TraceEvents into
    `handle`; returns the agents' episode record. A cancelled handle stops it within a token (raises Cancelled)."""
    emit = handle.emit
    tok = runtime.tokenizer
    watched = ObservedRuntime(runtime, handle, raise_on_cancel=True,
                              on_token=lambda ids: emit(TraceEvent("token", text=tok.decode(ids, skip_special_tokens=True))))
    llm = AgentLLM(watched, batched=False)
    env_view = _ObservedEnv(env, emit)
    gen = episode(env_view, fmt, task, llm, sampling or Sampling())  # type: ignore[arg-type]
    step, pending = 1, None  # pending: the first move of a step that asked for a follow-up call
    try:
        request = next(gen)
        while True:
            env_view.step_no = step
            emit(TraceEvent("generating", step))
            result = llm.generate_many([request])[0]
            emit(TraceEvent("output", step, result.text, result.seconds))
            move, wants_followup = _move(fmt, step, result.text, pending)
            calls_before = env_view.calls
            try:
                request = gen.send(result)
            except StopIteration as stop:
                record = stop.value
                break
            if wants_followup:
                pending = move
                continue
            pending = None
            if env_view.calls == calls_before:  # the loop answered without the env: an invalid action
                emit(TraceEvent("invalid", step, (move.malformed if move is not None else None) or "no action"))
                env_view._acted_in = step
            step += 1
    except Cancelled:
        gen.close()
        raise
    emit(TraceEvent("done", step, record=record))
    return record


def _move(fmt: ReactFormat, step: int, output: str, pending):
    """(the move the loop will make of this output, whether it asks for a follow-up call)."""
    try:
        if pending is None:
            move = fmt.parse(step, output)
            return move, move.followup is not None
        return fmt.followup(step, pending, output), False
    except Exception:  # noqa: BLE001 - the loop records a format failure itself; here it only labels a box
        return None, False
