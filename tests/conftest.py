"""Test setup: point SLMKIT_DATA at the shared data beside the checkout, keep caches out of $HOME."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
if not os.environ.get("SLMKIT_DATA"):
    candidate = REPO.parent / "shared" / "data"
    if candidate.is_dir():
        os.environ["SLMKIT_DATA"] = str(candidate)
os.environ.setdefault("SLMKIT_CACHE", str(Path.home() / ".cache" / "slmkit"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    value = os.environ.get("SLMKIT_DATA")
    if not value or not Path(value).is_dir():
        pytest.fail("SLMKIT_DATA is not set and ../shared/data is missing: the tests need the shared data")
    return Path(value)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> Path:
    """A small byte-level BPE trained on synthetic text (shared by tests that need a tokenizer)."""
    from slmkit.corpus.synthetic import training_texts
    from slmkit.model.tokenizer import train_bpe

    out = tmp_path_factory.mktemp("tok")
    train_bpe(training_texts(2000, seed=0), 512, out)
    return out


@pytest.fixture
def one_thread():
    """torch on one thread for the test, restored afterwards (small CPU runs stay deterministic and cheap)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
