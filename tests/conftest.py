"""Test setup: point SLMKIT_DATA at the shared data beside the checkout, keep caches out of $HOME."""

import datetime
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


def pytest_collection_modifyitems(config, items):
    """`long` tests (many minutes each) run all with SLMKIT_LONG=1; with SLMKIT_LONG_SAMPLE=1 (CI) one of them
    runs, chosen by the day (so every long check runs in CI within a few weeks, each a few minutes: split a longer
    check into shards); otherwise they are skipped."""
    long_items = sorted((i for i in items if i.get_closest_marker("long")), key=lambda i: i.nodeid)
    if not long_items or os.environ.get("SLMKIT_LONG") == "1":
        return
    chosen = None
    # `long(sampled=False)`: minutes that vary too much to bound (CI never draws it; SLMKIT_LONG=1 runs it)
    pool = [i for i in long_items if i.get_closest_marker("long").kwargs.get("sampled", True)]
    if os.environ.get("SLMKIT_LONG_SAMPLE") == "1" and pool:
        chosen = pool[datetime.date.today().toordinal() % len(pool)].nodeid
    for item in long_items:
        if item.nodeid != chosen:
            item.add_marker(pytest.mark.skip(reason="long check: SLMKIT_LONG=1 runs it (CI samples one per day)"))
