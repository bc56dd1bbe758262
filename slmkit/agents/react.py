"""The ReAct loop, generic over (Environment, ReactFormat), for many episodes at once.

Each episode is a coroutine: it yields a `GenRequest` whenever it needs the model and receives the
`GenResult`. `run_episodes` keeps up to `parallel` episodes live, sends all their pending requests to one
`llm.generate_many` call per round, and starts the next task as soon as one ends. `run_naive` drives the
same coroutine one episode at a time on `NaiveLLM` (full re-prefill per call): the reference the fast
path must match token for token.

The trajectory starts with `fmt.prompt(task, first)` (the fixed piece) and `fmt.opening(task, first)` (the
first observation when the format keeps it out of the fixed piece). Per step i (see agents.base): feed `fmt.turn(i)`, generate with `fmt.stops(i)`, `fmt.parse`; when the move
asks for a follow-up (ReAct: no `Action i:` line), keep the move's text, feed `move.followup`, generate with
`move.followup_stop` and combine with `fmt.followup`; run the action (None → an `Invalid action` observation,
the env is not called); feed `fmt.observation(i, obs)`. After `fmt.max_steps` steps `fmt.forced_final`
runs without a model call. A model or environment failure inside an episode is recorded on the episode,
never raised: a run always finishes.
"""

from __future__ import annotations

import time
import traceback
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable

from slmkit.agents.base import Environment, Move, ReactFormat, StepResult, Task
from slmkit.agents.llm import FINISH_CONTEXT, FINISH_LENGTH, AgentLLM, GenRequest, GenResult, NaiveLLM
from slmkit.agents.trajectory import Trajectory
from slmkit.serve.base import SamplingParams

MAX_NEW_TOKENS = 100  # the ReAct notebooks' max_tokens


