"""The 100 ExpeL WebShop tasks (ReAct's and ExpeL's `fixed_0..99` sessions) and their reward goals.

Each ExpeL record gives the instruction text (ending ", and price lower than X dollars \\n[Search]\\n"), the
target asin, its name and WebShop query, and the goal options. goal.py also needs the goal attributes
(items_human_ins.json `instruction_attributes`), the product category and the price bound: `goal_for`
takes them from the catalog, the bound from the text (no price clause -> 1000000, as get_human_goals).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.paths import read_json

from .catalog import Catalog

EXPEL_FILE = "expel_webshop_fixed100.json"
NO_PRICE_BOUND = 1000000
PRICE_RANGE = [10.0 * i for i in range(1, 100)]  # goal.py
_PRICE_CLAUSE = re.compile(r", and price lower than (\d+(?:\.\d+)?) dollars\s*$")


def split_instruction(text: str) -> tuple[str, float]:
    """ExpeL task text -> (instruction_text as WebShop shows it, price_upper)."""
    text = text.replace("\n[Search]\n", "").strip()
    m = _PRICE_CLAUSE.search(text)
    return text, (float(m.group(1)) if m else float(NO_PRICE_BOUND))


def instruction_body(instruction_text: str) -> str:
    """The instruction without its price clause (what items_human_ins.json stores as `instruction`)."""
    return _PRICE_CLAUSE.sub("", instruction_text).strip()


def load_expel_tasks(webshop_data: Path) -> list[dict]:
    records = read_json(webshop_data / EXPEL_FILE)
    tasks = []
    for i, rec in enumerate(records):
        try:
            key = rec["key"]
            text, price_upper = split_instruction(rec["task"])
            tasks.append({"id": rec["session_idx"], "instruction_text": text, "price_upper": price_upper,
                          "asin": key["asin"], "name": key["name"], "query": key["query"].lower().strip(),
                          "goal_options": list(key["goal_options"])})
        except (KeyError, TypeError):
            raise SlmkitError(f"{webshop_data / EXPEL_FILE}: record {i} lacks task/session_idx/key fields") from None
    return tasks


def _same_text(a: str, b: str) -> bool:
    return " ".join(a.lower().split()).strip(".") == " ".join(b.lower().split()).strip(".")


def goal_for(task: dict, catalog: Catalog) -> dict:
    """The goal dict goal.py scores against, for an ExpeL task over `catalog`."""
    product = catalog.by_asin.get(task["asin"])
    if product is None:
        raise SlmkitError(f"catalog {catalog.folder}: task {task['id']}'s target {task['asin']} is not in it "
                          "(the ExpeL tasks need WebShop's full catalog or the derived one; "
                          "use tasks='webshop' for a catalog's own human goals)")
    body = instruction_body(task["instruction_text"])
    matches = [g for g in catalog.human_ins.get(task["asin"], []) if _same_text(g.get("instruction", ""), body)]
    if not matches or not matches[0].get("instruction_attributes"):
        raise SlmkitError(f"catalog {catalog.folder}: items_human_ins.json has no goal for {task['asin']} "
                          f"with instruction {body[:60]!r}... (task {task['id']}), so its attributes are unknown")
    return {
        "asin": task["asin"],
        "category": product["category"],
        "query": product["query"],
        "name": product["name"],
        "product_category": product["product_category"],
        "instruction_text": task["instruction_text"],
        "attributes": list(matches[0]["instruction_attributes"]),
        "price_upper": task["price_upper"],
        "goal_options": list(task["goal_options"]),
    }


def webshop_goals(catalog: Catalog, seed: int = 233) -> list[dict]:
    """A catalog's own human goals as get_human_goals builds them (attribute-less ones skipped, a price
    bound drawn from the 2 of the next 4 tens above the price), shuffled with random.seed(233) as the
    server does, so goal i is session fixed_i. The price draw is seeded here (WebShop's is not)."""
    rng = random.Random(seed)
    goals = []
    for product in catalog.products:
        for ins in catalog.human_ins.get(product["asin"], []):
            if not ins.get("instruction_attributes"):
                continue
            price = catalog.prices[product["asin"]]
            price_range = [p for p in PRICE_RANGE if p > price][:4]
            if len(price_range) >= 2:
                _, price_upper = sorted(rng.sample(price_range, 2))
                price_text = f", and price lower than {price_upper:.2f} dollars"
            else:
                price_upper, price_text = NO_PRICE_BOUND, ""
            goals.append({
                "asin": product["asin"], "category": product["category"], "query": product["query"],
                "name": product["name"], "product_category": product["product_category"],
                "instruction_text": ins["instruction"].strip(".") + price_text,
                "attributes": list(ins["instruction_attributes"]), "price_upper": float(price_upper),
                "goal_options": ins.get("instruction_options", []),
            })
    random.Random(233).shuffle(goals)
    for i, goal in enumerate(goals):
        goal["id"] = f"fixed_{i}"
    return goals
