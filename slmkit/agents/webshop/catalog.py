"""A WebShop catalog read from the standard files, field for field as engine.load_products prepares it.

A catalog folder holds `items_shuffle_1000.json` (or the full `items_shuffle.json`): a list of products
{asin, name, full_description, small_description[], pricing "$a" / "$a - $b", customization_options
{name: [{value, image}]}, product_category, category, query, images[]}; `items_ins_v2_1000.json` (or
`items_ins_v2.json`): {asin: {attributes[], instruction?, instruction_attributes?}}; and
`items_human_ins.json`: {asin: [{instruction, instruction_attributes[], instruction_options[]}]}.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from slmkit.errors import SlmkitError
from slmkit.paths import read_json

PRODUCT_FILES = ("items_shuffle_1000.json", "items_shuffle.json")
ATTRIBUTE_FILES = ("items_ins_v2_1000.json", "items_ins_v2.json")
HUMAN_GOALS_FILE = "items_human_ins.json"


@dataclass
class Catalog:
    """Products keyed by asin (engine fields: Title, Description, BulletPoints, Price, pricing, options,
    Attributes, query, category, product_category, name), their sampled prices and the human goals."""

    folder: Path
    products: list[dict]
    by_asin: dict[str, dict]
    prices: dict[str, float]
    human_ins: dict[str, list[dict]] = field(default_factory=dict)
    manifest: dict = field(default_factory=dict)  # DERIVED.json of a derived catalog, {} for a real one


def _first_present(folder: Path, names: tuple[str, ...], what: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise SlmkitError(f"{folder}: no {what} file (expected one of {', '.join(names)})")


def parse_pricing(pricing, asin: str) -> tuple[list[float], str]:
    """engine.py: '$12.99' -> [12.99], '$10.99 - $15.99' -> [10.99, 15.99] (first two kept); none -> $100."""
    if not pricing:
        return [100.0], "$100.0"
    try:
        values = [float(Decimal(re.sub(r"[^\d.]", "", part))) for part in str(pricing).split("$")[1:]]
    except InvalidOperation:
        raise SlmkitError(f"product {asin}: pricing {pricing!r} is not '$a' or '$a - $b'") from None
    if not values:
        raise SlmkitError(f"product {asin}: pricing {pricing!r} has no '$' amount")
    if len(values) == 1:
        return values, f"${values[0]}"
    return values[:2], f"${values[0]} to ${values[1]}"


def prepare_product(raw: dict, attributes: dict) -> dict:
    """One raw product as the engine serves it (options lower-cased with '/' shown as ' | ')."""
    asin = raw["asin"]
    pricing, price_tag = parse_pricing(raw.get("pricing"), asin)
    options: dict[str, list[str]] = {}
    for name, contents in (raw.get("customization_options") or {}).items():
        if contents is None:
            continue
        options[name.lower()] = [c["value"].strip().replace("/", " | ").lower() for c in contents]
    bullets = raw["small_description"]
    bullets = bullets if isinstance(bullets, list) else [bullets]
    info = attributes.get(asin) or {}
    images = raw.get("images") or [""]
    return {
        "asin": asin,
        "name": raw["name"],
        "Title": raw["name"],
        "Description": raw["full_description"],
        "BulletPoints": bullets,
        "Reviews": [],  # WebShop ships no reviews.json: its loader leaves every product without reviews
        "Rating": "N.A.",
        "pricing": pricing,
        "Price": price_tag,
        "options": options,
        "Attributes": info["attributes"] if "attributes" in info else ["DUMMY_ATTR"],
        "query": raw["query"].lower().strip(),
        "category": raw.get("category", ""),
        "product_category": raw.get("product_category", ""),
        "MainImage": images[0],
    }


def sample_prices(products: list[dict], seed: int) -> dict[str, float]:
    """engine.generate_product_prices: the one price, or uniform in [low, high] (seeded here; WebShop's
    own draw is unseeded, so its prices differ run to run)."""
    rng = random.Random(seed)
    prices = {}
    for p in products:
        pricing = p["pricing"]
        prices[p["asin"]] = 100.0 if not pricing else pricing[0] if len(pricing) == 1 else rng.uniform(*pricing[:2])
    return prices


def load_catalog(folder: str | Path, num_products: int | None = None, price_seed: int = 233) -> Catalog:
    """Read a catalog folder (the standard files above) into engine-ready products."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise SlmkitError(f"--catalog {folder}: not a directory")
    raw_products = read_json(_first_present(folder, PRODUCT_FILES, "product"))
    attributes = read_json(_first_present(folder, ATTRIBUTE_FILES, "attribute"))
    human_path = folder / HUMAN_GOALS_FILE
    human_ins = read_json(human_path) if human_path.is_file() else {}
    if not isinstance(raw_products, list) or not isinstance(attributes, dict):
        raise SlmkitError(f"{folder}: products must be a JSON list and attributes a JSON object")
    if num_products is not None:
        raw_products = raw_products[:num_products]
    products, seen = [], set()
    for raw in raw_products:
        asin = raw.get("asin")
        if not isinstance(asin, str) or asin == "nan" or len(asin) > 10 or asin in seen:
            continue  # engine.py skips these too
        seen.add(asin)
        try:
            products.append(prepare_product(raw, attributes))
        except KeyError as exc:
            raise SlmkitError(f"{folder}: product {asin} lacks field {exc.args[0]!r}") from None
    manifest_path = folder / "DERIVED.json"
    manifest = read_json(manifest_path) if manifest_path.is_file() else {}
    return Catalog(folder, products, {p["asin"]: p for p in products}, sample_prices(products, price_seed),
                   human_ins, manifest)
