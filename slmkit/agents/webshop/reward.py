"""WebShop's reward, rule for rule as web_agent_site/engine/goal.py computes it.

    reward = r_type * (attribute matches + option matches + [price <= price_upper])
                    / (len(goal attributes) + len(goal options) + 1)

Fuzzy matches use thefuzz's `token_set_ratio` (goal.py imports thefuzz) scored > 85: the strings are
ASCII-dammed (chars 128-255 dropped), every non-alphanumeric char becomes a space, lower-cased and stripped,
and the rapidfuzz score is rounded to an int, as thefuzz>=0.20 does. r_type needs the nouns of two
product names (goal.py: spaCy en_core_web_sm, tokens tagged NOUN/PROPN); the noun extractor is passed in
(see nouns.py) so the rule itself stays a pure function.
"""

from __future__ import annotations

from typing import Callable, Iterable

from rapidfuzz import fuzz
from rapidfuzz.utils import default_process

# web_agent_site/engine/normalize.py: the first of these found as a substring is "the" colour
COLOR_SET = (
    "alabaster", "apricot", "aqua", "ash", "asphalt", "azure", "banana", "beige", "black", "blue", "blush",
    "bordeaux", "bronze", "brown", "burgundy", "camel", "camo", "caramel", "champagne", "charcoal", "cheetah",
    "chestnut", "chocolate", "christmas", "coffee", "cognac", "copper", "coral", "cranberry", "cream",
    "crystal", "dark", "denim", "eggplant", "elephant", "espresso", "fuchsia", "gold", "granite", "grape",
    "graphite", "grass", "gray", "green", "grey", "heather", "indigo", "ivory", "ivy", "khaki", "lavender",
    "lemon", "leopard", "light", "lilac", "lime", "magenta", "maroon", "mauve", "merlot", "midnight", "mint",
    "mocha", "multicolor", "mushroom", "mustard", "natural", "navy", "nude", "olive", "orange", "peach",
    "pewter", "pink", "plum", "purple", "rainbow", "red", "rose", "royal", "rust", "sand", "sapphire",
    "seashell", "silver", "skull", "slate", "steel", "stone", "stonewash", "sunflower", "tan", "taupe",
    "teal", "tiger", "turquoise", "violet", "walnut", "wheat", "white", "wine", "yellow",
)

FUZZY_THRESHOLD = 85  # goal.py: `if score > 85`
NOUN_TAGS = ("PNOUN", "NOUN", "PROPN")  # goal.py's test, PNOUN (not a spaCy tag) included as written

_ASCII_DAMMIT = {i: None for i in range(128, 256)}

NounFn = Callable[[str], list[str]]


def normalize_color(text: str) -> str:
    """The first COLOR_SET word occurring anywhere in `text` (substring test), else `text` unchanged."""
    for color in COLOR_SET:
        if color in text:
            return color
    return text


def token_set_ratio(a: str, b: str) -> int:
    """thefuzz.fuzz.token_set_ratio(a, b) with its defaults (force_ascii=True, full_process=True)."""
    a = default_process(str(a).translate(_ASCII_DAMMIT))
    b = default_process(str(b).translate(_ASCII_DAMMIT))
    return int(round(fuzz.token_set_ratio(a, b)))


def type_reward(purchased: dict, goal: dict, nouns: NounFn) -> dict:
    """goal.py get_type_reward: same query, >= 2 shared category levels, or the share of the goal name's
    nouns found in the bought name; r_type 1.0 / 0.5 / 0.1 / 0.0."""
    query_match = purchased["query"] == goal["query"]
    bought_cats = {x.strip() for x in purchased["product_category"].split("›")}
    goal_cats = {x.strip() for x in goal["product_category"].split("›")}
    category_match = len(bought_cats & goal_cats) >= 2
    bought_nouns = nouns(purchased["name"])
    goal_nouns = nouns(goal["name"])
    title_score = 0.2 if not goal_nouns else len(set(bought_nouns) & set(goal_nouns)) / len(goal_nouns)
    r_type = 1.0
    if not (query_match or category_match or title_score > 0.2):
        r_type = 0.5
    if title_score < 0.1:
        r_type = 0.1
    if title_score == 0.0:
        r_type = 0.0
    return {"r_type": r_type, "query_match": query_match, "category_match": category_match,
            "title_score": title_score}


def attribute_matches(purchased: dict, goal_attributes: list[str]) -> int:
    """goal.py get_attribute_reward: a goal attribute counts if it fuzzy-matches one of the product's
    Attributes, or occurs verbatim in its lower-cased Title, joined BulletPoints or Description."""
    title = purchased["Title"].lower()
    bullets = " ".join(purchased["BulletPoints"]).lower()
    description = purchased["Description"].lower()
    count = 0
    for g_attr in goal_attributes:
        if any(token_set_ratio(p_attr, g_attr) > FUZZY_THRESHOLD for p_attr in purchased["Attributes"]):
            count += 1
        elif g_attr in title or g_attr in bullets or g_attr in description:
            count += 1
    return count


def option_matches(purchased_options: Iterable[str], goal_options: Iterable) -> int:
    """goal.py get_option_reward: colours normalised on both sides, then one fuzzy hit per goal option."""
    bought = [normalize_color(o) for o in purchased_options]
    wanted = [normalize_color(o) for o in goal_options]
    return sum(1 for g in wanted if any(token_set_ratio(p, g) > FUZZY_THRESHOLD for p in bought))


def get_reward(purchased: dict, goal: dict, price: float, options: dict, nouns: NounFn) -> tuple[float, dict]:
    """The episode reward for buying `purchased` at `price` with the chosen `options` {name: value}, and
    the parts goal.py reports with verbose=True."""
    type_info = type_reward(purchased, goal, nouns)
    r_price = (price <= goal["price_upper"]) if goal["price_upper"] > 0 else None
    attrs = goal["attributes"]
    n_attr = attribute_matches(purchased, attrs)
    goal_options = goal["goal_options"]
    goal_options = list(goal_options.items()) if isinstance(goal_options, dict) else list(goal_options)
    n_opt = option_matches(list(options.values()), goal_options)
    denominator = len(attrs) + len(goal_options) + 1
    # goal.py adds r_price as-is (a bool; None would raise there, and here)
    reward = (n_attr + n_opt + r_price) / denominator * type_info["r_type"]
    info = {
        "r_type": type_info["r_type"],
        "r_att": n_attr / len(attrs),
        "w_att": len(attrs) / denominator,
        "query_match": type_info["query_match"],
        "category_match": type_info["category_match"],
        "title_score": type_info["title_score"],
    }
    if goal_options:
        info["r_option"] = n_opt / len(goal_options)
        info["w_option"] = len(goal_options) / denominator
    if r_price is not None:
        info["r_price"] = r_price
        info["w_price"] = 1 / denominator
    return reward, info
