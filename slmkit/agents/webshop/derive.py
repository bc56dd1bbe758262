"""The derived WebShop catalog: built from the real pieces we have, because the standard one is not here.

WebShop's items_shuffle_1000.json / items_human_ins.json cannot be fetched offline (see the data's
SOURCE.md). What is here: the 100 ExpeL tasks (instruction, target asin, name, query, goal options), the
12,087 human goal texts (same order as the tasks: goal i is session fixed_i), and items_ins_v2_1000.json
(the real attribute lists of WebShop's 1,000-product catalog). From those, deterministically (seeded):

  * one target per task: its real asin, name and query; goal attributes = the WebShop attribute phrases
    (items_ins_v2 vocabulary) found in the instruction, else its first two-word content phrase; options
    holding each goal option plus values taken from other goals; one price below the task's bound;
  * two near misses per task where they apply: the same product over the price bound, and the same product
    whose options lack the goal values (a model that skips price or options loses reward, as in WebShop);
  * the 415 products of items_ins_v2_1000.json that carry a synthetic instruction: real asin, real
    attributes, their query parsed from the instruction;
  * human-goal products up to 1,000 in all (WebShop's small-catalog size): human goals 100+ (never a
    task's own goal), each made into a product (title from the text, attributes and colour/size options
    found in it, the real query it shares most words with).

Written in the standard files (items_shuffle_1000.json, items_ins_v2_1000.json, items_human_ins.json) plus
DERIVED.json (seed, input hashes, counts, each product's role). Every result on it is "derived catalog,
not comparable". docs/results/webshop-catalog.md describes it for readers.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.paths import atomic_dir, atomic_write_json, cache_dir, data_dir, read_json, sha256_file

from .reward import COLOR_SET, FUZZY_THRESHOLD, normalize_color, token_set_ratio
from .tasks import EXPEL_FILE, NO_PRICE_BOUND, instruction_body, load_expel_tasks

VERSION = 2
DEFAULT_SEED = 233
CATALOG_SIZE = 1000
HUMAN_GOALS = "human_goals.json"
ATTRIBUTES = "items_ins_v2_1000.json"

# words that start a shopper's request, dropped to make a title from it
_LEAD = re.compile(
    r"^(?:hey|hi|hello|please|ok|so)?[ ,]*(?:(?:i\s*'?\s*a?m|im|i|we|you|can you|could you|would you|please)\s+)?"
    r"(?:(?:also|really|just|now|currently|actually)\s+)?"
    r"(?:looking for|look for|searching for|search for|find(?: me)?|get(?: me)?|locate|buy|need|want|would like"
    r"|wish|trying to find|shopping for|seeking|in search of|interested in|in need of)?"
    r"(?:\s+(?:to (?:buy|get|find|purchase|have)|to|me))?\s*(?:(?:a|an|the|some|one|two|a pair of|a set of)\s+)?",
    re.I,
)
# where a request stops describing the product ("... seedbars. please choose ...", "... and it should ...")
_CUT = re.compile(r"[.;!?](?=\s|[a-z]|$)|\s(?:please|also|and (?:i|it)|it should|make sure|i want it|i need it)\s", re.I)
_SMALL_WORDS = {"a", "an", "and", "as", "at", "but", "by", "for", "in", "of", "on", "or", "the", "to", "with"}
_STOP = set("a an and are as at be but by for if in into is it no not of on or such that the their then there these "
            "they this to was will with i im i'm me my we our you your need want would like looking look find get "
            "buy some also it's its which can should must has have having very more less than one".split())
_SIZE_WORDS = ("xx-large", "x-large", "x-small", "small", "medium", "large", "queen", "twin", "full", "king",
               "one size", "pack of")
_SIZE_PHRASE = re.compile(
    r"\b(?:size\s+\d+(?:\.\d+)?(?:\s*(?:wide|narrow|x-wide))?|\d+(?:\.\d+)?\s*(?:fl\.?\s*oz|ounces?|oz|inch(?:es)?"
    r"|in|feet|foot|ft|pounds?|lbs?|ml|liters?|gb|tb|mm|cm|pcs|pieces|count|pack)\b(?:\s*\(pack of \d+\))?"
    r"|pack of \d+|(?:xx?-)?(?:small|large)|medium)",
    re.I,
)
# values a size option can take besides the wanted one (shop-page style, lower case, no '/')
_SIZE_POOL = ("small", "medium", "large", "x-large", "xx-large", "3x-large", "5", "6", "7", "7.5", "8", "8.5",
              "9", "10", "11", "12", "pack of 1", "pack of 2", "pack of 3", "pack of 6", "1 count (pack of 1)",
              "12 count (pack of 1)", "8 ounce (pack of 1)", "16 ounce (pack of 1)", "32 ounce (pack of 2)",
              "2 feet", "6 feet", "10 feet", "one size", "queen", "king", "twin", "full")
_OPTION_NAMES = ("color", "size", "style", "pattern name", "flavor name", "item package quantity")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _norm(text: str) -> str:
    return " " + " ".join(_words(text)) + " "


def _rng(seed: int, *parts) -> random.Random:
    """An RNG for one item, independent of the order items are built in."""
    digest = hashlib.sha256(repr((seed,) + parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def derived_asin(seed: int, *parts) -> str:
    """'D' + 9 base-36 chars: the shape of an asin, never a real one (real ones start B0 or are ISBNs)."""
    n = int.from_bytes(hashlib.sha256(repr((seed,) + parts).encode()).digest()[:8], "big")
    chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out = ""
    for _ in range(9):
        n, r = divmod(n, 36)
        out += chars[r]
    return "D" + out


class AttributeVocabulary:
    """WebShop's own attribute phrases (items_ins_v2), found in free text longest-first without overlap."""

    def __init__(self, attributes: dict):
        phrases = sorted({a for v in attributes.values() for a in v.get("attributes", [])})
        self.phrases = sorted(((p, _norm(p)) for p in phrases), key=lambda x: (-len(x[1]), x[0]))

    def find(self, text: str) -> list[str]:
        norm = _norm(text)
        taken: list[tuple[int, int]] = []
        found: list[tuple[int, str]] = []
        for phrase, key in self.phrases:
            start = norm.find(key)
            while start >= 0:
                end = start + len(key)
                if all(end <= a or start >= b for a, b in taken):
                    taken.append((start, end))
                    found.append((start, phrase))
                    break
                start = norm.find(key, start + 1)
        return [p for _, p in sorted(found)]


