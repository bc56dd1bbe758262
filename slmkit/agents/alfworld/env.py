"""ALFWorld's text games (AlfredTWEnv, TextWorld PDDL) as an `Environment`, one game per task.

The games are collected by alfworld's own `AlfredTWEnv(config, train_eval=split)` with ReAct's config
(solvable games of the six task types). Each episode plays one game through `AlfredTWEnv.init_env
(batch_size=1)` restricted to that game file: the same TextWorld env, wrappers (AlfredDemangler,
AlfredInfos), infos and 50-step limit ReAct's notebook plays, but addressable by task id so runs resume.

Observations follow alfworld.ipynb: the first one without the welcome block, `You arrive at loc N. `
stripped from the others, `OK.` for an action starting with `think:` (which still goes to the game, as in
the notebook, where it answers "Nothing happens."). Success = info['won'] when the episode ends.
"""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any

from slmkit.agents.base import Environment, StepResult, Task
from slmkit.errors import SlmkitError

from .data import SPLITS, react_config

# ReAct's prefix map (alfworld.ipynb): ALFRED task type prefix -> prompt key
PREFIXES = {
    "pick_and_place": "put",
    "pick_clean_then_place": "clean",
    "pick_heat_then_place": "heat",
    "pick_cool_then_place": "cool",
    "look_at_obj": "examine",
    "pick_two_obj": "puttwo",
}
NOTHING = "Nothing happens."
THINK_OK = "OK."


def task_type(name: str) -> str:
    """ReAct's prompt key for a game named `<task dir>/<trial>` (first matching prefix)."""
    for prefix, key in PREFIXES.items():
        if name.startswith(prefix):
            return key
    raise SlmkitError(f"alfworld game {name!r}: no ReAct task type for it (prefixes: {', '.join(PREFIXES)})")


def first_observation(raw: str) -> str:
    """The notebook's `'\\n'.join(ob.split('\\n\\n')[1:])`: the welcome banner dropped."""
    return "\n".join(raw.split("\n\n")[1:])


def process_observation(obs: str) -> str:
    """The notebook's process_ob: `You arrive at loc N. ` removed from the front."""
    if obs.startswith("You arrive at loc "):
        obs = obs[obs.find(". ") + 2:]
    return obs


