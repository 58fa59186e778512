"""The multiple-choice record every task shares, the prompt formats, and stable hashing.

One record type (``MCItem``) carries MMLU, C-Eval and the sentiment task, so the scorer,
the fine-tuning example builder and the partitioners never branch on the data set.

A ``PromptFormat`` renders an item. The MMLU format follows lm-evaluation-harness::

    The following are multiple choice questions (with answers) about {subject}.\\n\\n
    {exemplar question}\\nA. …\\nB. …\\nC. …\\nD. …\\nAnswer: B\\n\\n     (n_shot times)
    {question}\\nA. …\\nB. …\\nC. …\\nD. …\\nAnswer:

The question is stripped of surrounding whitespace, the choices are used as they are
(as lm-evaluation-harness does), and the answer letter follows ``answer_delimiter``
(one space, the harness's ``target_delimiter``). The scorer and the fine-tuning examples
both take the answer tokens from ``fmt.answer_delimiter + letter``, so what is trained
is exactly what is scored.

Splits never use an RNG or the file order: ``stable_fraction`` maps a text key to
[0, 1) with SHA-256, salted per purpose, so an item's part depends only on its content.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from drencoder.errors import ConfigError

LETTERS = "ABCDEFGHIJ"
"""Answer letters, in order; an item has between 2 and ``len(LETTERS)`` choices."""


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice question.

    ``answer`` is the 0-based index of the correct choice. ``uid`` is unique within a data
    set and stable across runs (derived from content or from the official id, never from a
    position in a shuffled list), so results and splits can be joined on it.
    """

    question: str
    choices: tuple[str, ...]
    answer: int
    subject: str
    uid: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "choices", tuple(self.choices))
        n = len(self.choices)
        if not 2 <= n <= len(LETTERS):
            raise ConfigError(
                f"an item needs between 2 and {len(LETTERS)} choices, got {n} for uid={self.uid!r}"
            )
        if not isinstance(self.answer, int) or not 0 <= self.answer < n:
            raise ConfigError(
                f"answer must be an index in [0, {n - 1}], got answer={self.answer!r} "
                f"for uid={self.uid!r}"
            )

    @property
    def answer_letter(self) -> str:
        return LETTERS[self.answer]


@dataclass(frozen=True)
class PromptFormat:
    """How an item becomes text. ``{subject}`` in ``header`` and ``{question}`` in
    ``question_template`` are substituted literally (no ``str.format``), so braces inside
    questions are safe."""

    name: str
    header: str = ""
    question_template: str = "{question}"
    answer_prefix: str = "Answer:"
    answer_delimiter: str = " "
    shot_separator: str = "\n\n"

    def header_for(self, subject: str) -> str:
        return self.header.replace("{subject}", subject)

    def body(self, item: MCItem) -> str:
        """The question block, ending in ``answer_prefix`` (no trailing space)."""
        question = self.question_template.replace("{question}", item.question.strip())
        options = "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
        return f"{question}{options}\n{self.answer_prefix}"

    def target(self, item: MCItem) -> str:
        """What follows the prompt for the correct answer, e.g. ``" B"``."""
        return self.answer_delimiter + item.answer_letter

    def prompt(self, item: MCItem, exemplars: Sequence[MCItem] = ()) -> str:
        """Header, then each exemplar with its answer, then the item without its answer."""
        shots = "".join(self.body(e) + self.target(e) + self.shot_separator for e in exemplars)
        return self.header_for(item.subject) + shots + self.body(item)


MMLU_FORMAT = PromptFormat(
    name="mmlu",
    header="The following are multiple choice questions (with answers) about {subject}.\n\n",
)
"""lm-evaluation-harness MMLU prompt (``subject`` is the topic with spaces)."""

CEVAL_FORMAT = PromptFormat(
    name="ceval",
    header="以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。\n\n",
    answer_prefix="答案：",
)
"""The official C-Eval answer-only prompt. The official scripts write ``答案：A`` with no
space; lm-evaluation-harness (and this default) puts one space before the letter so every
task scores the same letter tokens. Use ``dataclasses.replace(CEVAL_FORMAT,
answer_delimiter="")`` for the official spacing."""

SENTIMENT_FORMAT = PromptFormat(
    name="sentiment",
    question_template="Review: {question}\nIs this review positive or negative?",
)
"""Two-way sentiment as multiple choice: choices ``("negative", "positive")``, no header::

    Review: {text}\\nIs this review positive or negative?\\nA. negative\\nB. positive\\nAnswer:
"""

FORMATS: Mapping[str, PromptFormat] = {
    f.name: f for f in (MMLU_FORMAT, CEVAL_FORMAT, SENTIMENT_FORMAT)
}


def get_format(name: str) -> PromptFormat:
    """Look a built-in format up by its config name."""
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"unknown prompt format {name!r}; valid names: {sorted(FORMATS)}"
        ) from None


def parse_enum(enum_cls, value, *, name: str):
    """``enum_cls(value)``, with a ``ConfigError`` that lists the valid names."""
    try:
        return enum_cls(value)
    except ValueError:
        valid = [m.value for m in enum_cls]
        raise ConfigError(f"{name} must be one of {valid}, got {name}={value!r}") from None


def stable_fraction(key: str, *, salt: str) -> float:
    """A number in [0, 1) fixed by ``salt`` and ``key``: the first 8 bytes of
    SHA-256(salt + U+001F + key) as an unsigned integer, divided by 2**64."""
    digest = hashlib.sha256(f"{salt}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def content_digest(*parts: str) -> str:
    """Hex SHA-256 of the parts joined by U+001F (a separator no text field contains)."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def check_fraction(name: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1], got {name}={value}")
    return value


def group_by_subject(items: Iterable[MCItem]) -> dict[str, list[MCItem]]:
    """Items per subject, subjects in sorted order, items in input order."""
    groups: dict[str, list[MCItem]] = defaultdict(list)
    for item in items:
        groups[item.subject].append(item)
    return {s: groups[s] for s in sorted(groups)}


def take_per_subject(items: Iterable[MCItem], *, per_subject: int) -> tuple[MCItem, ...]:
    """A small fixed evaluation subset: the ``per_subject`` items of each subject with the
    smallest uids. Uids are content hashes, so this is an arbitrary but reproducible pick
    that does not depend on file or split order (useful for CI and quick checks)."""
    if per_subject < 1:
        raise ConfigError(f"per_subject must be >= 1, got per_subject={per_subject}")
    out: list[MCItem] = []
    for group in group_by_subject(items).values():
        out.extend(sorted(group, key=lambda it: it.uid)[:per_subject])
    return tuple(out)