def fallback_attribute(body: str) -> str:
    """A goal needs >= 1 attribute (goal.py divides by their count): the first two adjacent content words
    of the request that are neither colours, sizes, numbers, one letter nor stop words."""
    words = _words(_LEAD.sub("", body, count=1))

    def content(w: str) -> bool:
        return (len(w) > 1 and w not in _STOP and w not in COLOR_SET and w not in _SIZE_WORDS
                and w not in ("size", "women", "men", "womens", "mens") and not any(c.isdigit() for c in w))

    for a, b in zip(words, words[1:]):
        if content(a) and content(b):
            return f"{a} {b}"
    picked = [w for w in words if content(w)]
    if not picked:
        raise SlmkitError(f"derived catalog: no attribute phrase in goal {body!r}")
    return picked[0]


def option_kind(value: str) -> str:
    if any(color in value for color in COLOR_SET):
        return "color"
    if any(w in value for w in _SIZE_WORDS) or any(c.isdigit() for c in value):
        return "size"
    return "style"


def _conflicts(value: str, wanted: list[str]) -> bool:
    """True when choosing `value` would count as one of the wanted options (goal.py's option match)."""
    v = normalize_color(value)
    return any(token_set_ratio(v, normalize_color(w)) > FUZZY_THRESHOLD for w in wanted)


def _alternatives(rng: random.Random, pool: list[str], wanted: list[str], k: int) -> list[str]:
    picks: list[str] = []
    for value in rng.sample(pool, len(pool)):
        if len(picks) == k:
            break
        if value not in picks and not _conflicts(value, wanted + picks):
            picks.append(value)
    return picks


def _title(text: str) -> str:
    words = text.split()
    out = [w if (i and w.lower() in _SMALL_WORDS) else (w[:1].upper() + w[1:]) for i, w in enumerate(words)]
    return " ".join(out)


def _money(value: float) -> str:
    return f"${value:.2f}"


def _describe(name: str, attributes: list[str]) -> tuple[str, list[str]]:
    """full_description and small_description[] for a derived product (the first bullet is indexed)."""
    if attributes:
        description = f"{name}. Features: {', '.join(attributes)}."
        bullets = [a[:1].upper() + a[1:] for a in attributes]
    else:
        description, bullets = f"{name}.", [name]
    return description, bullets


def _raw_product(asin: str, name: str, query: str, attributes: list[str], price: str,
                 options: dict[str, list[str]]) -> dict:
    description, bullets = _describe(name, attributes)
    return {
        "asin": asin, "name": name, "full_description": description, "small_description": bullets,
        "pricing": price, "customization_options": {k: [{"value": v, "image": None} for v in vals]
                                                    for k, vals in options.items()} or None,
        "product_category": "", "category": "", "query": query, "images": [""],
    }


