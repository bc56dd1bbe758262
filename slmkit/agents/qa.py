"""ReAct's question-answering protocol (hotpotqa.ipynb / FEVER.ipynb `webthink`), shared by HotpotQA and FEVER.

Prompt: instruction + few-shot examples + `Question: ...` (or `Claim: ...`) + newline. Step i: the model
continues `Thought {i}:` up to `\\nObservation {i}:`; its stripped output must split into exactly two parts on
`\\nAction {i}: `, else the first line is kept as the thought and one more call continues
`Thought {i}: {thought}\\nAction {i}:` up to a newline. The action's first letter is lower-cased and run
by wikienv's tools; the trajectory keeps `Thought {i}: {thought}\\nAction {i}: {action}\\nObservation {i}:
{obs}\\n` (obs with literal '\\\\n' removed). After 7 steps `finish[]` is forced. Finishing answers
`Episode finished, reward = {em}`, as ReAct's wrappers do.
"""

from __future__ import annotations

from typing import Any, Callable

from slmkit.agents.base import Environment, Move, ReactFormat, StepResult, Task
from slmkit.agents.wiki import TOOLS, WikiSource, WikiTools


def env_action(action: str) -> str:
    """ReAct's `action[0].lower() + action[1:]` (an empty action stays empty instead of raising)."""
    return action[:1].lower() + action[1:]


ODD_TEXT = "undecodable or control characters"


def odd_text(text: str) -> bool:
    """Bytes that did not decode (U+FFFD) or control characters: model output that is not text. Other
    non-ASCII (accents, CJK) is ordinary text: HotpotQA's answers contain it."""
    return "\ufffd" in text or any(ord(c) < 32 and c not in "\t\n" or 127 <= ord(c) < 160 for c in text)


def _move(action: str, text: str) -> Move:
    """The move for one action line: not-text actions are refused before they reach the tools."""
    if odd_text(action):
        return Move(action=None, text=text, malformed=ODD_TEXT)
    return Move(action=env_action(action), text=text)


def malformed_reason(action: str, tools: tuple[str, ...]) -> str:
    """Why wikienv rejected an action (for the statistics; the observation is wikienv's own)."""
    a = action.strip()
    if not a:
        return "empty action"
    if odd_text(a):
        return ODD_TEXT
    name = a.split("[", 1)[0]
    if "[" not in a:
        return "no tool call"
    if name not in TOOLS:
        return f"unknown tool '{name[:30]}'"
    if name not in tools:
        return f"tool '{name}' unavailable"
    if not a.endswith("]"):
        return "unbalanced brackets" if a.count("[") != a.count("]") else "text after the tool call"
    return "malformed tool call"


class WebthinkFormat(ReactFormat):
    max_steps = 7

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix  # instruction + few-shot examples

    def prompt(self, task: Task, first_observation: str) -> str:
        return self.prefix + first_observation + "\n"

    def turn(self, i: int) -> str:
        return f"Thought {i}:"

    def stops(self, i: int) -> tuple[str, ...]:
        return (f"\nObservation {i}:",)

    def parse(self, i: int, output: str) -> Move:
        stripped = output.strip()
        parts = stripped.split(f"\nAction {i}: ")
        if len(parts) == 2:
            thought, action = parts
            return _move(action, f" {thought}\nAction {i}: {action}")
        thought = stripped.split("\n")[0]
        return Move(action=None, text=f" {thought}", followup=f"\nAction {i}:", followup_stop=("\n",),
                    malformed="no action line")

    def followup(self, i: int, move: Move, output: str) -> Move:
        action = output.strip()
        return _move(action, f"{move.text}{move.followup} {action}")

    def observation(self, i: int, observation: str) -> str:
        return f"\nObservation {i}: {observation.replace(chr(92) + 'n', '')}\n"

    def forced_final(self, i: int) -> str | None:
        return "finish[]"


class WikiQAEnv(Environment):
    """A question (or claim) answered with wikienv's tools; `scorer(answer, gold) -> metrics` grades it.

    `first` builds the first observation (`Question: ...` / `Claim: ...`) from the task."""

    def __init__(self, name: str, mode: str, source: WikiSource | None, tasks: list[Task],
                 first: Callable[[Task], str], scorer: Callable[[str, str], dict[str, float]],
                 tools: tuple[str, ...] = TOOLS, comparable: bool = True, details: dict | None = None) -> None:
        self.name, self.mode, self.comparable = name, mode, comparable
        self.source = source
        self._tasks = tasks
        self._first = first
        self._scorer = scorer
        self.tools = tools
        self.details = details or {}
        self.wiki = WikiTools(source, tools)
        self.task: Task | None = None

    def spawn(self) -> "WikiQAEnv":
        return WikiQAEnv(self.name, self.mode, self.source, self._tasks, self._first, self._scorer, self.tools,
                         self.comparable, self.details)

    def tasks(self, limit: int | None = None) -> list[Task]:
        return self._tasks if limit is None else self._tasks[:limit]

    def reset(self, task: Task) -> str:
        self.task = task
        self.wiki.reset()
        return self._first(task)

    def step(self, action: str) -> StepResult:
        obs, done, info = self.wiki.step(action)
        if info.get("invalid"):
            info["reason"] = malformed_reason(action, self.tools)
        reward = 0.0
        if done:
            metrics = self._scorer(info.get("answer") or "", self.task.data["answer"])
            reward = metrics["em"]
            obs = f"Episode finished, reward = {int(reward)}\n"
        return StepResult(obs, done=done, reward=reward, info=info)

    def score(self, task: Task, history: list[StepResult]) -> dict[str, float]:
        answer = self.wiki.answer
        metrics = self._scorer(answer if answer is not None else "", task.data["answer"])
        if answer is None:  # never finished: ReAct's wrappers give 0
            metrics = {k: 0.0 for k in metrics}
        return metrics

    def episode_info(self) -> dict[str, Any]:
        return {"answer": self.wiki.answer, "gold": self.task.data["answer"] if self.task else None,
                "searches": self.wiki.searches}
