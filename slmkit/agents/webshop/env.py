"""WebShop offline: the shop's server rules (web_agent_site) behind one of its two text clients.

mode="react" (default) is ReAct's client (WebShop.ipynb `webshopEnv`), the protocol behind its published
numbers and its 1-shot prompt: `search[q]` only from the start page; `click[b]` with b one of Back to
Search, < Prev, Description/Features/Reviews/Attributes, Buy Now, an asin of the current results page, or
an option value on a product page ("You have clicked v."); Next > and paging are refused (its "ad hoc page
limitation"); `think...` answers "OK."; anything else, or a rule broken, answers "Invalid action!" and
changes nothing. mode="text" is WebShop's own WebAgentTextEnv with observation_mode='text': actions are
lower-cased, `search[...]` works from any page, `click[x]` needs x among the page's clickables (buttons,
asins, option values), paging works, and an invalid action leaves the page as it was.
"""

from __future__ import annotations

import copy
import re

from slmkit.agents.base import Environment, StepResult, Task
from slmkit.errors import SlmkitError

from .catalog import Catalog
from .pages import (
    BUTTON, LABEL, LINK, TEXT, Page, done_page, item_page, render_react, render_simple, results_page, start_page,
    sub_page,
)
from .reward import NounFn, get_reward
from .search import ProductSearch

PRODUCT_WINDOW = 10  # engine.py: results per page
SUB_PAGES = ("Description", "Features", "Reviews", "Attributes")
INVALID = "Invalid action!"
_ACTION = re.compile(r"(.+)\[(.+)\]")  # engine.parse_action


