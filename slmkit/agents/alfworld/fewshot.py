"""ReAct's few-shot ALFWorld trajectories (alfworld_3prompts.json) replayed in the real games, where the game
a trajectory was recorded on is among the game files here.

A prompt `react_{type}_{n}` is a first observation (room + `Your task is to: ...`) followed by `> action`
lines, each with the game's answer on the next line (the think lines answer `OK.`, some were edited out by
ReAct's authors). `find_game` looks for the game: the task folders whose ALFRED parameters (object, target
receptacle or lamp) are named in the task sentence, across every split here, whose first observation is
exactly the prompt's, on which `replay` (the trajectory's actions played in the game) gives every recorded
answer. Trials of one task in one room start alike, so a same-start game whose answers differ is another
trial (other object placements), not the recorded game.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from slmkit.agents.base import Task
from slmkit.paths import read_json

from .data import SPLITS
from .env import PREFIXES, AlfworldEnv, first_observation

KIND_PREFIX = {v: k for k, v in PREFIXES.items()}


@dataclass
class FewShot:
    key: str
    kind: str
    first_observation: str
    steps: list[tuple[str, list[str]]] = field(default_factory=list)  # (action, the lines recorded after it)

    @property
    def task_line(self) -> str:
        return self.first_observation.split("\n")[-1]


def parse_fewshot(key: str, text: str) -> FewShot:
    lines = text.rstrip("\n").split("\n")
    shot = FewShot(key=key, kind=key.split("_")[1], first_observation="\n".join(lines[:2]))
    for n, line in enumerate(lines[2:], 3):
        if line.startswith(">"):
            shot.steps.append((line[1:].strip(), []))  # `> action` (a few lines have no space after '>')
        elif shot.steps:
            shot.steps[-1][1].append(line)
        else:
            raise ValueError(f"{key}: line {n} comes before any action: {line[:60]!r}")
    return shot


def react_fewshots(prompts: dict[str, str], style: str = "react") -> list[FewShot]:
    return [parse_fewshot(k, v) for k, v in prompts.items() if k.startswith(f"{style}_")]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def candidates(root: Path, shot: FewShot) -> list[str]:
    """Game ids (split folder/task folder/trial) whose task type and ALFRED parameters fit the task line."""
    words = _words(shot.task_line)
    prefix = KIND_PREFIX[shot.kind]
    out = []
    for folder in sorted(set(SPLITS.values())):
        base = Path(root) / "json_2.1.1" / folder
        if not base.is_dir():
            continue
        for task_dir in sorted(p for p in base.iterdir() if p.name.startswith(prefix)):
            params = task_dir.name.split("-")  # type-Object-Mrecep-Parent-scene
            if len(params) < 5 or params[1].lower() not in words:
                continue
            if params[3].lower() not in words and not (shot.kind == "examine"):
                continue
            for trial in sorted(task_dir.iterdir()):
                if (trial / "game.tw-pddl").is_file() and read_json(trial / "game.tw-pddl").get("solvable"):
                    out.append(f"{folder}/{task_dir.name}/{trial.name}")
    return out


def find_games(env: AlfworldEnv, shot: FewShot) -> tuple[list[str], int]:
    """(candidate games whose first observation equals the prompt's, number of candidates loaded). Trials
    of one task in one room share their first observation, so `replay` decides which (if any) it is."""
    ids = candidates(env.root, shot)
    same = []
    for game_id in ids:
        try:
            first = env.reset(Task(id=game_id, data={"type": shot.kind}))
        except Exception:  # noqa: BLE001 - a candidate that does not load is not the game
            continue
        if first == shot.first_observation:
            same.append(game_id)
    return same, len(ids)


def find_game(env: AlfworldEnv, shot: FewShot) -> dict:
    """The trajectory's game: a candidate with the same first observation on which every recorded answer
    replays. Returns {"key", "candidates", "same_start": [ids], "game": id or None, "replay": best replay}."""
    same, tried = find_games(env, shot)
    best = None
    for game_id in same:
        result = replay(env, game_id, shot)
        if best is None or len(result["mismatches"]) < len(best["mismatches"]):
            best = result
        if not result["mismatches"]:
            break
    game = best["game"] if best and not best["mismatches"] else None
    return {"key": shot.key, "candidates": tried, "same_start": same, "game": game, "replay": best}


def replay(env: AlfworldEnv, game_id: str, shot: FewShot) -> dict:
    """Play the trajectory's actions in the game and compare the answers. The game's answers to the
    non-think actions must equal, in order, the recorded lines other than `OK.` (ReAct's authors moved a
    few answers below an inserted think line); `positional` counts answers not right after their action."""
    task = Task(id=game_id, data={"type": shot.kind})
    first = env.reset(task)
    game, positional, result = [], 0, None
    for action, lines in shot.steps:
        result = env.step(action)
        if not action.startswith("think:"):
            game.append(result.observation)
            positional += lines[:1] != [result.observation]
    recorded = [line for _, lines in shot.steps for line in lines if line != "OK."]
    mismatches = [{"answer": n, "recorded": r, "game": g}
                  for n, (r, g) in enumerate(zip(recorded, game), 1) if r != g]
    if len(recorded) != len(game):
        mismatches.append({"answers_recorded": len(recorded), "answers_game": len(game)})
    return {"key": shot.key, "game": game_id, "first_observation_matches": first == shot.first_observation,
            "actions": len(shot.steps), "answers": len(game), "mismatches": mismatches, "moved_answers": positional,
            "won": bool(result and result.info.get("won")), "done": bool(result and result.done)}


__all__ = ["FewShot", "parse_fewshot", "react_fewshots", "candidates", "find_games", "find_game", "replay"]
