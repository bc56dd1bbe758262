"""ReAct's ALFWorld protocol (alfworld.ipynb): two few-shot games of the task's type, then the game.

    prompt = 'Interact with a household to solve a task. Here are two examples.\\n'
             + d[f'react_{v}_1'] + d[f'react_{v}_0'] + '\\nHere is the task.\\n'
    text   = prompt + first_observation + '\\n>'
    step i = model(text, stop=['\\n']).strip() -> action;  text += f' {action}\\n{observation}\\n>'

for at most 49 actions (`range(1, 50)`). `d` is prompts/alfworld_3prompts.json; `v` the type's key. In
this package's terms: prompt() ends with the first observation and a newline, turn() is '>', the move's
text is ' ' + action, observation() is '\\n' + observation + '\\n'. Every stripped output is an action,
as in the notebook (an empty or nonsense one reaches the game, which answers "Nothing happens.").
"""

from __future__ import annotations

from functools import lru_cache

from slmkit.agents.base import Move, ReactFormat, Task
from slmkit.agents.data import data_file
from slmkit.errors import SlmkitError
from slmkit.paths import read_json

from .env import PREFIXES

PROMPT_FILE = ("react", "prompts", "alfworld_3prompts.json")
HEADER = "Interact with a household to solve a task. Here are two examples.\n"
TRAILER = "\nHere is the task.\n"
MAX_ACTIONS = 49  # ReAct: for i in range(1, 50)
STYLES = ("react", "act")  # ReAct's prompts (react_*) or its Act-only baseline's (act_*)


@lru_cache(maxsize=4)
def load_prompts(path: str | None = None) -> dict[str, str]:
    file = path or str(data_file(*PROMPT_FILE))
    prompts = read_json(file)
    if not isinstance(prompts, dict):
        raise SlmkitError(f"{file}: expected an object of prompt strings")
    return prompts


def prompt_prefix(kind: str, prompts: dict[str, str], style: str = "react") -> str:
    """The notebook's prompt for a task of type `kind` (put, clean, heat, cool, examine, puttwo)."""
    if style not in STYLES:
        raise SlmkitError(f"alfworld: prompt style {style!r} is not one of {', '.join(STYLES)}")
    keys = (f"{style}_{kind}_1", f"{style}_{kind}_0")
    missing = [k for k in keys if k not in prompts]
    if missing:
        raise SlmkitError(f"alfworld prompts: no {', '.join(missing)} in {'/'.join(PROMPT_FILE)}")
    return HEADER + prompts[keys[0]] + prompts[keys[1]] + TRAILER


class AlfworldFormat(ReactFormat):
    max_steps = MAX_ACTIONS
    max_context_chars = None

    def __init__(self, prompts: dict[str, str], style: str = "react") -> None:
        self.style = style
        self.prefixes = {kind: prompt_prefix(kind, prompts, style) for kind in PREFIXES.values()}

    def prompt(self, task: Task, first_observation: str) -> str:
        return self.prefixes[task.data["type"]] + first_observation + "\n"

    def turn(self, i: int) -> str:
        return ">"

    def stops(self, i: int) -> tuple[str, ...]:
        return ("\n",)

    def parse(self, i: int, output: str) -> Move:
        action = output.strip()
        return Move(action=action, text=f" {action}")

    def followup(self, i: int, move: Move, output: str) -> Move:
        return move  # never asked for: every output is an action

    def observation(self, i: int, observation: str) -> str:
        return f"\n{observation}\n"
