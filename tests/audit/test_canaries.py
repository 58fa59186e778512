"""Canary directions, coins and scores (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drencoder.audit import CanaryScores, CanarySet, draw_coins
from drencoder.audit import canaries as canaries_mod
from drencoder.errors import ConfigError


def make(count=8, dim=16, seed=3, included=None):
    if included is None:
        included = draw_coins(count, seed=0)
    return CanarySet(count=count, dim=dim, first_id=5, seed=seed, included=included)


def test_directions_are_unit_reproducible_and_distinct():
    a, b = make(), make()
    for j in range(a.count):
        u = a.direction(j)
        assert u.dtype == torch.float32 and u.shape == (16,)
        assert float(u.double().norm()) == pytest.approx(1.0, abs=1e-6)
        assert torch.equal(u, b.direction(j))  # the auditor regenerates them from the seed
    assert not torch.equal(a.direction(0), a.direction(1))
    assert not torch.equal(a.direction(0), make(seed=4).direction(0))


def test_regenerated_directions_equal_cached_ones(monkeypatch):
    cached = make()
    monkeypatch.setattr(canaries_mod, "CACHE_BYTES", 0)
    regenerated = make()
    assert regenerated._cache is None and cached._cache is not None
    for j in range(cached.count):
        assert torch.equal(cached.direction(j), regenerated.direction(j))


def test_ids_and_coins():
    c = make()
    assert [c.is_canary(i) for i in (4, 5, 12, 13)] == [False, True, True, False]
    assert c.index(7) == 2
    coins = draw_coins(4000, seed=1)
    assert coins.dtype == bool and 0.47 < coins.mean() < 0.53  # fair
    assert np.array_equal(coins, draw_coins(4000, seed=1))
    assert not np.array_equal(draw_coins(64), draw_coins(64))  # OS entropy by default


def test_scores_are_inner_products_with_what_was_seen():
    c = make(count=3, dim=4)
    s = CanaryScores(c)
    m = torch.tensor([1.0, 2.0, 3.0, 4.0])
    s.see_message(1, m)
    s.see_message(1, m)
    s.see_release(m)
    s.see_release(-2 * m)  # releases are summed before scoring
    want = [-float(c.direction(j) @ m) for j in range(3)]
    want[1] += 2 * float(c.direction(1) @ m)
    assert s.scores() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"count": 1}, "canaries must be an integer >= 2"),
        ({"count": 4, "included": [True, False]}, "one coin per canary"),
    ],
)
def test_validation(kwargs, match):
    count = kwargs.get("count", 4)
    included = kwargs.get("included", [True] * max(count, 1))
    with pytest.raises(ConfigError, match=match):
        CanarySet(count=count, dim=4, first_id=0, seed=0, included=included)
