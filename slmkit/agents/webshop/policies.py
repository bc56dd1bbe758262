"""Reference policies that play WebShop through the same env and scorer as a model does.

oracle: search the instruction (then the target's name if the target is not on the first page), click the
target, click each goal option, buy. It must score reward 1.0 on every derived-catalog task: that proves the
catalog, search, pages, clicks and reward agree. random: a seeded player that searches the instruction,
then clicks uniformly among what the page offers (products, options, sub pages, Back to Search, < Prev,
Buy Now) until it buys or ReAct's 14 actions are spent.
"""

from __future__ import annotations

import random

from slmkit.agents.base import StepResult, Task

from .env import WebShopEnv
from .tasks import instruction_body



def _run(env: WebShopEnv, task: Task, actions, max_steps: int) -> tuple[list[str], list[StepResult]]:
    observation = env.reset(task)
    done_actions, history = [], []
    for _ in range(max_steps):
        action = actions(observation)
        if action is None:
            break
        result = env.step(action)
        done_actions.append(action)
        history.append(result)
        observation = result.observation
        if result.done:
            break
    return done_actions, history


def oracle_episode(env: WebShopEnv, task: Task, max_steps: int = 14) -> tuple[list[str], list[StepResult]]:
    goal = task.data["goal"]
    queries = [instruction_body(goal["instruction_text"]), goal["name"]]
    target = goal["asin"]
    pending: list[str] = []

    def actions(observation: str) -> str | None:
        if pending:
            return pending.pop(0)
        if env.page.page_type == "init":
            return f"search[{queries.pop(0)}]" if queries else None
        if env.page.page_type == "search":
            if target in env.page_asins:
                pending.extend([f"click[{o}]" for o in goal["goal_options"]] + ["click[Buy Now]"])
                return f"click[{target}]" if env.client == "react" else f"click[{target.lower()}]"
            return "click[Back to Search]"
        return None

    return _run(env, task, actions, max_steps)


def page_buttons(env: WebShopEnv) -> list[str]:
    """Everything clickable on the current page, as click[...] actions the env accepts."""
    page = env.page
    names = [n.text for n in page.nodes if n.kind in ("button", "link", "label")]
    if page.page_type == "init":
        return []
    if env.client == "react":
        names = [n for n in names if n != "Next >" and not (n == "< Prev" and page.page_type == "search")]
    return [f"click[{n}]" for n in names]


def random_episode(env: WebShopEnv, task: Task, seed: int, max_steps: int = 14) -> tuple[list[str], list[StepResult]]:
    rng = random.Random(f"{seed}/{task.id}")
    query = instruction_body(task.data["goal"]["instruction_text"])

    def actions(observation: str) -> str:
        if env.page.page_type == "init":
            return f"search[{query}]"
        return rng.choice(page_buttons(env))

    return _run(env, task, actions, max_steps)
