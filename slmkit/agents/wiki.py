"""Wikipedia tools with the semantics of ReAct's wikienv.py, over any `WikiSource` (local corpus or live API).

What the agent sees, as wikienv gives it:
- `search[entity]`: the entity names a page → its first 5 sentences; else `Could not find {entity}. Similar:
  {top-5 titles as a Python list}.` (the current page is kept, so lookup still works on it);
- `lookup[keyword]`: `(Result i / N) {sentence}` for the next sentence of the current page containing the
  keyword (case-insensitive), then `No more results.\n`; a new keyword restarts the count;
- `finish[answer]`: ends the episode; `think[...]`: `Nice thought.`; anything else `Invalid action: {action}`.
Sentences are wikienv's: paragraphs split on newlines, then on '. ', each stripped and given a final '.'.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TOOLS = ("search", "lookup", "finish", "think")


@dataclass
class SearchHit:
    """What a source answers to a search: a page (title + text, paragraphs separated by newlines) or,
    when the entity names no page, the most similar titles."""

    title: str | None = None
    page: str | None = None
    similar: list[str] = field(default_factory=list)


class WikiSource:
    """Where pages come from. Subclasses implement `search`; `name` goes into results."""

    name = "base"

    def search(self, entity: str) -> SearchHit:
        raise NotImplementedError

    def close(self) -> None:
        pass


def page_sentences(page: str) -> list[str]:
    """wikienv's sentence split (used for the 5-sentence summary and for lookup)."""
    paragraphs = [p.strip() for p in page.split("\n") if p.strip()]
    sentences: list[str] = []
    for p in paragraphs:
        sentences += p.split(". ")
    return [s.strip() + "." for s in sentences if s.strip()]


def page_summary(page: str) -> str:
    return " ".join(page_sentences(page)[:5])


class WikiTools:
    """wikienv.WikiEnv's state machine: one episode's current page, lookup cursor and answer.

    `tools` limits what is available (closed-book: finish and think only); an unavailable tool answers
    like an unknown one, `Invalid action: ...`."""

    def __init__(self, source: WikiSource | None, tools: tuple[str, ...] = TOOLS) -> None:
        self.source = source
        self.tools = tuple(tools)
        self.reset()

    def reset(self) -> None:
        self.page: str | None = None
        self.obs = "Interact with Wikipedia using search[], lookup[], and finish[].\n"
        self.lookup_keyword: str | None = None
        self.lookup_list: list[str] = []
        self.lookup_cnt = 0
        self.steps = 0
        self.answer: str | None = None
        self.searches = 0

    def _tool(self, action: str) -> tuple[str | None, str]:
        for tool in self.tools:
            if action.startswith(f"{tool}[") and action.endswith("]"):
                return tool, action[len(tool) + 1:-1]
        return None, ""

    def step(self, action: str) -> tuple[str, bool, dict]:
        """(observation, done, info) for one action string, exactly as wikienv answers it."""
        action = action.strip()
        if self.answer is not None:  # already finished
            return self.obs, True, {"answer": self.answer}
        tool, arg = self._tool(action)
        done, info = False, {}
        if tool == "search":
            self._search(arg)
        elif tool == "lookup":
            if self.lookup_keyword != arg:
                self.lookup_keyword = arg
                self.lookup_list = self._lookup_list(arg)
                self.lookup_cnt = 0
            if self.lookup_cnt >= len(self.lookup_list):
                self.obs = "No more results.\n"
            else:
                self.obs = f"(Result {self.lookup_cnt + 1} / {len(self.lookup_list)}) " + self.lookup_list[self.lookup_cnt]
                self.lookup_cnt += 1
        elif tool == "finish":
            self.answer = arg
            done = True
            self.obs = "Episode finished, reward = 0\n"
        elif tool == "think":
            self.obs = "Nice thought."
        else:
            self.obs = f"Invalid action: {action}"
            info["invalid"] = True
        self.steps += 1
        info["answer"] = self.answer
        return self.obs, done, info

    def _search(self, entity: str) -> None:
        self.searches += 1
        hit = self.source.search(entity) if self.source is not None else SearchHit()
        if hit.page is None:
            self.obs = f"Could not find {entity}. Similar: {hit.similar[:5]}."
            return
        self.page = hit.page
        self.obs = page_summary(hit.page)
        self.lookup_keyword, self.lookup_list, self.lookup_cnt = None, [], 0

    def _lookup_list(self, keyword: str) -> list[str]:
        if self.page is None:
            return []
        return [s for s in page_sentences(self.page) if keyword.lower() in s.lower()]
