"""WebShop's search engine, offline: BM25 over the same document text its Lucene index holds.

WebShop indexes, per product, `' '.join([Title, Description, BulletPoints[0], option text]).lower()` where
option text is "name: v1, v2, and name2: ..." (search_engine/convert_product_file_format.py), and asks
pyserini's LuceneSearcher (BM25 k1=0.9, b=0.4, English analyzer: standard tokens, possessives and the
33 Lucene stop words dropped, Porter stems) for 50 hits. Here bm25s scores with the same parameters and
an analyzer built to the same rules; only documents sharing a term with the query are hits, ties keep
catalog order. Lucene's tokenizer is approximated by a regex, so rankings can differ from WebShop's.
"""

from __future__ import annotations

import re

import numpy as np

SEARCH_RETURN_N = 50  # engine.py
_TOKEN = re.compile(r"\w+(?:[.'’]\w+)*")


def index_text(product: dict) -> str:
    option_texts = [f"{name}: {', '.join(values)}" for name, values in product["options"].items()]
    return " ".join([product["Title"], product["Description"], product["BulletPoints"][0] if product["BulletPoints"]
                     else "", ", and ".join(option_texts)]).lower()


class Analyzer:
    """Lower-case, split, drop English possessives and Lucene's stop words, Porter-stem."""

    def __init__(self):
        import Stemmer
        from bm25s.stopwords import STOPWORDS_EN

        self._stem = Stemmer.Stemmer("porter").stemWord
        self._stop = set(STOPWORDS_EN)

    def __call__(self, text: str) -> list[str]:
        out = []
        for token in _TOKEN.findall(text.lower()):
            if token.endswith(("'s", "’s")):
                token = token[:-2]
            if token and token not in self._stop:
                out.append(self._stem(token))
        return out


class ProductSearch:
    """search(query) -> asins of the best `SEARCH_RETURN_N` products, best first."""

    def __init__(self, products: list[dict]):
        import bm25s

        self.asins = [p["asin"] for p in products]
        self.analyze = Analyzer()
        docs = [self.analyze(index_text(p)) or ["\0"] for p in products]
        self._bm25 = bm25s.BM25(k1=0.9, b=0.4, method="lucene")
        self._bm25.index(docs, show_progress=False)
        self._vocab = set(self._bm25.vocab_dict)

    def search(self, query: str, k: int = SEARCH_RETURN_N) -> list[str]:
        tokens = [t for t in self.analyze(query) if t in self._vocab]
        if not tokens:
            return []
        scores = np.asarray(self._bm25.get_scores(tokens))
        order = np.argsort(-scores, kind="stable")[:k]
        return [self.asins[i] for i in order if scores[i] > 0]
