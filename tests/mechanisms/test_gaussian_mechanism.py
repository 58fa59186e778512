"""GaussianMechanism: clip + noise per placement, the events it describes, validation."""

from __future__ import annotations

import dp_accounting
import pytest
import torch

from drencoder.errors import ConfigError
from drencoder.mechanisms import (
    Aggregation,
    ClipPoint,
    GaussianMechanism,
    NoisePlacement,
    Sampling,
)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_local_privatize_clips_then_adds_sigma_c_noise():
    mech = GaussianMechanism(clip_norm=2.0, noise_multiplier=0.5)
    assert mech.placement is NoisePlacement.LOCAL and mech.noise_std == 1.0
    z = torch.full((200_000,), 10.0)  # norm ≈ 4472, clipped to 2: each entry ≈ 0.00447
    out = mech.privatize(z, generator=gen())
    clipped, _ = mech.clip(z)
    noise = (out - clipped).double()
    # 200,000 draws: relative s.e. of the std is 1/sqrt(2n) ≈ 0.0016, tolerance 1% ≈ 6 s.e.
    assert float(noise.std()) == pytest.approx(1.0, rel=0.01)
    assert abs(float(noise.mean())) < 5 / 200_000**0.5


def test_central_privatize_only_clips_and_server_noises_the_sum():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=3.0, placement="central")
    z = torch.tensor([3.0, 4.0])
    assert torch.allclose(mech.privatize(z, generator=gen()), torch.tensor([0.6, 0.8]))
    total = torch.zeros(300_000)
    noisy_sum = mech.aggregate_noise(total, generator=gen(1))
    noisy_mean = mech.aggregate_noise(total, n=10, generator=gen(1))
    # Same draws: the mean's noise is the sum's noise divided by n.
    assert torch.allclose(noisy_mean * 10, noisy_sum, rtol=1e-6)
    # 300,000 draws: relative s.e. ≈ 0.0013, tolerance 1%.
    assert float(noisy_sum.double().std()) == pytest.approx(3.0, rel=0.01)


def test_local_aggregate_is_passed_through():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    agg = torch.ones(4)
    assert mech.aggregate_noise(agg, n=3, generator=gen()) is agg


def test_privatize_is_reproducible_and_batches_clip_rows():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0)
    z = torch.randn(3, 16, generator=gen(5)) * 10
    assert torch.equal(mech.privatize(z, generator=gen(2)), mech.privatize(z, generator=gen(2)))
    clipped, norms = mech.clip(z)
    assert norms.shape == (3,) and (clipped.norm(dim=1) <= 1.0).all()


def test_events():
    local = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.3)
    central = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.3, placement="central")
    g = dp_accounting.GaussianDpEvent(1.3)
    assert local.dp_event() == g
    assert local.dp_event(sample_rate=0.1) == g  # no amplification against the server
    assert central.dp_event(sample_rate=0.1) == dp_accounting.PoissonSampledDpEvent(0.1, g)
    assert central.dp_event(sample_rate=1.0) == g
    assert central.dp_event() == g  # unknown rate: no amplification claimed
    assert central.dp_event(sample_rate=0.1, sampling=Sampling.FIXED) == g
    no_dp = GaussianMechanism(clip_norm=1.0, noise_multiplier=0.0)
    assert no_dp.dp_event(sample_rate=0.1) == dp_accounting.NonPrivateDpEvent()
    with pytest.raises(ConfigError, match=r"sample_rate must be in \(0, 1\], got sample_rate=1.5"):
        central.dp_event(sample_rate=1.5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_norm": 0.0, "noise_multiplier": 1.0}, "clip_norm must be finite and > 0, got"),
        ({"clip_norm": 1.0, "noise_multiplier": -0.1}, "noise_multiplier must be finite and >= 0"),
        ({"clip_norm": 1.0, "noise_multiplier": 1.0, "placement": "centre"}, "'local', 'central'"),
    ],
)
def test_validation_echoes_the_value(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        GaussianMechanism(**kwargs)


def test_enums_are_config_strings():
    assert NoisePlacement("central") is NoisePlacement.CENTRAL
    assert ClipPoint("latent") is ClipPoint.LATENT and ClipPoint.UPDATE == "update"
    assert Aggregation("decode_then_mean") is Aggregation.DECODE_THEN_MEAN
    assert Sampling("poisson") is Sampling.POISSON
    with pytest.raises(ConfigError, match=r"Sampling must be one of 'poisson', 'fixed', got 'x'"):
        Sampling("x")
    assert GaussianMechanism(clip_norm=1, noise_multiplier=2).to_dict() == {
        "clip_norm": 1.0,
        "noise_multiplier": 2.0,
        "placement": "local",
    }
