"""DP release of the statistics: clipping of the stats vector, noise scale, its DpEvent."""

from __future__ import annotations

import dp_accounting
import pytest
import torch

from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout
from drencoder.prior import BlockStatistics, ClientStatistics, StatisticsRelease

# 2,000 blocks x 1 epoch: a 4,000-entry statistics vector, enough for a noise-std estimate.
LAYOUT = Layout.from_shapes({f"m.{i}": (1, 1) for i in range(2000)})


def stats_with(means, stds):
    return ClientStatistics(epochs=(BlockStatistics(layout=LAYOUT, means=means, stds=stds),))


def test_noise_scale_is_sigma_times_c():
    release = StatisticsRelease(clip_norm=0.5, noise_multiplier=2.0, std_floor=1e-9)
    assert release.noise_std == 1.0
    zero = stats_with(torch.zeros(2000), torch.zeros(2000))
    out = release.release(zero, generator=torch.Generator().manual_seed(0)).to_vector()
    means = out[:2000].double()  # the means are unfloored: pure noise N(0, 1)
    # 2,000 draws: relative s.e. of the std ≈ 1/sqrt(4000) ≈ 0.016; tolerance 6% ≈ 4 s.e.
    assert float(means.std()) == pytest.approx(1.0, rel=0.06)
    # stds of an all-zero input are |noise| floored: about half sit at the floor.
    stds = out[2000:]
    assert (
        float(stds.min()) == pytest.approx(1e-9)
        and 0.4 < float((stds == 1e-9).float().mean()) < 0.6
    )


def test_statistics_vector_is_clipped():
    release = StatisticsRelease(clip_norm=1.0, noise_multiplier=0.0)  # σ_s = 0: clip only
    big = stats_with(torch.full((2000,), 3.0), torch.full((2000,), 4.0))  # norm = 5·sqrt(2000)
    out = release.release(big, generator=torch.Generator()).to_vector()
    assert float(out.double().norm()) <= 1.0
    assert float(out.double().norm()) == pytest.approx(1.0, rel=1e-5)
    assert torch.allclose(out[:2000] / out[2000:], torch.full((2000,), 0.75))  # direction kept


def test_release_is_reproducible_and_disabled_is_identity():
    stats = stats_with(torch.linspace(-1, 1, 2000), torch.linspace(0, 1, 2000))
    release = StatisticsRelease()
    a = release.release(stats, generator=torch.Generator().manual_seed(1))
    b = release.release(stats, generator=torch.Generator().manual_seed(1))
    assert a.equals(b)
    off = StatisticsRelease(enabled=False)
    assert off.release(stats, generator=torch.Generator()) is stats
    assert off.noise_std == 0.0


def test_events():
    assert StatisticsRelease(noise_multiplier=4.0).dp_event() == dp_accounting.GaussianDpEvent(4.0)
    assert StatisticsRelease(enabled=False).dp_event() == dp_accounting.NonPrivateDpEvent()
    assert StatisticsRelease(noise_multiplier=0.0).dp_event() == dp_accounting.NonPrivateDpEvent()
    assert StatisticsRelease().to_dict() == {
        "enabled": True,
        "clip_norm": 0.02,
        "noise_multiplier": 5.0,
        "std_floor": 1e-8,
    }


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"clip_norm": -1.0}, "clip_norm must be finite and > 0, got clip_norm=-1.0"),
        ({"noise_multiplier": -2.0}, "noise_multiplier must be finite and >= 0"),
        ({"std_floor": 0.0}, "std_floor must be finite and > 0, got std_floor=0.0"),
        ({"enabled": "yes"}, "enabled must be true or false"),
    ],
)
def test_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        StatisticsRelease(**kwargs)
