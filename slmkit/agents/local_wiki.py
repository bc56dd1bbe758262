"""A local Wikipedia-like corpus: pages `{title, sentences}` (or `{title, text}`), searched the way the
live site answers ReAct's search: a title that names a page opens it, anything else lists similar titles.

Matching: the exact title, then the title with case and whitespace folded (Wikipedia resolves case-variant
titles too); otherwise the top-5 titles by BM25 (`bm25s`, English stopwords, Snowball stemmer) over each
page's title and text. The index is built once per corpus content and cached under SLMKIT_CACHE.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Iterable

from slmkit.agents.wiki import SearchHit, WikiSource
from slmkit.errors import SlmkitError
from slmkit.paths import atomic_dir, cache_dir


def join_sentences(sentences: Iterable[str]) -> str:
    """HotpotQA sentences carry their own leading spaces; other corpora get one space between sentences."""
    out = ""
    for s in sentences:
        s = str(s)
        if out and s and not s[0].isspace() and not out[-1].isspace():
            out += " "
        out += s
    return out


def _fold(title: str) -> str:
    return " ".join(title.replace("_", " ").casefold().split())


def _records(path: Path) -> Iterable[tuple[str, dict]]:
    """(where, record) from a .jsonl/.json file, gzipped or not."""
    opener = gzip.open if path.suffix == ".gz" else open
    name = path.name[:-3] if path.suffix == ".gz" else path.name
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            if name.endswith(".jsonl"):
                for lineno, line in enumerate(f, 1):
                    if line.strip():
                        yield f"{path}:{lineno}", json.loads(line)
            else:
                data = json.load(f)
                for i, rec in enumerate(data if isinstance(data, list) else [data]):
                    yield f"{path}[{i}]", rec
    except json.JSONDecodeError as exc:
        raise SlmkitError(f"{path}: corrupt JSON ({exc.msg}, line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SlmkitError(f"{path}: unreadable ({exc})") from None


def load_corpus(path: str | Path) -> dict[str, str]:
    """title → page text from a folder of .jsonl/.json(.gz) files or one such file."""
    path = Path(path)
    if not path.exists():
        raise SlmkitError(f"{path}: corpus not found (a folder or .jsonl file of {{title, sentences}} pages)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz"))) \
        if path.is_dir() else [path]
    if not files:
        raise SlmkitError(f"{path}: no .jsonl/.json files in the corpus folder")
    pages: dict[str, str] = {}
    for file in files:
        for where, rec in _records(file):
            if not isinstance(rec, dict) or not isinstance(rec.get("title"), str):
                raise SlmkitError(f"{where}: a page needs a string 'title'")
            if isinstance(rec.get("sentences"), list):
                text = join_sentences(rec["sentences"])
            elif isinstance(rec.get("text"), str):
                text = rec["text"]
            else:
                raise SlmkitError(f"{where}: page '{rec['title']}' needs 'sentences' (list) or 'text'")
            pages.setdefault(rec["title"], text)
    if not pages:
        raise SlmkitError(f"{path}: the corpus has no pages")
    return pages


class LocalWiki(WikiSource):
    name = "local"

    def __init__(self, pages: dict[str, str], label: str = "local corpus", cache: Path | None = None) -> None:
        if not pages:
            raise SlmkitError(f"{label}: the corpus has no pages")
        self.label = label
        self.titles = sorted(pages)
        self.pages = pages
        self.folded: dict[str, str] = {}
        for t in self.titles:
            self.folded.setdefault(_fold(t), t)
        self.digest = hashlib.sha256("\0".join(f"{t}\1{pages[t]}" for t in self.titles).encode()).hexdigest()[:20]
        self._cache = cache
        self._bm25 = None
        self._stemmer = None

    def search(self, entity: str) -> SearchHit:
        title = entity if entity in self.pages else self.folded.get(_fold(entity))
        if title is not None:
            return SearchHit(title=title, page=self.pages[title])
        return SearchHit(similar=self.similar(entity, 5))

    def similar(self, query: str, k: int = 5) -> list[str]:
        import bm25s

        retriever = self.index()
        tokens = bm25s.tokenize([query], stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False)
        if not tokens[0]:
            return []
        docs, scores = retriever.retrieve(tokens, k=min(k, len(self.titles)), show_progress=False, n_threads=1)
        return [self.titles[int(d)] for d, s in zip(docs[0], scores[0]) if s > 0]

    def index(self):
        """The BM25 index of this corpus: loaded from the cache, or built once and cached."""
        if self._bm25 is not None:
            return self._bm25
        try:
            import bm25s
            import Stemmer
        except ImportError as exc:
            raise SlmkitError(f"local corpus search needs bm25s and PyStemmer (pip install 'slmkit[agents]'; missing {exc.name})") from None
        self._stemmer = Stemmer.Stemmer("english")
        folder = (self._cache or cache_dir() / "agents" / "bm25") / self.digest
        if (folder / "params.index.json").exists():
            self._bm25 = bm25s.BM25.load(str(folder), show_progress=False)
            return self._bm25
        texts = [f"{t} {self.pages[t]}" for t in self.titles]
        tokens = bm25s.tokenize(texts, stopwords="en", stemmer=self._stemmer, return_ids=False, show_progress=False)
        retriever = bm25s.BM25()
        retriever.index(tokens, show_progress=False)
        with atomic_dir(folder) as tmp:
            retriever.save(str(tmp), show_progress=False)
        self._bm25 = retriever
        return retriever