@dataclass
class Sampling:
    """Decoding settings for every call of a run; greedy by default as in ReAct (temperature 0)."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    max_new_tokens: int = MAX_NEW_TOKENS

    def params(self, stops, task_id: str, call: int) -> SamplingParams:
        # a seed per (run seed, task, call): a resumed or re-batched run samples the same tokens
        seed = zlib.crc32(f"{self.seed}:{task_id}:{call}".encode())
        return SamplingParams(max_new_tokens=self.max_new_tokens, temperature=self.temperature, top_k=self.top_k,
                              top_p=self.top_p, seed=seed, stop=list(stops))


def _odd_text(text: str) -> bool:
    """Bytes that did not decode, or control characters: what non-text model output looks like."""
    return "\ufffd" in text or any(unicodedata.category(c) == "Cc" and c not in "\n\t" for c in text)


EpisodeGen = Generator[GenRequest, GenResult, dict]


def episode(env: Environment, fmt: ReactFormat, task: Task, llm: AgentLLM, sampling: Sampling) -> EpisodeGen:
    """One ReAct episode as a coroutine; returns its record (trajectory pieces, steps, metrics, stats)."""
    t0 = time.perf_counter()
    traj = Trajectory(llm)
    steps: list[dict] = []
    history: list[StepResult] = []
    stats = {"calls": 0, "fallback_calls": 0, "invalid_actions": 0, "length_stops": 0, "odd_text": 0,
             "generated_tokens": 0, "env_errors": 0}
    record: dict[str, Any] = {"task_id": task.id, "env": env.name, "mode": env.mode}
    end = None
    calls = 0

    def call(stops) -> EpisodeGen:
        nonlocal calls
        req = GenRequest(traj.view(fmt.max_context_chars), sampling.params(stops, task.id, calls), key=task.id)
        calls += 1
        res = yield req
        stats["calls"] += 1
        stats["generated_tokens"] += len(res.ids)
        stats["length_stops"] += res.finish == FINISH_LENGTH
        return res

    try:
        first = env.reset(task)
        traj.feed(fmt.prompt(task, first), "prompt")
        traj.feed(fmt.opening(task, first), "observation")  # inside the context window (WebShop: the start page)
        record["first_observation"] = first
        done = False
        i = 0
        for i in range(1, fmt.max_steps + 1):
            step: dict[str, Any] = {"i": i, "calls": []}
            traj.feed(fmt.turn(i), "turn")
            res = yield from call(fmt.stops(i))
            step["calls"].append(_call_record(res, len(traj)))
            if res.finish == FINISH_CONTEXT:
                end = "context full"
                steps.append(step)
                break
            move = fmt.parse(i, res.text)
            step["output"] = res.text
            if move.followup is not None:
                stats["fallback_calls"] += 1
                traj.keep(move.text, res.ids)
                traj.feed(move.followup, "followup")
                head = move.text + move.followup
                res2 = yield from call(move.followup_stop)
                step["calls"].append(_call_record(res2, len(traj)))
                step["followup_output"] = res2.text
                if res2.finish == FINISH_CONTEXT:
                    end = "context full"
                    steps.append(step)
                    break
                move = fmt.followup(i, move, res2.text)
                if not move.text.startswith(head):
                    raise ValueError(f"{type(fmt).__name__}.followup must extend the first move's text + followup")
                traj.keep(move.text[len(head):], res2.ids)
            else:
                traj.keep(move.text, res.ids)
            result = _act(env, move, stats)
            history.append(result)
            invalid = bool(result.info.get("invalid")) or move.action is None
            stats["invalid_actions"] += invalid
            stats["odd_text"] += _odd_text(step["output"] + step.get("followup_output", ""))  # model output that is not text
            step.update(action=move.action, observation=result.observation, done=result.done, reward=result.reward,
                        invalid=invalid, malformed=move.malformed or result.info.get("reason") if invalid else None,
                        info=_jsonable(result.info))
            traj.feed(fmt.observation(i, result.observation), "observation")
            steps.append(step)
            if result.done:
                done = True
                break
        if not done:
            final = fmt.forced_final(i)
            if final is not None:
                result = _act(env, Move(action=final, text=""), stats)
                history.append(result)
                steps.append({"i": i, "forced": True, "action": final, "observation": result.observation,
                              "done": result.done, "reward": result.reward, "calls": [], "info": _jsonable(result.info)})
                end = end or "step budget spent"
        record["metrics"] = {k: float(v) for k, v in env.score(task, history).items()}
        record["info"] = _jsonable(env.episode_info())
    except Exception as exc:  # noqa: BLE001 - one broken episode is recorded, the run goes on
        record["error"] = f"{type(exc).__name__}: {exc}"
        record["traceback"] = traceback.format_exc(limit=6)
        record.setdefault("metrics", {})
    llm.release(task.id)
    record.update(end=end, steps=steps, n_steps=sum(1 for s in steps if not s.get("forced")), stats=stats,
                  n_tokens=len(traj), seconds=round(time.perf_counter() - t0, 4), pieces=traj.to_records())
    return record


def _act(env: Environment, move: Move, stats: dict) -> StepResult:
    if move.action is None:
        reason = move.malformed or "no action"
        return StepResult(f"Invalid action: {reason}", info={"invalid": True, "reason": reason})
    try:
        return env.step(move.action)
    except Exception as exc:  # noqa: BLE001 - an environment error becomes the observation, the episode goes on
        stats["env_errors"] += 1
        return StepResult(f"Invalid action: {move.action}", info={"invalid": True, "reason": "environment error",
                                                                  "error": f"{type(exc).__name__}: {exc}"})


def _call_record(res: GenResult, prompt_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "new_tokens": len(res.ids), "finish": res.finish,
            "seconds": round(res.seconds, 4)}


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


@dataclass
class EpisodeSlot:
    env: Environment
    gen: EpisodeGen | None = None
    pending: GenRequest | None = None
    index: int = -1
    extra: dict = field(default_factory=dict)


def environments(env: Environment, parallel: int) -> list[Environment]:
    """`parallel` independent environments (env.spawn()); an env that cannot spawn runs episodes one by one."""
    envs = [env]
    while len(envs) < max(1, parallel):
        other = env.spawn()
        if other is env:
            break
        envs.append(other)
    return envs


def run_episodes(env: Environment, fmt: ReactFormat, tasks: Iterable[Task], llm: AgentLLM,
                 sampling: Sampling | None = None, parallel: int = 8,
                 on_done: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Run every task's episode, up to `parallel` at once; records in task order. `on_done(index, record)`
    is called as each episode ends (the runner writes it to disk there)."""
    sampling = sampling or Sampling()
    tasks = list(tasks)
    records: list[dict | None] = [None] * len(tasks)
    queue = list(range(len(tasks)))
    slots = [EpisodeSlot(e) for e in environments(env, parallel)]

    def start(slot: EpisodeSlot) -> None:
        while queue:
            idx = queue.pop(0)
            slot.index, slot.gen = idx, episode(slot.env, fmt, tasks[idx], llm, sampling)
            if _advance(slot, None, records, on_done):
                return
        slot.gen = None

    for slot in slots:
        start(slot)
    while True:
        live = [s for s in slots if s.gen is not None]
        if not live:
            break
        results = llm.generate_many([s.pending for s in live])
        for slot, res in zip(live, results):
            if not _advance(slot, res, records, on_done):
                start(slot)
    return records  # type: ignore[return-value]


def _advance(slot: EpisodeSlot, result: GenResult | None, records, on_done) -> bool:
    """Send `result` into the slot's episode; True while it waits for the model, False once it has ended."""
    try:
        slot.pending = slot.gen.send(result) if result is not None else next(slot.gen)
        return True
    except StopIteration as stop:
        records[slot.index] = stop.value
        if on_done is not None:
            on_done(slot.index, stop.value)
        slot.gen = slot.pending = None
        return False


def run_naive(env: Environment, fmt: ReactFormat, tasks: Iterable[Task], runtime_or_llm,
              sampling: Sampling | None = None, on_done=None) -> list[dict]:
    """The reference loop: one episode at a time, every model call re-prefills the trajectory from scratch."""
    llm = runtime_or_llm if isinstance(runtime_or_llm, NaiveLLM) else NaiveLLM(runtime_or_llm)
    return run_episodes(env, fmt, tasks, llm, sampling, parallel=1, on_done=on_done)
