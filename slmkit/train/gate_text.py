"""The text a checkpoint's export parity gates run on (`gate_text.txt`, written into every checkpoint).

A quantized export is judged by how far its perplexity and top-1 move on some text; on text the model does
not know (generic prose for a model trained on arithmetic) both are noise. So the trainer records text in
the model's own domain: `checkpoint.gate_text: FILE` when the config names one, else held-out problems of
the synthetic corpus when the mix trains on it (disjoint from every training stream), else the last
tokens of each prepared source (in-domain, but seen in training: the data pipeline has no held-out split).
"""

from __future__ import annotations

from slmkit.model.checkpoint import read_gate_text


GATE_TOKENS = 8 * 64  # what the parity gate reads: 8 windows of 64 tokens (slmkit.export.parity)


def choose_gate_text(cfg: dict, sources: dict, tokenizer) -> tuple[str, str] | None:
    """(text, where it came from), or None without a tokenizer."""
    given = (cfg.get("checkpoint") or {}).get("gate_text")
    if given:
        return read_gate_text(given), f"checkpoint.gate_text {given}"
    if tokenizer is None:
        return None
    specs = (cfg.get("data") or {}).get("sources") or {}
    if any((s or {}).get("type") == "synthetic" for s in specs.values()):
        from slmkit.corpus.synthetic import heldout_problems

        eos = tokenizer.eos_token or ""
        return "".join(p.text() + eos for p in heldout_problems(40)), "40 held-out problems of the synthetic corpus"
    pieces = []
    for name, src in sources.items():
        last = len(src.arrays) - 1
        size = src.arrays[last].size
        take = min(size, GATE_TOKENS // max(len(sources), 1))
        ids = src.read(last, size - take, take).tolist()
        pieces.append(tokenizer.decode(ids, skip_special_tokens=False))
    if not pieces:
        return None
    return "".join(pieces), f"the last tokens of each data source ({', '.join(sources)}; seen in training)"
