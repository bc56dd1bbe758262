"""ALFWorld (Shridhar et al. 2021) text games on ReAct's protocol: `load_environment` gives the env and format.

    env, fmt = load_environment()                                 # 134 eval_out_of_distribution games
    env, fmt = load_environment("eval_in_distribution")           # 140 valid_seen games
    env, fmt = load_environment(types="heat,cool", limit=4)       # a subset
    env, fmt = load_environment(data="~/alfworld_data")           # an official $ALFWORLD_DATA folder

Needs the `agents` extra (alfworld==0.4.2, textworld==1.7.0). The game files come from SLMKIT_DATA/alfworld,
unpacked once into SLMKIT_CACHE (see .data). Tasks are the games AlfredTWEnv selects with ReAct's config,
sorted by id (`valid_unseen/<task dir>/<trial>`); Task.data = {"type": put|clean|heat|cool|examine|puttwo,
"task": the ALFRED task type}. Per-episode metric: {"success": info['won']}; per type: group the episodes
by task["type"] (`per_type`).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from slmkit.agents.groups import group_scores
from slmkit.errors import SlmkitError

from .data import SPLITS, alfworld_data_dir, check_root, resolve_split
from .env import PREFIXES, AlfworldEnv, collect_games, make_tasks, make_tw_env
from .react_format import MAX_ACTIONS, STYLES, AlfworldFormat, load_prompts

TYPES = tuple(PREFIXES.values())
_OPTIONS = {"data", "types", "limit", "prompt", "prompts", "rebuild", "max_actions"}


def _types(value) -> tuple[str, ...] | None:
    if value is None:
        return None
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v.strip()]
    bad = [v for v in items if v not in TYPES]
    if bad or not items:
        raise SlmkitError(f"alfworld: types={value!r}: expected a comma list of {', '.join(TYPES)}")
    return tuple(items)


def _limit(value, name: str = "limit") -> int | None:
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise SlmkitError(f"alfworld: {name}={value!r} is not a whole number") from None
    if n < 1:
        raise SlmkitError(f"alfworld: {name}={value!r} must be at least 1")
    return n


def load_environment(split: str = "eval_out_of_distribution", **options) -> tuple[AlfworldEnv, AlfworldFormat]:
    """(AlfworldEnv, AlfworldFormat) for `slmkit agent run alfworld MODEL [--option KEY=VALUE ...]`.

    split: eval_out_of_distribution (valid_unseen, 134 games; default) | eval_in_distribution (valid_seen,
      140) | train (ExpeL's 200-game subset of train, not an official split: results not comparable);
      aliases valid_unseen, valid_seen, valid_train, ood, id.
    options (strings are accepted, as the CLI passes them):
      data=DIR     an $ALFWORLD_DATA folder (json_2.1.1/..., logic/) instead of the shared tars;
      types=LIST   only these task types, comma separated (put,clean,heat,cool,examine,puttwo);
      limit=N      the first N tasks (after `types`);
      prompt=react (default) | act   ReAct's prompts or its Act-only baseline's;
      prompts=FILE another alfworld_3prompts.json;
      rebuild=1    unpack the shared tars again;
      max_actions=N  model actions per game (ReAct: 49; fewer for a quick look, results not comparable).
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise SlmkitError(f"alfworld: unknown option(s) {', '.join(sorted(unknown))} (known: split, {', '.join(sorted(_OPTIONS))})")
    split = resolve_split(split)
    style = options.get("prompt") or "react"
    if style not in STYLES:
        raise SlmkitError(f"alfworld: prompt={style!r} is not one of {', '.join(STYLES)}")
    types = _types(options.get("types"))
    limit = _limit(options.get("limit"))
    rebuild = str(options.get("rebuild", "")).lower() in ("1", "true", "yes")
    if options.get("data"):
        root = check_root(Path(str(options["data"])), split)
        source = str(root)
    else:
        root = check_root(alfworld_data_dir(rebuild=rebuild), split)
        source = "SLMKIT_DATA/alfworld (json_2.1.1, ExpeL's copy of the ALFWorld game files)"
    fmt = AlfworldFormat(load_prompts(options.get("prompts")), style)
    max_actions = _limit(options.get("max_actions"), "max_actions")
    if max_actions is not None:
        fmt.max_steps = max_actions
    tw = make_tw_env(root, split)
    games = collect_games(root, split, tw)
    if not games:
        raise SlmkitError(f"alfworld data {root}: AlfredTWEnv found no solvable games in {SPLITS[split]}/")
    tasks = make_tasks(games)
    if types:
        tasks = [t for t in tasks if t.data["type"] in types]
    if limit:
        tasks = tasks[:limit]
    details = {"split": split, "folder": f"json_2.1.1/{SPLITS[split]}", "games": len(tasks), "data": source,
               "types": dict(sorted(Counter(t.data["type"] for t in tasks).items())), "prompt": style,
               "max_actions": fmt.max_steps}
    reacts = fmt.max_steps == MAX_ACTIONS
    mode = (split if style == "react" else f"{split}-act") + ("" if reacts else f"-{fmt.max_steps}-actions")
    env = AlfworldEnv(root, split, tasks, comparable=split != "train" and style == "react" and reacts, details=details,
                      tw_env=tw, mode=mode)
    if not reacts:
        env.not_comparable_because = f"{fmt.max_steps} model actions per game, not ReAct's {MAX_ACTIONS}"
    elif split == "train":
        env.not_comparable_because = "ExpeL's 200-game subset of ALFWorld's train split, not an evaluation split"
    return env, fmt


def per_type(records: list[dict], metric: str = "success") -> dict[str, dict[str, float]]:
    """{type: {"episodes": n, metric: mean ×100}} over run records (each with task["type"] and metrics),
    in ReAct's type order."""
    return {k: {"episodes": v["episodes"], metric: v.get(metric, 0.0)} for k, v in group_scores(records, "type", TYPES).items()}


__all__ = ["load_environment", "per_type", "AlfworldEnv", "AlfworldFormat", "TYPES"]