class WebShopEnv(Environment):
    name = "webshop"

    def __init__(self, catalog: Catalog, goals: list[dict], nouns: NounFn, *, mode: str = "react",
                 show_attrs: bool = False, limit: int | None = None, mode_note: str = ""):
        if mode not in ("react", "text"):
            raise SlmkitError(f"webshop: mode {mode!r} is not 'react' or 'text'")
        self.catalog = catalog
        self.goals = {g["id"]: g for g in goals}
        self._order = [g["id"] for g in goals]
        self.nouns = nouns
        self.client = mode
        self.show_attrs = show_attrs
        self.default_limit = limit
        self.search_engine = ProductSearch(catalog.products)
        self.comparable = not catalog.manifest.get("derived", False)
        self.mode = mode_note
        self._goal: dict | None = None
        self._state: dict = {}
        self._page: Page | None = None
        self._bought: dict = {}

    # --- Environment -------------------------------------------------------------------------------
    def tasks(self, limit: int | None = None) -> list[Task]:
        limit = self.default_limit if limit is None else limit
        ids = self._order if limit is None else self._order[:limit]
        return [Task(i, {"instruction_text": self.goals[i]["instruction_text"], "goal": self.goals[i]}) for i in ids]

    def reset(self, task: Task) -> str:
        goal = self.goals.get(task.id)
        if goal is None:
            raise SlmkitError(f"webshop: no task {task.id!r}")
        self._goal, self._bought = goal, {}
        self._state = {"session": task.id, "page_type": "init"}
        self._page = start_page(goal["instruction_text"])
        return self._render(self._page)[0]

    def step(self, action: str) -> StepResult:
        if self._goal is None:
            raise SlmkitError("webshop: step() before reset()")
        if self.client == "react":
            return self._react_step(action)
        return self._text_step(action)

    def spawn(self) -> "WebShopEnv":
        """Another shop window over the same catalog, index and tagger, for a concurrent episode."""
        twin = copy.copy(self)
        twin._goal, twin._state, twin._page, twin._bought = None, {}, None, {}
        return twin

    def episode_info(self) -> dict:
        """What was bought (asin, options, price) and goal.py's reward parts; {} if nothing was."""
        return dict(self._bought)

    def score(self, task: Task, history: list[StepResult]) -> dict[str, float]:
        reward = next((h.reward for h in reversed(history) if h.done), 0.0)
        return {"reward": reward, "score": 100.0 * reward, "success": 1.0 if reward == 1 else 0.0}

    # --- what is on screen (for reference policies and reports) -----------------------------------
    @property
    def page(self) -> Page:
        return self._page

    @property
    def page_asins(self) -> list[str]:
        """All products of the current results page (ReAct's client shows 3, any of the 10 is clickable)."""
        return [n.text for n in self._page.nodes if n.kind == LINK]

    # --- pages -------------------------------------------------------------------------------------
    def _render(self, page: Page) -> tuple[str, dict]:
        if self.client == "react":
            return render_react(page)
        return render_simple(page), {}

    def _results(self, query: str, page: int) -> Page:
        hits = self.search_engine.search(query)
        shown = [self.catalog.by_asin[a] for a in hits[(page - 1) * PRODUCT_WINDOW:page * PRODUCT_WINDOW]]
        url = f"/search_results/{self._state['session']}/{query}/{page}"
        return results_page(self._goal["instruction_text"], shown, page, len(hits), url)

    def _item(self) -> Page:
        s = self._state
        url = f"/item_page/{s['session']}/{s['asin']}/{s['query']}/{s['page_num']}/{s.get('options', {})}"
        return item_page(self._goal["instruction_text"], self.catalog.by_asin[s["asin"]], self.show_attrs, url)

    def _sub(self) -> Page:
        return sub_page(self._goal["instruction_text"], self.catalog.by_asin[self._state["asin"]],
                              self._state["subpage"])

    def _buy(self) -> tuple[Page, float, dict]:
        asin, options = self._state["asin"], dict(self._state.get("options", {}))
        product = self.catalog.by_asin[asin]
        price = self.catalog.prices[asin]
        reward, info = get_reward(product, self._goal, price=price, options=options, nouns=self.nouns)
        details = {"asin": asin, "options": options, "price": price, "reward_info": info}
        self._bought = {**details, "target": self._goal["asin"], "reward": reward}
        return done_page(self._state["session"].upper()[:10], reward), reward, details

    # --- ReAct's client ----------------------------------------------------------------------------
    def _react_step(self, action: str) -> StepResult:
        if action.startswith("think"):
            return StepResult("OK.", info={"think": True})
        try:
            return self._react_move(action)
        except _Refused as why:
            return StepResult(INVALID, info={"invalid": True, "reason": str(why)})

    def _react_move(self, action: str) -> StepResult:
        s = self._state
        note, noop = None, False
        if action.startswith("search["):
            _require(s["page_type"] == "init", "search only from the start page")
            query = action[7:-1]
            _require(query.strip() != "", "empty search")  # the real client would request an empty URL segment
            self._state = {"session": s["session"], "page_type": "search", "query": query, "page_num": 1}
            page = self._results(query, 1)
        elif action.startswith("click["):
            button = action[6:-1]
            page_type = s["page_type"]
            if button == "Buy Now":
                _require(page_type == "item", "Buy Now only on a product page")
                page, reward, details = self._buy()
                s["page_type"] = "end"
                observation, _ = render_react(page)
                return StepResult(observation, done=True, reward=reward, info=details)
            if button == "Back to Search":
                _require(page_type in ("search", "item_sub", "item"), "no Back to Search here")
                self._state = {"session": s["session"], "page_type": "init"}
                page = start_page(self._goal["instruction_text"])
            elif button == "Next >":
                raise _Refused("ReAct's client allows no paging")
            elif button == "< Prev":
                _require(page_type in ("search", "item_sub", "item"), "no < Prev here")
                _require(page_type != "search", "ReAct's client allows no paging")
                if page_type == "item_sub":
                    s["page_type"] = "item"
                    page = self._item()
                else:
                    s["page_type"] = "search"
                    s["options"] = {}
                    page = self._results(s["query"], s["page_num"])
            elif button in SUB_PAGES:
                _require(page_type == "item", f"{button} only on a product page")
                s["page_type"], s["subpage"] = "item_sub", button
                page = self._sub()
            elif page_type == "search":
                _require(button in s.get("asins", []), f"{button!r} is not a product on this page")
                s["page_type"], s["asin"] = "item", button
                page = self._item()
            elif page_type == "item":
                _require(button in s.get("option_types", {}), f"{button!r} is not an option of this product")
                s.setdefault("options", {})[s["option_types"][button]] = button
                page = self._item()
                note = f"You have clicked {button}."
            else:
                # the client re-renders the page it is on (start or sub page): nothing happens
                page, noop = self._page, True
        else:
            raise _Refused("not search[...], click[...] or think")
        self._page = page
        observation, info = render_react(page)
        self._state.update(info)
        return StepResult(note or observation, info={"noop": True} if noop else {})

    # --- WebShop's text env ------------------------------------------------------------------------
    def _clickables(self) -> dict[str, tuple[str, str | None]]:
        """text env get_available_actions: lower-cased button/link texts, option values as they are."""
        out: dict[str, tuple[str, str | None]] = {}
        option_name = None
        for node in self._page.nodes:
            if node.kind == BUTTON:
                out[node.text.lower()] = ("button", None)
            elif node.kind == LINK:
                out[node.text.lower()] = ("link", None)
            elif node.kind == TEXT:
                option_name = node.text
            elif node.kind == LABEL:
                out[node.text] = ("option", option_name)
        return out

    def _text_step(self, action: str) -> StepResult:
        m = _ACTION.match(action)
        name, arg = (m.group(1), m.group(2).lower()) if m else (action, None)
        s = self._state
        if name == "search" and arg:
            self._state = {"session": s["session"], "page_type": "search", "query": arg, "page_num": 1,
                           "options": {}}
            self._page = self._results(arg, 1)
            return StepResult(render_simple(self._page))
        clickables = self._clickables()
        if name != "click" or arg not in clickables or arg == "search":
            return StepResult(render_simple(self._page), info={"invalid": True, "reason": "not a clickable here"})
        kind, option_name = clickables[arg]
        page_type = s["page_type"]
        if arg == "buy now":
            page, reward, details = self._buy()
            self._page, s["page_type"] = page, "end"
            return StepResult(render_simple(page), done=True, reward=reward, info=details)
        if arg == "back to search":
            self._state = {"session": s["session"], "page_type": "init"}
            self._page = start_page(self._goal["instruction_text"])
        elif arg in ("next >", "< prev") and page_type == "search":
            s["page_num"] += 1 if arg == "next >" else -1
            self._page = self._results(s["query"], s["page_num"])
        elif arg == "< prev" and page_type == "item_sub":
            s["page_type"] = "item"
            self._page = self._item()
        elif arg == "< prev" and page_type == "item":
            s.update(page_type="search", asin=None, options={})
            self._page = self._results(s["query"], s["page_num"])
        elif arg in (p.lower() for p in SUB_PAGES):
            s["page_type"], s["subpage"] = "item_sub", next(p for p in SUB_PAGES if p.lower() == arg)
            self._page = self._sub()
        else:
            if kind == "link":
                s["asin"] = arg.upper()
            elif kind == "option":
                s.setdefault("options", {})[option_name.lower()] = arg
            s["page_type"] = "item"
            self._page = self._item()
        return StepResult(render_simple(self._page))


class _Refused(Exception):
    """An action ReAct's client rejects with an AssertionError (shown to the model as 'Invalid action!')."""


def _require(ok: bool, why: str) -> None:
    if not ok:
        raise _Refused(why)

