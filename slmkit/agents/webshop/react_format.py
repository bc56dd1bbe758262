"""ReAct's WebShop prompt protocol (WebShop.ipynb `webshop_run`), laid out for the generic loop.

The model sees `prompt1` (the 1-shot trajectory) + the start page, then per step "\\n\\nAction:"; its output
up to "\\n", left-stripped of spaces, is the action, kept as " {action}"; the env's answer follows as
"\\nObservation: {obs}". ReAct's loop runs `for i in range(15)` with step 0 the reset, so 14 model actions
reach the shop (a 15th model call is made and never executed: it cannot change a reward, so it is not made
here). Before every model call ReAct keeps the prompt whole and only the last `6400 - len(prompt1)` chars
of what follows (`init_prompt + prompt[-(6400-len(init_prompt)):]`, where `prompt` starts with the start
page): so `prompt()` is the 1-shot prompt alone (the loop's fixed piece), `opening()` is the start page (the
first piece inside the window) and `max_context_chars = 6400 - len(prompt1)` is the loop's window.
"""

from __future__ import annotations

from slmkit.agents.base import Move, ReactFormat, Task
from slmkit.errors import SlmkitError
from slmkit.paths import data_dir, read_json

CONTEXT_CHARS = 6400
PROMPT_KEY = "prompt1"  # ReAct; "prompt1_actonly" is the Act-only ablation
_ACTIONS = ("search[", "click[", "think")


def load_prompt(key: str = PROMPT_KEY) -> str:
    path = data_dir() / "react" / "prompts" / "webshop.json"
    prompts = read_json(path)
    if key not in prompts:
        raise SlmkitError(f"{path}: no prompt {key!r} (has {', '.join(prompts)})")
    return prompts[key]


class WebShopReactFormat(ReactFormat):
    max_steps = 14  # ReAct's range(15) minus the reset: the actions that reach the environment

    def __init__(self, prompt: str | None = None):
        self.few_shot = load_prompt() if prompt is None else prompt
        # the window for the text after the few-shot prefix (the loop keeps the prefix's KV as is)
        self.max_context_chars = CONTEXT_CHARS - len(self.few_shot)
        if self.max_context_chars <= 0:
            raise SlmkitError(f"webshop: the 1-shot prompt has {len(self.few_shot)} characters, no room in ReAct's "
                              f"{CONTEXT_CHARS}-character window")

    def prompt(self, task: Task, first_observation: str) -> str:
        return self.few_shot

    def opening(self, task: Task, first_observation: str) -> str:
        return first_observation

    def turn(self, i: int) -> str:
        return "\n\nAction:"

    def stops(self, i: int) -> tuple[str, ...]:
        return ("\n",)

    def parse(self, i: int, output: str) -> Move:
        action = output.lstrip(" ")
        malformed = None
        if not action.strip():
            malformed = "empty"
        elif not action.startswith(_ACTIONS):
            malformed = "not search[...], click[...] or think"
        elif not action.startswith("think") and not action.endswith("]"):
            malformed = "unbalanced brackets"
        # the shop judges every action itself ("Invalid action!"), exactly as ReAct's client did
        return Move(action=action, text=f" {action}", malformed=malformed)

    def followup(self, i: int, move: Move, output: str) -> Move:
        return move  # ReAct's WebShop loop makes no second call

    def observation(self, i: int, observation: str) -> str:
        return f"\nObservation: {observation}"
