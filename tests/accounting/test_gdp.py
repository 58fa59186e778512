import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from drencoder.accounting import gdp
from drencoder.errors import ConfigError


def test_full_participation_is_exact_sqrt_t_over_sigma():
    assert gdp.mu_full_participation(noise_multiplier=2.0, rounds=16) == 2.0


def test_clt_matches_bu_et_al_formula_and_warns():
    with pytest.warns(gdp.GdpApproximationWarning):
        mu = gdp.mu_poisson(noise_multiplier=1.5, sample_rate=0.04, rounds=2250)
    assert mu == pytest.approx(0.04 * math.sqrt(2250 * math.expm1(1 / 1.5**2)), rel=1e-12)


def test_sample_rate_one_is_exact_and_does_not_warn(recwarn):
    assert gdp.mu_poisson(noise_multiplier=2.0, sample_rate=1.0, rounds=9) == 1.5
    assert not [w for w in recwarn if issubclass(w.category, gdp.GdpApproximationWarning)]


def test_opacus_reference_value():
    # Opacus tests/accountants_test.py::test_gdp_accountant (sigma=1.5, q=0.04,
    # steps=int(90 // 0.04)=2249, delta=1e-5) asserts 6.59 < eps < 6.6.
    with pytest.warns(gdp.GdpApproximationWarning):
        mu = gdp.mu_poisson(noise_multiplier=1.5, sample_rate=0.04, rounds=2249)
    eps = gdp.epsilon_from_mu(mu=mu, delta=1e-5)
    assert 6.59 < eps < 6.6


@pytest.mark.parametrize(("mu", "expected"), [(0.35, 1.34), (1.78, 8.68)])
def test_bu_et_al_conversion_values(mu, expected):
    # Bu, Dong, Long, Su (HDSR 2020), Fig. 4 (PMC7695347): mu -> epsilon at delta=1e-5,
    # printed to two decimals.
    assert gdp.epsilon_from_mu(mu=mu, delta=1e-5) == pytest.approx(expected, abs=0.015)


def test_delta_at_zero_epsilon_is_total_variation():
    # Dong, Roth, Su (2022): for mu-GDP, delta(0) = 2*Phi(mu/2) - 1 (total variation).
    for mu in (0.1, 1.0, 3.0):
        assert gdp.delta_from_mu(mu=mu, epsilon=0.0) == pytest.approx(2 * norm.cdf(mu / 2) - 1)


@settings(max_examples=60, deadline=None)
@given(mu=st.floats(0.05, 20.0), delta=st.floats(1e-10, 0.5))
def test_epsilon_from_mu_inverts_delta_and_never_understates(mu, delta):
    eps = gdp.epsilon_from_mu(mu=mu, delta=delta)
    assert gdp.delta_from_mu(mu=mu, epsilon=eps) <= delta
    if eps > 0:
        assert gdp.delta_from_mu(mu=mu, epsilon=eps * (1 - 1e-6)) > delta * (1 - 1e-3)


def test_large_epsilon_does_not_overflow():
    assert math.isfinite(gdp.epsilon_from_mu(mu=50.0, delta=1e-10))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"noise_multiplier": 0.0, "rounds": 1},
        {"noise_multiplier": -1.0, "rounds": 1},
        {"noise_multiplier": 1.0, "rounds": 0},
        {"noise_multiplier": float("nan"), "rounds": 1},
    ],
)
def test_bad_input_names_the_value(kwargs):
    with pytest.raises(ConfigError, match="got"):
        gdp.mu_full_participation(**kwargs)


def test_a_tiny_noise_multiplier_gives_infinite_mu_not_an_overflow():
    from drencoder.accounting.gdp import clt_mu_squared_per_round

    assert clt_mu_squared_per_round(noise_multiplier=0.01, sample_rate=0.5) == float("inf")
    assert clt_mu_squared_per_round(noise_multiplier=0.5, sample_rate=0.5) < float("inf")