def _option_groups(goal_options: list[str]) -> dict[str, list[str]]:
    """Goal option values grouped under option names (colour / size / style, then spares on a clash)."""
    groups: dict[str, list[str]] = {}
    for value in goal_options:
        kind = option_kind(value)
        if kind in groups:
            kind = next(n for n in _OPTION_NAMES if n not in groups)
        groups[kind] = [value]
    return groups


def _pools(tasks: list[dict]) -> dict[str, list[str]]:
    pools = {"color": sorted(COLOR_SET), "size": sorted(_SIZE_POOL), "style": []}
    for t in tasks:
        for value in t["goal_options"]:
            pools.setdefault(option_kind(value), []).append(value)
    return {k: sorted(set(v)) for k, v in pools.items()}


def _target_options(rng, groups: dict[str, list[str]], pools: dict[str, list[str]], wanted: list[str],
                    keep_wanted: bool) -> dict[str, list[str]]:
    options = {}
    for name, (value,) in groups.items():
        pool = pools.get(name) or pools["style"] or pools["size"]
        if len(pool) < 6:
            pool = pool + pools["size"]
        others = _alternatives(rng, pool, wanted, rng.randint(2, 4))
        values = ([value] if keep_wanted else []) + others
        rng.shuffle(values)
        options[name] = values
    return options


def _parse_synthetic_query(instruction: str, attributes: list[str]) -> str:
    """'Find me easy carry, high quality bags & cases with X' -> 'bags & cases'."""
    text = instruction[len("Find me "):] if instruction.startswith("Find me ") else instruction
    for att in sorted(attributes, key=len, reverse=True):
        text = text.replace(att, " ")
    text = re.split(r"\s(?:with|for)\s|\s(?:with|for)$", text + " ")[0]
    return re.sub(r"^[\s,]+|[\s,]+$", "", re.sub(r"^(?:[\s,]*and\s)", "", text)).strip()


def _best_query(text: str, queries: list[tuple[str, set[str]]]) -> str:
    words = {w for w in _words(text) if w not in _STOP}
    best, best_score = "", 0.0
    for query, qwords in queries:
        score = len(words & qwords) / len(qwords) if qwords else 0.0
        if score > best_score:
            best, best_score = query, score
    return best


def _human_product(seed: int, index: int, text: str, vocab: AttributeVocabulary,
                   queries: list[tuple[str, set[str]]]) -> tuple[dict, list[str]]:
    rng = _rng(seed, "human", index)
    body = _CUT.split(_LEAD.sub("", text, count=1))[0].strip(" .,")
    words = body.split() if len(body.split()) >= 3 else _LEAD.sub("", text, count=1).split()
    name = _title(" ".join(words[:18]))
    attributes = vocab.find(text)
    options: dict[str, list[str]] = {}
    colors = [w for w in _words(text) if w in COLOR_SET]
    if colors:
        options["color"] = [colors[0]] + _alternatives(rng, sorted(COLOR_SET), [colors[0]], rng.randint(2, 4))
        rng.shuffle(options["color"])
    size = _SIZE_PHRASE.search(text)
    if size:
        value = size.group(0).lower().replace("/", " ")
        options["size"] = [value] + _alternatives(rng, sorted(_SIZE_POOL), [value], rng.randint(2, 4))
        rng.shuffle(options["size"])
    low = math.exp(rng.uniform(math.log(5), math.log(200)))
    price = _money(low) if rng.random() < 0.7 else f"{_money(low)} - {_money(low * rng.uniform(1.1, 1.8))}"
    asin = derived_asin(seed, "human", index)
    return _raw_product(asin, name, _best_query(text, queries), attributes, price, options), attributes