@contextlib.contextmanager
def _quiet():
    """AlfredTWEnv prints banners and a tqdm bar while it collects games; keep them out of run output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def collect_games(root: Path, split: str, tw_env=None) -> list[tuple[str, Path]]:
    """(task id, game file) for every game AlfredTWEnv selects in `split`, sorted by id. The id is the game's
    path under json_2.1.1 without the file name, e.g. `valid_unseen/pick_and_place_simple-.../trial_T...`."""
    tw = tw_env if tw_env is not None else make_tw_env(root, split)
    base = (Path(root) / "json_2.1.1").resolve()
    games = []
    for file in tw.game_files:
        path = Path(file).resolve()
        games.append((path.parent.relative_to(base).as_posix(), path))
    return sorted(games)


def make_tw_env(root: Path, split: str):
    from alfworld.agents.environment import get_environment

    config = react_config(root)
    if split == "train":
        # AlfredTWEnv adds its handcoded expert to "train" under dagger; that expert speaks the newer
        # `move X to Y` grammar and is no use on these files: dqn keeps the same 50-step env without it.
        config["general"]["training_method"] = "dqn"
    with _quiet():
        return get_environment("AlfredTWEnv")(config, train_eval=split)


class AlfworldEnv(Environment):
    name = "alfworld"
    group_order = tuple(PREFIXES.values())  # results group episodes by task type, in ReAct's order

    def __init__(self, root: Path, split: str, tasks: list[Task], comparable: bool = True,
                 details: dict | None = None, tw_env=None, mode: str | None = None) -> None:
        self.root = Path(root)
        self.split = split
        self.mode = mode or split
        self.comparable = comparable
        self._tasks = tasks
        self.details = details or {}
        self._tw = tw_env if tw_env is not None else make_tw_env(self.root, split)
        self._gym = None
        self.task: Task | None = None
        self.admissible_commands: list[str] = []
        self.won = False
        self.done = False
        self.steps = 0
        self.goal = ""
        self.error: str | None = None

    # ---- Environment -----------------------------------------------------------------------------
    def spawn(self) -> "AlfworldEnv":
        return AlfworldEnv(self.root, self.split, self._tasks, self.comparable, self.details, copy.copy(self._tw),
                           self.mode)

    def tasks(self, limit: int | None = None) -> list[Task]:
        return self._tasks if limit is None else self._tasks[:limit]

    def gamefile(self, task: Task) -> Path:
        return self.root / "json_2.1.1" / task.id / "game.tw-pddl"

    def reset(self, task: Task) -> str:
        """Load the task's game; a game that fails to load raises SlmkitError (the loop records it on the
        episode and goes on with the next one)."""
        self.close()
        self.task, self.won, self.done, self.steps, self.error, self.goal = task, False, False, 0, None, ""
        self.admissible_commands = []
        gamefile = self.gamefile(task)
        try:
            tw = copy.copy(self._tw)
            tw.game_files = [str(gamefile)]
            with _quiet():
                self._gym = tw.init_env(batch_size=1)
                obs, infos = self._gym.reset()
        except Exception as exc:  # noqa: BLE001 - any failure inside textworld/alfworld is a load error
            self._gym = None
            self.error = f"game failed to load: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".rstrip(": ")
            raise SlmkitError(f"alfworld {task.id}: {self.error}") from None
        self.admissible_commands = list(infos["admissible_commands"][0])
        first = first_observation(obs[0])
        self.goal = next((line for line in first.split("\n") if line.startswith("Your task is to: ")), "")
        return first

    def step(self, action: str) -> StepResult:
        if self._gym is None:
            raise SlmkitError("alfworld: step() before a successful reset()")
        admissible = self.admissible_commands
        try:
            obs, _, dones, infos = self._gym.step([action])
        except Exception as exc:  # noqa: BLE001 - the game broke: end the episode, keep the reason
            self.error = f"{type(exc).__name__}: {exc}"
            self.done = True
            return StepResult(NOTHING, done=True, info={"error": self.error, "won": False})
        self.steps += 1
        observation = process_observation(obs[0])
        self.won, self.done = bool(infos["won"][0]), bool(dones[0])
        self.admissible_commands = list(infos["admissible_commands"][0])
        info: dict[str, Any] = {"won": self.won}
        if action.startswith("think:"):
            observation = THINK_OK
        elif observation == NOTHING:
            command = action.strip()
            info["invalid"] = True
            info["reason"] = ("empty action" if not command else
                              "not an admissible command" if command not in admissible else "no effect")
        return StepResult(observation, done=self.done, reward=float(self.won), info=info)

    def score(self, task: Task, history: list[StepResult]) -> dict[str, float]:
        # ReAct returns info['won'] of the step that ended the episode, 0 when 49 actions did not end it
        won = bool(history) and history[-1].done and bool(history[-1].info.get("won"))
        return {"success": float(won)}

    def episode_info(self) -> dict[str, Any]:
        info = {"type": self.task.data.get("type") if self.task else None, "goal": self.goal,
                "won": self.won, "env_steps": self.steps}
        if self.error:
            info["error"] = self.error
        return info

    def close(self) -> None:
        if self._gym is not None:
            with contextlib.suppress(Exception):
                self._gym.close()
            self._gym = None


def make_tasks(games: list[tuple[str, Path]]) -> list[Task]:
    tasks = []
    for game_id, _ in games:
        task_dir = game_id.split("/")[-2]
        tasks.append(Task(id=game_id, data={"type": task_type(game_id.split("/", 1)[1]), "task": task_dir.split("-")[0]}))
    return tasks


__all__ = ["AlfworldEnv", "PREFIXES", "SPLITS", "collect_games", "first_observation", "process_observation", "task_type"]
