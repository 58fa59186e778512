"""PriorSampler: per-block mean/std match, epoch/mixture choice, seeded reproducibility."""

from __future__ import annotations

import pytest
import torch

from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout
from drencoder.prior import BlockStatistics, PooledStatistics, PriorSampler

LAYOUT = Layout.from_shapes({"x.0.lora_A": (4, 50), "x.0.lora_B": (30, 4), "x.1.lora_A": (7,)})


def test_per_block_mean_and_std_match():
    stats = BlockStatistics(layout=LAYOUT, means=[1.0, -0.01, 0.0], stds=[0.5, 0.002, 3.0])
    sampler = PriorSampler(PooledStatistics.single(stats), layout=LAYOUT)
    assert sampler.dim == LAYOUT.dim == 327
    x = sampler.sample(400, generator=torch.Generator().manual_seed(0))
    assert x.shape == (400, 327) and x.dtype == torch.float32
    x = x.double()
    for block, mu, s in zip(LAYOUT.blocks, [1.0, -0.01, 0.0], [0.5, 0.002, 3.0], strict=True):
        part = x[:, block.slice].reshape(-1)
        n = part.numel()  # >= 2,800 draws: mean s.e. = s/sqrt(n), std relative s.e. 1/sqrt(2n)
        assert abs(float(part.mean()) - mu) < 5 * s / n**0.5
        assert float(part.std()) == pytest.approx(s, rel=5 / (2 * n) ** 0.5)


def test_epoch_chosen_uniformly_per_sample():
    # Two epochs with far-apart means: every sample comes wholly from one of them.
    e0 = BlockStatistics(layout=LAYOUT, means=[-10.0] * 3, stds=[0.1] * 3)
    e1 = BlockStatistics(layout=LAYOUT, means=[10.0] * 3, stds=[0.1] * 3)
    sampler = PriorSampler(PooledStatistics(components=(e0, e1), weights=(0.5, 0.5)))
    x = sampler.sample(2000, generator=torch.Generator().manual_seed(1))
    row_means = x.mean(dim=1)
    assert ((row_means - 10).abs() < 1).logical_or((row_means + 10).abs() < 1).all()
    frac = float((row_means > 0).float().mean())
    assert frac == pytest.approx(0.5, abs=5 * 0.5 / 2000**0.5)  # binomial s.e. 0.011
    mean, std = sampler.block_moments()
    assert mean.tolist() == pytest.approx([0.0] * 3, abs=1e-6)
    assert std.tolist() == pytest.approx([(100 + 0.01) ** 0.5] * 3)


def test_same_generator_state_same_samples():
    stats = BlockStatistics(layout=LAYOUT, means=[0.0, 1.0, 2.0], stds=[1.0, 1.0, 1.0])
    mix = PooledStatistics(components=(stats, stats), weights=(0.3, 0.7))
    for pooled in (PooledStatistics.single(stats), mix):
        sampler = PriorSampler(pooled)
        a = sampler.sample(5, generator=torch.Generator().manual_seed(9))
        b = sampler.sample(5, generator=torch.Generator().manual_seed(9))
        assert torch.equal(a, b)


def test_validation():
    stats = BlockStatistics(layout=LAYOUT, means=[0.0] * 3, stds=[1.0] * 3)
    with pytest.raises(ConfigError, match="needs PooledStatistics"):
        PriorSampler(stats)
    with pytest.raises(ConfigError, match="does not match"):
        PriorSampler(PooledStatistics.single(stats), layout=Layout.from_shapes({"a": (3,)}))
    with pytest.raises(ConfigError, match="n must be a positive integer, got n=0"):
        PriorSampler(PooledStatistics.single(stats)).sample(0, generator=torch.Generator())