def build_derived_catalog(webshop_data: Path, out: Path, seed: int = DEFAULT_SEED) -> dict:
    """Write the derived catalog's standard files into `out`; returns the manifest (also DERIVED.json)."""
    attributes_in = read_json(webshop_data / ATTRIBUTES)
    human_goals = read_json(webshop_data / HUMAN_GOALS)
    tasks = load_expel_tasks(webshop_data)
    vocab = AttributeVocabulary(attributes_in)
    pools = _pools(tasks)

    products: list[dict] = []
    attributes_out: dict[str, dict] = {}
    human_ins: dict[str, list[dict]] = {}
    roles: dict[str, list[str]] = {}  # asin -> [role, where it came from]

    def add(raw: dict, attrs: list[str], role: str, origin: str, extra: dict | None = None) -> None:
        if raw["asin"] in roles:
            raise SlmkitError(f"derived catalog: asin {raw['asin']} made twice")
        products.append(raw)
        attributes_out[raw["asin"]] = {"attributes": attrs, **(extra or {})}
        roles[raw["asin"]] = [role, origin]

    for t in tasks:
        rng = _rng(seed, "target", t["id"])
        body = instruction_body(t["instruction_text"])
        goal_attrs = vocab.find(body)[:4] or [fallback_attribute(body)]
        attrs = goal_attrs + [a for a in vocab.find(t["name"]) if a not in goal_attrs]
        groups = _option_groups(t["goal_options"])
        bound = t["price_upper"]
        price = bound * rng.uniform(0.3, 0.9) if bound < NO_PRICE_BOUND else rng.uniform(1000, 1500)
        options = _target_options(rng, groups, pools, t["goal_options"], keep_wanted=True)
        add(_raw_product(t["asin"], t["name"], t["query"], attrs, _money(price), options), attrs, "target", t["id"])
        human_ins[t["asin"]] = [{"instruction": body, "instruction_attributes": goal_attrs,
                                 "instruction_options": list(t["goal_options"]), "task": t["id"]}]
        if bound < NO_PRICE_BOUND:
            over = bound * rng.uniform(1.15, 2.0)
            add(_raw_product(derived_asin(seed, "over-budget", t["id"]), t["name"], t["query"], attrs,
                             _money(over), options), attrs, "near miss: over budget", t["id"])
        if groups:
            wrong = _target_options(rng, groups, pools, t["goal_options"], keep_wanted=False)
            add(_raw_product(derived_asin(seed, "wrong-options", t["id"]), t["name"], t["query"], attrs,
                             _money(bound * rng.uniform(0.3, 0.9) if bound < NO_PRICE_BOUND else price), wrong),
                attrs, "near miss: no goal option values", t["id"])

    queries: set[str] = {t["query"] for t in tasks}
    for asin in sorted(attributes_in):
        info = attributes_in[asin]
        if "instruction" not in info or asin in roles:
            continue
        rng = _rng(seed, "ins_v2", asin)
        query = _parse_synthetic_query(info["instruction"], info.get("instruction_attributes", []))
        queries.add(query)
        attrs = list(info["attributes"])
        name = _title(query) + (f" with {', '.join(_title(a) for a in attrs[:4])}" if attrs else "")
        price = _money(math.exp(rng.uniform(math.log(5), math.log(200))))
        add(_raw_product(asin, name, query, attrs, price, {}), attrs, "items_ins_v2 product", asin,
            {k: info[k] for k in ("instruction", "instruction_attributes") if k in info})

    query_words = [(q, {w for w in _words(q) if w not in _STOP}) for q in sorted(queries)]
    task_bodies = {_norm(instruction_body(t["instruction_text"])) for t in tasks}
    candidates = [i for i in range(len(tasks), len(human_goals)) if _norm(human_goals[i]) not in task_bodies]
    order = _rng(seed, "human-order").sample(candidates, len(candidates))
    for index in order:
        if len(products) >= CATALOG_SIZE:
            break
        raw, attrs = _human_product(seed, index, human_goals[index], vocab, query_words)
        add(raw, attrs, "human goal", f"human_goals.json[{index}]")

    _rng(seed, "shuffle").shuffle(products)  # like items_shuffle: a target is not always first among equals
    manifest = {
        "derived": True, "comparable": False, "label": "derived catalog, not comparable",
        "version": VERSION, "seed": seed, "products": len(products),
        "counts": {r: sum(1 for v in roles.values() if v[0] == r) for r in sorted({v[0] for v in roles.values()})},
        "sources": {name: sha256_file(webshop_data / name) for name in (EXPEL_FILE, HUMAN_GOALS, ATTRIBUTES)},
        "roles": roles,
    }
    atomic_write_json(out / "items_shuffle_1000.json", products)
    atomic_write_json(out / ATTRIBUTES, attributes_out)
    atomic_write_json(out / "items_human_ins.json", human_ins)
    atomic_write_json(out / "DERIVED.json", manifest)
    return manifest


def webshop_data_dir() -> Path:
    folder = data_dir() / "webshop"
    if not (folder / EXPEL_FILE).is_file():
        raise SlmkitError(f"{folder}: no {EXPEL_FILE} (the WebShop tasks); see SLMKIT_DATA")
    return folder


def derived_catalog_dir(seed: int = DEFAULT_SEED, rebuild: bool = False) -> Path:
    """The derived catalog under SLMKIT_CACHE, built once (atomically) and rebuilt when inputs change."""
    source = webshop_data_dir()
    folder = cache_dir() / "webshop" / f"derived-v{VERSION}-seed{seed}"
    manifest_path = folder / "DERIVED.json"
    if not rebuild and manifest_path.is_file():
        manifest = read_json(manifest_path)
        wanted = {name: sha256_file(source / name) for name in manifest.get("sources", {})}
        if manifest.get("version") == VERSION and wanted == manifest.get("sources") and wanted:
            return folder
    with atomic_dir(folder) as tmp:
        build_derived_catalog(source, tmp, seed)
    return folder
