"""gaussian_noise: explicit generator only, reproducible, empirical std matches."""

from __future__ import annotations

import pytest
import torch

from drencoder.errors import ConfigError
from drencoder.mechanisms import gaussian_noise


def test_same_generator_state_same_noise_and_global_rng_untouched():
    before = torch.random.get_rng_state()
    a = gaussian_noise((1000,), std=2.0, generator=torch.Generator().manual_seed(7))
    b = gaussian_noise(torch.empty(1000), std=2.0, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert torch.equal(torch.random.get_rng_state(), before)


def test_stream_consumption_does_not_depend_on_std():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    zero = gaussian_noise((50,), std=0.0, generator=g1)
    gaussian_noise((50,), std=5.0, generator=g2)
    assert torch.equal(zero, torch.zeros(50))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_empirical_std_matches():
    # n = 400,000 draws: the sample std's relative standard error is 1/sqrt(2n) ≈ 0.0011;
    # a 1% tolerance is ~9 standard errors, and the seed is fixed, so the test is stable.
    noise = gaussian_noise((400_000,), std=1.7, generator=torch.Generator().manual_seed(0))
    assert float(noise.double().std()) == pytest.approx(1.7, rel=0.01)
    assert abs(float(noise.double().mean())) < 5 * 1.7 / 400_000**0.5


@pytest.mark.parametrize("std", [-1.0, float("nan"), float("inf")])
def test_bad_std_is_echoed(std):
    with pytest.raises(ConfigError, match="noise std must be finite and >= 0, got std="):
        gaussian_noise((3,), std=std, generator=torch.Generator())


def test_generator_is_required():
    with pytest.raises(ConfigError, match=r"generator must be a torch\.Generator"):
        gaussian_noise((3,), std=1.0, generator=None)


def test_noise_generator_from_os_entropy_by_default_and_seeded_on_request():
    from drencoder.mechanisms import noise_generator

    def draw(seed=None):
        return gaussian_noise((64,), std=1.0, generator=noise_generator(seed))

    assert torch.equal(draw(7), draw(7))
    assert torch.equal(
        draw(7), gaussian_noise((64,), std=1.0, generator=torch.Generator().manual_seed(7))
    )
    assert not torch.equal(draw(), draw())
    assert not torch.equal(draw(), draw(7))


def test_noise_generator_default_seed_comes_from_os_entropy(monkeypatch):
    from drencoder.mechanisms import noise, noise_generator

    monkeypatch.setattr(noise.secrets, "randbits", lambda bits: 12345 + bits)
    assert noise_generator().initial_seed() == 12345 + 63
    assert noise_generator(0).initial_seed() == 0


@pytest.mark.parametrize("seed", [-1, 1.5, True, "7"])
def test_noise_generator_refuses_bad_seeds(seed):
    from drencoder.mechanisms import noise_generator

    with pytest.raises(ConfigError, match="seed must be an integer"):
        noise_generator(seed)
