"""WebShop's pages as the visible text nodes of its HTML templates, and the two ways clients turn them to text.

Each page is the sequence BeautifulSoup's `findAll(text=True)` yields from web_agent_site/templates/*.html
(script/style/head text and comments excluded), each node tagged by its parent: a button, an option label,
a product link, or plain text. Two renderers:

  * `render_react`: ReAct's WebShop client (WebShop.ipynb `webshop_text`): buttons and links as
    "\\n[text] ", option labels "[v]" / "[[v]]" when chosen, plain text "\\ntext "; the first two plain
    texts (the instruction) dropped except on the start page; only the first 3 products shown (the rest of
    the page's 10 stay clickable); the done page becomes "Your score (min 0.0, max 1.0): r".
  * `render_simple`: WebShop's text env in observation_mode='text': the stripped texts joined by " [SEP] ".
"""

from __future__ import annotations

from dataclasses import dataclass

BUTTON, LABEL, LINK, TEXT = "button", "label", "link", "text"
SCORE_TEXT = "Your score (min 0.0, max 1.0)"


@dataclass(frozen=True)
class Node:
    kind: str
    text: str


@dataclass
class Page:
    """page_type: init / search / item / item_sub / end (ReAct's names); url as the client requested it."""

    page_type: str
    nodes: list[Node]
    url: str = ""


def start_page(instruction: str) -> Page:
    return Page("init", [Node(TEXT, "WebShop"), Node(TEXT, "Instruction: "), Node(TEXT, instruction),
                         Node(BUTTON, "Search")])


def _header(instruction: str, prev: bool) -> list[Node]:
    nodes = [Node(TEXT, "Instruction:"), Node(TEXT, instruction), Node(BUTTON, "Back to Search")]
    return nodes + [Node(BUTTON, "< Prev")] if prev else nodes


def results_page(instruction: str, products: list[dict], page: int, total: int, url: str = "") -> Page:
    nodes = _header(instruction, prev=False) + [Node(TEXT, f"Page {page} (Total results: {total})")]
    if page > 1:
        nodes.append(Node(BUTTON, "< Prev"))
    nodes.append(Node(BUTTON, "Next >"))
    for p in products:
        nodes += [Node(LINK, p["asin"]), Node(TEXT, p["Title"]), Node(TEXT, p["Price"])]
    return Page("search", nodes, url)


def item_page(instruction: str, product: dict, show_attrs: bool, url: str = "") -> Page:
    nodes = _header(instruction, prev=True)
    for name, values in product["options"].items():
        nodes.append(Node(TEXT, name))
        nodes += [Node(LABEL, v) for v in values]
    nodes += [Node(TEXT, product["Title"]), Node(TEXT, f"Price: {product['Price']}"),
              Node(TEXT, f"Rating: {product['Rating']}")]
    buttons = ["Description", "Features", "Reviews"] + (["Attributes"] if show_attrs else []) + ["Buy Now"]
    return Page("item", nodes + [Node(BUTTON, b) for b in buttons], url)


def sub_page(instruction: str, product: dict, sub: str, url: str = "") -> Page:
    """Description / Features / Reviews / Attributes of a product (the templates' card bodies)."""
    nodes = _header(instruction, prev=True)
    if sub == "Description":
        nodes.append(Node(TEXT, product["Description"]))
    elif sub == "Features":
        nodes += [Node(TEXT, f" {b}") for b in product["BulletPoints"]]
    elif sub == "Reviews":
        for r in product["Reviews"]:
            nodes += [Node(TEXT, f'"{r.get("title", "")}"'), Node(TEXT, str(r.get("score", ""))),
                      Node(TEXT, r.get("body", ""))]
    elif sub == "Attributes":
        nodes += [Node(TEXT, f" {a}") for a in product["Attributes"]]
        nodes += [Node(TEXT, product[k]) for k in ("category", "query", "product_category")]
    return Page("item_sub", [n for n in nodes if n.text != ""])


def done_page(code: str, reward: float) -> Page:
    """The visible lines of done_page.html (its display:none block of purchase/goal details left out)."""
    return Page("end", [Node(TEXT, "Thank you for shopping with us!"), Node(TEXT, "Your code: "),
                        Node(TEXT, code), Node(TEXT, " (Paste it in your MTurk interface.)"),
                        Node(TEXT, SCORE_TEXT), Node(TEXT, f"{reward}")])


def _clean_str(text: str) -> str:
    """ReAct's clean_str (undo escape sequences); text it cannot decode is kept as it is."""
    try:
        return text.encode().decode("unicode-escape").encode("latin1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return text


def render_react(page: Page) -> tuple[str, dict]:
    """(observation, info) as ReAct's `webshop_text`: info has `asins` (all the page's products) and
    `option_types` {label: option name} when the page has them."""
    observation, option_type = "", ""
    options: dict[str, str] = {}
    asins: list[str] = []
    cnt = prod_cnt = just_prod = 0
    texts = [n.text for n in page.nodes]
    for node in page.nodes:
        t = node.text
        if t == "\n" or t.replace("\n", "").replace("\\n", "").replace(" ", "") == "":
            continue
        if node.kind == BUTTON:
            piece = f"\n[{t}] "
        elif node.kind == LABEL:
            piece = f"[[{t}]]" if f"'{t}'" in page.url else f"[{t}]"
            options[t] = option_type
        elif node.kind == LINK:
            piece = f"\n[{t}] " if prod_cnt < 3 else ""
            prod_cnt += 1
            asins.append(t)
            just_prod = 0
        else:
            piece = "\n" + t + " "
            if cnt < 2 and page.page_type != "init":
                piece = ""
            if just_prod <= 2 and prod_cnt >= 4:
                piece = ""
            option_type = t
            cnt += 1
        just_prod += 1
        observation += piece
    info: dict = {}
    if options:
        info["option_types"] = options
    if asins:
        info["asins"] = asins
    if SCORE_TEXT in texts:
        idx = texts.index(SCORE_TEXT)
        info["reward"] = float(texts[idx + 1])
        observation = f"{SCORE_TEXT}: {texts[idx + 1]}"
    return _clean_str(observation), info


def render_simple(page: Page) -> str:
    return " [SEP] ".join(n.text.strip() for n in page.nodes if n.text.strip())
