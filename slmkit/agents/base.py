"""What every agent environment provides: tasks, reset/step, a per-episode score, and its ReAct prompt format.

The ReAct loop (slmkit.agents.react) is the same for every benchmark; what differs is how a prompt is laid
out and how model text becomes an action. An environment therefore comes with a `ReactFormat`:

    text  = fmt.prompt(task, first_observation)          # instruction + few-shot + the task
    text += fmt.opening(task, first_observation)         # '' unless the first observation may scroll away
    loop i = 1..fmt.max_steps:
        text += fmt.turn(i)                               # e.g. "Thought 1:" or ">"
        out   = model(text, stop=fmt.stops(i))            # greedy by default
        move  = fmt.parse(i, out)                         # -> Move(action, text kept, follow-up call?)
        obs   = env.step(move.action)
        text += move.text + fmt.observation(i, obs.observation)
    (after max_steps: fmt.forced_final(i) names the action forced, e.g. "finish[]")

The loop holds the text as token ids (slmkit.agents.trajectory: pieces tokenized as they are appended,
model text kept as generated ids where they agree with `move.text`), and runs many episodes at once when
the environment can `spawn()` independent copies. A move with `action=None` becomes the observation
`Invalid action: {move.malformed}` without calling the environment; an environment that marks
`StepResult.info["invalid"]` (with an optional `info["reason"]`) is counted as an invalid action too.
`max_context_chars` cuts the text after the `prompt()` piece (so `opening()` and everything after it) to its
last N characters in every request; the `prompt()` piece is sent whole, as its keys/values stay cached.

Environments never see model internals and never import serve: the loop owns the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Task:
    """One episode's input. `id` is stable across runs (resume keys on it); `data` is environment-specific."""

    id: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepResult:
    """What the environment answers to one action."""

    observation: str
    done: bool = False
    reward: float = 0.0
    # e.g. {"invalid": True} for an action the env does not understand, {"won": True}, {"error": "..."}
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Move:
    """A parsed model turn: the action to run (None = malformed), the text to keep in the trajectory, and
    whether a follow-up model call with `followup_stop` is needed to get the action (ReAct's fallback)."""

    action: str | None
    text: str
    followup: str | None = None  # text to append before the follow-up call (e.g. "\nAction 3:")
    followup_stop: tuple[str, ...] = ()
    malformed: str | None = None  # why the output was not a valid action (counted as a statistic)


class Environment:
    """Base class; subclasses set `name` and `mode` and implement tasks/reset/step/score."""

    name = "base"
    # how the data/environment was obtained, written into every result (e.g. "offline distractor corpus")
    mode = ""
    comparable = True  # False when results must not be compared with published numbers
    not_comparable_because: str | None = None  # why not (written into results and reports)
    group_order: tuple[str, ...] = ()  # results score episodes per task["type"] too, groups in this order

    def tasks(self, limit: int | None = None) -> list[Task]:
        raise NotImplementedError

    def reset(self, task: Task) -> str:
        """Start an episode; returns the first observation as the prompt format expects it."""
        raise NotImplementedError

    def step(self, action: str) -> StepResult:
        raise NotImplementedError

    def score(self, task: Task, history: list[StepResult]) -> dict[str, float]:
        """Per-episode metrics from the task and the env's answers (e.g. {"em": 1.0, "f1": 1.0} or
        {"reward": 0.75, "success": 0.0}). Means over episodes are the benchmark scores."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    # ---- optional (defaults keep older environments working) -------------------------------------
    def spawn(self) -> "Environment":
        """An independent environment for one more concurrent episode (sharing read-only data such as a
        corpus), so the loop can decode many episodes at once. Default: `self`, i.e. this environment's
        episodes run one at a time."""
        return self

    def episode_info(self) -> dict[str, Any]:
        """Extra facts about the episode just scored, written into its trajectory record
        (e.g. {"answer": ..., "gold": ...}); called after `score`."""
        return {}


class ReactFormat:
    """How one benchmark lays out ReAct prompts (see the module docstring for the loop that uses it)."""

    max_steps = 7
    # keep only the last N characters of the trajectory after the prompt prefix (WebShop: 6,400); None = all
    max_context_chars: int | None = None

    def prompt(self, task: Task, first_observation: str) -> str:
        raise NotImplementedError

    def opening(self, task: Task, first_observation: str) -> str:
        """Text fed right after `prompt()`, as the first observation piece: the part of the episode's start
        that lies inside the `max_context_chars` window (WebShop: the start page). Default: nothing."""
        return ""

    def turn(self, i: int) -> str:
        raise NotImplementedError

    def stops(self, i: int) -> tuple[str, ...]:
        raise NotImplementedError

    def parse(self, i: int, output: str) -> Move:
        raise NotImplementedError

    def followup(self, i: int, move: Move, output: str) -> Move:
        """Combine the first output with the follow-up call's `output` (ReAct's second call for the action)."""
        raise NotImplementedError

    def observation(self, i: int, observation: str) -> str:
        raise NotImplementedError

    def forced_final(self, i: int) -> str | None:
        """The action run when the step budget is spent (HotpotQA/FEVER: 'finish[]'); None = stop."""
        return None
