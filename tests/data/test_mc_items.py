"""MCItem validation, the prompt formats and stable hashing."""

from __future__ import annotations

import re

import pytest

from drencoder.data import (
    CEVAL_FORMAT,
    MMLU_FORMAT,
    SENTIMENT_FORMAT,
    MCItem,
    get_format,
    stable_fraction,
    take_per_subject,
)
from drencoder.errors import ConfigError


def _item(q="What is 2?", answer=1, subject="math", uid="u1", choices=("1", "2", "3", "4")):
    return MCItem(question=q, choices=choices, answer=answer, subject=subject, uid=uid)


def test_mmlu_prompt_matches_lm_eval_harness_layout():
    shot = _item(q="Pick B.", answer=1, uid="e1")
    item = _item(q="  What is 2?\n", answer=1)
    expected = (
        "The following are multiple choice questions (with answers) about math.\n\n"
        "Pick B.\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer: B\n\n"
        "What is 2?\nA. 1\nB. 2\nC. 3\nD. 4\nAnswer:"
    )
    assert MMLU_FORMAT.prompt(item, [shot]) == expected
    assert MMLU_FORMAT.target(item) == " B"


def test_sentiment_and_ceval_formats():
    review = MCItem(
        question="good", choices=("negative", "positive"), answer=1, subject="sentiment", uid="s"
    )
    assert SENTIMENT_FORMAT.prompt(review) == (
        "Review: good\nIs this review positive or negative?\nA. negative\nB. positive\nAnswer:"
    )
    zh = _item(q="1+1=?", subject="高等数学")
    text = CEVAL_FORMAT.prompt(zh)
    assert text.startswith("以下是中国关于高等数学考试的单项选择题")
    assert text.endswith("\nD. 4\n答案：")


def test_braces_in_questions_are_literal():
    item = _item(q="Is {subject} a set {x}?", subject="sets")
    assert "Is {subject} a set {x}?" in MMLU_FORMAT.prompt(item)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"answer": 4}, "answer must be an index in [0, 3]"), ({"choices": ("x",)}, "between 2")],
)
def test_item_validation_names_the_value(kwargs, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        _item(**kwargs)


def test_get_format_and_unknown_name():
    assert get_format("mmlu") is MMLU_FORMAT
    with pytest.raises(ConfigError, match="valid names"):
        get_format("boolq")


def test_stable_fraction_is_fixed_and_salted():
    # Pinned: SHA-256 is stable across platforms and Python versions.
    a = stable_fraction("abc", salt="s1")
    assert a == stable_fraction("abc", salt="s1")
    assert 0.0 <= a < 1.0
    assert a != stable_fraction("abc", salt="s2")


def test_take_per_subject_is_order_independent():
    items = [_item(uid=f"u{i}", subject="ab"[i % 2]) for i in range(10)]
    first = take_per_subject(items, per_subject=2)
    assert first == take_per_subject(list(reversed(items)), per_subject=2)
    assert [it.subject for it in first] == ["a", "a", "b", "b"]
