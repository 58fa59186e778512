"""Client partitioners: disjoint, covering, non-empty, deterministic; Dirichlet skew grows
as alpha shrinks."""

from __future__ import annotations

import numpy as np
import pytest

from drencoder.data import (
    MCItem,
    Partitioning,
    dirichlet_partition,
    item_keys,
    key_skew,
    partition,
)
from drencoder.errors import ConfigError

# 1,000 items: 10 labels x 100, and 20 subjects of uneven size.
LABELS = [i % 10 for i in range(1000)]
SUBJECTS = [f"s{(i * 7) % 20:02d}" for i in range(1000)]
CASES = [
    ("iid", LABELS, None),
    ("dirichlet", LABELS, 0.3),
    ("dirichlet", SUBJECTS, 1.0),
    ("by_subject", SUBJECTS, None),
]


def _check_valid(parts, n):
    flat = [i for p in parts for i in p]
    assert sorted(flat) == list(range(n)), "disjoint and covering"
    assert all(len(p) > 0 for p in parts), "every client non-empty"
    assert all(p == sorted(p) for p in parts)


@pytest.mark.parametrize(("scheme", "keys", "alpha"), CASES)
@pytest.mark.parametrize("num_clients", [1, 7, 20])
def test_valid_and_deterministic(scheme, keys, alpha, num_clients):
    parts = partition(keys, scheme=scheme, num_clients=num_clients, rng=3, alpha=alpha)
    assert len(parts) == num_clients
    _check_valid(parts, len(keys))
    again = partition(
        keys, scheme=scheme, num_clients=num_clients, rng=np.random.default_rng(3), alpha=alpha
    )
    assert parts == again


def test_seed_matters_and_iid_is_balanced():
    a = partition(LABELS, scheme=Partitioning.IID, num_clients=7, rng=1)
    b = partition(LABELS, scheme=Partitioning.IID, num_clients=7, rng=2)
    assert a != b
    assert {len(p) for p in a} <= {142, 143}
    # A config always carries alpha; schemes other than dirichlet do not use it.
    assert partition(LABELS, scheme="iid", num_clients=7, rng=1, alpha=0.5) == a


def test_by_subject_gives_whole_subjects():
    parts = partition(SUBJECTS, scheme="by_subject", num_clients=6, rng=0)
    owners = {}
    for client, part in enumerate(parts):
        for i in part:
            assert owners.setdefault(SUBJECTS[i], client) == client
    per_client = [len({SUBJECTS[i] for i in p}) for p in parts]
    assert sorted(per_client) == [3, 3, 3, 3, 4, 4]


def test_dirichlet_skew_grows_as_alpha_shrinks():
    def mean_skew(alpha):
        return np.mean(
            [
                key_skew(dirichlet_partition(LABELS, num_clients=10, alpha=alpha, rng=s), LABELS)
                for s in range(5)
            ]
        )

    skews = [mean_skew(a) for a in (100.0, 1.0, 0.1)]
    assert skews[0] < 0.15 < skews[1] < skews[2]
    assert key_skew(partition(LABELS, scheme="iid", num_clients=10, rng=0), LABELS) < 0.15


def test_errors_name_the_values():
    with pytest.raises(ConfigError, match="num_clients=11"):
        partition(list(range(10)), scheme="iid", num_clients=11, rng=0)
    with pytest.raises(ConfigError, match="distinct subjects"):
        partition(SUBJECTS, scheme="by_subject", num_clients=21, rng=0)
    with pytest.raises(ConfigError, match=r"alpha=0\.001"):
        dirichlet_partition([0, 1] * 50, num_clients=50, alpha=0.001, rng=0, max_tries=5)
    with pytest.raises(ConfigError, match="alpha=None"):
        partition(LABELS, scheme="dirichlet", num_clients=3, rng=0)
    with pytest.raises(ConfigError, match="alpha=-1"):
        dirichlet_partition(LABELS, num_clients=3, alpha=-1, rng=0)
    with pytest.raises(ConfigError, match="scheme must be one of"):
        partition(LABELS, scheme="shards", num_clients=3, rng=0)
    with pytest.raises(ConfigError, match="rng must be"):
        partition(LABELS, scheme="iid", num_clients=3, rng=1.5)


def test_item_keys():
    items = [
        MCItem(question="q", choices=("a", "b"), answer=i % 2, subject="s", uid=str(i))
        for i in range(3)
    ]
    assert item_keys(items, by="label") == [0, 1, 0]
    assert item_keys(items, by="subject") == ["s", "s", "s"]
