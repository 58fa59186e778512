"""Pooling: mean of means and RMS of stds on a hand example; mixture; debiasing."""

from __future__ import annotations

import json

import pytest
import torch

from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout
from drencoder.prior import (
    BlockStatistics,
    ClientStatistics,
    PooledStatistics,
    Pooling,
    pool_statistics,
)

LAYOUT = Layout.from_shapes({"a": (2,), "b": (3,)})


def client(*epochs):
    return ClientStatistics(
        epochs=tuple(BlockStatistics(layout=LAYOUT, means=m, stds=s) for m, s in epochs)
    )


def test_mean_pooling_hand_example():
    c1 = client(([1.0, 0.0], [1.0, 2.0]), ([0.0, 0.0], [3.0, 3.0]))
    c2 = client(([3.0, 4.0], [7.0, 2.0]), ([2.0, 0.0], [4.0, 4.0]))
    pooled = pool_statistics([c1, c2])
    e0, e1 = pooled.components
    assert e0.means.tolist() == [2.0, 2.0]
    assert e0.stds.tolist() == pytest.approx([5.0, 2.0])  # sqrt((1+49)/2), sqrt((4+4)/2)
    assert e1.means.tolist() == [1.0, 0.0]
    assert e1.stds.tolist() == pytest.approx([12.5**0.5, 12.5**0.5])  # sqrt((9+16)/2)
    assert pooled.weights == (0.5, 0.5)  # epoch chosen uniformly per sample


def test_mixture_keeps_clients_and_weights_clients_equally():
    c1 = client(([1.0, 0.0], [1.0, 2.0]), ([0.0, 0.0], [3.0, 3.0]))
    c2 = client(([3.0, 4.0], [7.0, 2.0]))
    pooled = pool_statistics([c1, c2], method="mixture")
    assert len(pooled.components) == 3
    assert pooled.weights == pytest.approx((0.25, 0.25, 0.5))
    assert pooled.components[2].means.tolist() == [3.0, 4.0]


def test_mixture_moments_hand_example():
    # Two equally weighted components for block a: N(0, 1) and N(2, 1): mean 1, var 1 + 1.
    pooled = PooledStatistics(
        components=(
            BlockStatistics(layout=LAYOUT, means=[0.0, 5.0], stds=[1.0, 0.0]),
            BlockStatistics(layout=LAYOUT, means=[2.0, 5.0], stds=[1.0, 0.0]),
        ),
        weights=(0.5, 0.5),
    )
    mean, std = pooled.block_moments()
    assert mean.tolist() == [1.0, 5.0]
    assert std.tolist() == pytest.approx([2**0.5, 0.0])
    back = PooledStatistics.from_dict(json.loads(json.dumps(pooled.to_dict())))
    assert back.weights == pooled.weights
    assert all(a.equals(b) for a, b in zip(back.components, pooled.components, strict=True))


def test_noise_debiasing_subtracts_the_noise_variance():
    c1 = client(([0.0, 0.0], [5.0, 1.0]))
    c2 = client(([0.0, 0.0], [5.0, 1.0]))
    pooled = pool_statistics([c1, c2], released_noise_std=3.0, std_floor=0.1)
    assert pooled.components[0].stds.tolist() == pytest.approx([4.0, 0.1])  # sqrt(25-9); floor


def test_validation():
    with pytest.raises(ConfigError, match="at least one client"):
        pool_statistics([])
    with pytest.raises(ConfigError, match=r"same number of epochs.*got \[1, 2\]"):
        pool_statistics([client(([0, 0], [1, 1])), client(([0, 0], [1, 1]), ([0, 0], [1, 1]))])
    with pytest.raises(ConfigError, match="Pooling must be one of 'mean', 'mixture'"):
        pool_statistics([client(([0, 0], [1, 1]))], method="median")
    assert Pooling("mixture") is Pooling.MIXTURE
    with pytest.raises(ConfigError, match="sum to 1"):
        PooledStatistics(
            components=(BlockStatistics(layout=LAYOUT, means=[0, 0], stds=[1, 1]),),
            weights=(0.5,),
        )


def test_projection_onto_the_clip_ball_bounds_a_noisy_prior():
    layout = Layout.from_shapes({"a": (4, 4), "b": (4, 4)})
    gen = torch.Generator().manual_seed(0)
    noisy = [
        ClientStatistics.of([torch.randn(layout.dim, generator=gen)], layout=layout)
        for _ in range(3)
    ]
    free = pool_statistics(noisy)
    bounded = pool_statistics(noisy, clip_norm=0.01)
    for f, b in zip(free.components, bounded.components, strict=True):
        assert float(torch.cat([b.means, b.stds]).norm()) <= 0.01 * (1 + 1e-6)
        ratio = b.means / f.means  # a pure rescaling: directions are kept
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4)
