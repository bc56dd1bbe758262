"""Live Wikipedia, as ReAct's wikienv.py queries it: the site's search page, read as HTML.

`https://en.wikipedia.org/w/index.php?search=ENTITY`: when Wikipedia lists search results
(`div.mw-search-result-heading`), the entity names no page and those titles are the similar ones; when it
lands on an article, the page is the text of its <p> then <ul> elements, blocks of more than two words,
each on its own line; a disambiguation page ('may refer to:') is searched again as `[ENTITY]`.
Titles and text go through wikienv's `clean_str` (undo escaped unicode) when that succeeds.

Needs the network: it is never exercised by the test suite (this machine is offline); `--live-wiki` selects it.
"""

from __future__ import annotations

from html.parser import HTMLParser

from slmkit.agents.wiki import SearchHit, WikiSource
from slmkit.errors import SlmkitError

SEARCH_URL = "https://en.wikipedia.org/w/index.php"
USER_AGENT = "slmkit-react/0.1 (ReAct agent benchmark; https://github.com/)"


def clean_str(text: str) -> str:
    """wikienv's clean_str (escaped unicode back to text); text it cannot round-trip is kept as is."""
    try:
        return text.encode().decode("unicode-escape").encode("latin1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return text


class _SearchPage(HTMLParser):
    """Collects what wikienv reads with BeautifulSoup: result-heading div texts, and every <p> / <ul> text
    (nested elements included, like get_text())."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.headings: list[str] = []
        self.paragraphs: list[str] = []
        self.lists: list[str] = []
        self._open: list[tuple[str, list[str], list[str], int]] = []  # (tag, text parts, destination, slot)

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if tag == "div" and "mw-search-result-heading" in classes:
            dest = self.headings
        elif tag == "p":
            dest = self.paragraphs
        elif tag == "ul":
            dest = self.lists
        else:
            return
        dest.append("")  # the slot keeps document order of the start tags
        self._open.append((tag, [], dest, len(dest) - 1))

    def handle_endtag(self, tag):
        for k in range(len(self._open) - 1, -1, -1):
            if self._open[k][0] == tag:
                _, parts, dest, slot = self._open.pop(k)
                dest[slot] = "".join(parts)
                return

    def handle_data(self, data):
        for entry in self._open:
            entry[1].append(data)


class LiveWiki(WikiSource):
    name = "live-wikipedia"

    def __init__(self, timeout: float = 20.0, retries: int = 10) -> None:
        try:
            import requests  # noqa: F401
        except ImportError:
            raise SlmkitError("--live-wiki needs the 'requests' package") from None
        self.timeout, self.retries = timeout, retries
        self.calls = 0

    def _get(self, entity: str) -> str:
        import requests

        last = None
        for _ in range(self.retries):  # the ReAct notebooks retry timeouts up to 10 times
            try:
                self.calls += 1
                r = requests.get(SEARCH_URL, params={"search": entity}, timeout=self.timeout,
                                 headers={"User-Agent": USER_AGENT})
                return r.text
            except requests.exceptions.Timeout as exc:
                last = exc
            except requests.exceptions.RequestException as exc:
                raise SlmkitError(f"live Wikipedia: request for '{entity}' failed ({type(exc).__name__}); "
                                  f"run offline without --live-wiki") from None
        raise SlmkitError(f"live Wikipedia: '{entity}' timed out {self.retries} times ({last})")

    def search(self, entity: str, _depth: int = 0) -> SearchHit:
        doc = _SearchPage()
        doc.feed(self._get(entity))
        if doc.headings:
            return SearchHit(similar=[clean_str(h.strip()) for h in doc.headings])
        blocks = [b.strip() for b in doc.paragraphs + doc.lists]
        if any("may refer to:" in b for b in blocks) and _depth < 2:
            return self.search(f"[{entity}]", _depth + 1)
        page = ""
        for b in blocks:
            if len(b.split(" ")) > 2:
                page += clean_str(b)
                if not b.endswith("\n"):
                    page += "\n"
        return SearchHit(title=entity, page=page)
