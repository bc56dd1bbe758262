"""Reference policies played through the same `AlfworldEnv` and scorer as a model: an oracle planner and a
seeded random policy, plus `play`, the loop that runs any policy over tasks.

Planner: each game's PDDL problem is solved by TextWorld's PDDL planner (Fast Downward, `policy_commands`
of a second TextWorld instance of the same game file, with alfworld's name wrappers so the plan speaks the
game's own command grammar: `go to X`, `take X from Y`, `put X in/on Y`, `open X`, `heat X with Y`, ...).
The plan is then played step by step in the episode env; every command is checked against that env's
admissible commands first. alfworld 0.4.2's handcoded expert is not used: it speaks the newer grammar
(`move X to Y`) of the json_2.1.2 files.

Random: uniformly one of the env's admissible commands each step, from `random.Random(f"{seed}:{task id}")`
(the same actions for a task whatever the order or parallelism), for ReAct's 49 actions.
"""

from __future__ import annotations

import contextlib
import random
import time
from typing import Callable, Iterable

from slmkit.agents.base import Task

from .env import AlfworldEnv, _quiet
from .react_format import MAX_ACTIONS


def plan_commands(gamefile) -> list[str]:
    """Fast Downward's plan for the game file, in the game's command grammar (empty if none is found)."""
    import textworld
    from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

    infos = textworld.EnvInfos(policy_commands=True, won=True)
    with _quiet():
        env = textworld.start(str(gamefile), request_infos=infos, wrappers=[AlfredDemangler(shuffle=False), AlfredInfos])
        try:
            state = env.reset()
            return list(state["policy_commands"] or [])
        finally:
            with contextlib.suppress(Exception):
                env.close()


class PlannerPolicy:
    """Plays Fast Downward's plan; stops (fails) at a plan command the env does not admit."""

    name = "planner"

    def __init__(self) -> None:
        self.plan: list[str] = []
        self.problem: str | None = None

    def start(self, env: AlfworldEnv, task: Task, first_observation: str) -> None:
        self.plan = plan_commands(env.gamefile(task))
        self.problem = None if self.plan else "the planner found no plan"

    def act(self, env: AlfworldEnv, step: int) -> str | None:
        if step > len(self.plan):
            self.problem = self.problem or "plan ended without a win"
            return None
        command = self.plan[step - 1]
        if command not in env.admissible_commands:
            self.problem = f"plan step {step} {command!r} is not admissible"
            return None
        return command


class RandomPolicy:
    """Uniform over the admissible commands, seeded per task."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.problem: str | None = None

    def start(self, env: AlfworldEnv, task: Task, first_observation: str) -> None:
        self.rng = random.Random(f"{self.seed}:{task.id}")

    def act(self, env: AlfworldEnv, step: int) -> str | None:
        return self.rng.choice(sorted(env.admissible_commands)) if env.admissible_commands else None


def play(env: AlfworldEnv, policy, tasks: Iterable[Task], max_actions: int = MAX_ACTIONS,
         on_done: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `policy` on each task through env.reset/step/score; one record per task. A game that fails to
    load or breaks is recorded (record["error"]) and the next task runs."""
    records = []
    for task in tasks:
        t0 = time.perf_counter()
        rec: dict = {"task_id": task.id, "task": task.data, "actions": [], "observations": []}
        history = []
        try:
            first = env.reset(task)
            rec["first_observation"] = first
            policy.start(env, task, first)
            for step in range(1, max_actions + 1):
                action = policy.act(env, step)
                if action is None:
                    break
                result = env.step(action)
                history.append(result)
                rec["actions"].append(action)
                rec["observations"].append(result.observation)
                if result.info.get("error"):
                    rec["error"] = result.info["error"]
                if result.done:
                    break
            rec["metrics"] = env.score(task, history)
            if getattr(policy, "problem", None) and not rec["metrics"]["success"]:
                rec["problem"] = policy.problem
        except Exception as exc:  # noqa: BLE001 - one broken game is recorded, the others still run
            rec["error"] = f"{type(exc).__name__}: {exc}"
            rec["metrics"] = {"success": 0.0}
        rec["steps"] = len(rec["actions"])
        rec["seconds"] = round(time.perf_counter() - t0, 3)
        records.append(rec)
        if on_done is not None:
            on_done(rec)
    env.close()
    return records
