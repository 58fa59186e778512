"""Gaussian differential privacy (μ-GDP): pure math, no state.

References:
- Dong, Roth, Su, "Gaussian Differential Privacy", JRSS-B 2022 (arXiv 1905.02383):
  the Gaussian mechanism with sensitivity C and noise σC is (1/σ)-GDP; μ_i-GDP mechanisms
  compose to sqrt(Σ μ_i²)-GDP exactly; Corollary 2.13 gives δ(ε) below.
- Bu, Dong, Long, Su, "Deep Learning with Gaussian Differential Privacy", HDSR 2020:
  the central-limit approximation μ ≈ q·sqrt(T·(e^{1/σ²} − 1)) for T Poisson-subsampled
  rounds at rate q. It is an *approximation* that can understate ε for small T or large q,
  so every use raises :class:`GdpApproximationWarning`.

No maintained library implements GDP accounting, hence this module (docs/design.md §3). It is
tested against dp-accounting's PLD accountant, which must agree when q = 1.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import optimize, special

from drencoder.errors import ConfigError


class GdpApproximationWarning(UserWarning):
    """The GDP value came from the central-limit approximation and may understate ε."""


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be a finite number > 0, got {name}={value!r}")


def _check_rate(sample_rate: float) -> None:
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got sample_rate={sample_rate!r}")


def _check_rounds(rounds: int) -> None:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got rounds={rounds!r}")


def mu_full_participation(*, noise_multiplier: float, rounds: int) -> float:
    """Exact μ of ``rounds`` Gaussian mechanisms with noise multiplier σ: √T/σ."""
    _check_positive("noise_multiplier", noise_multiplier)
    _check_rounds(rounds)
    return math.sqrt(rounds) / noise_multiplier


def clt_mu_squared_per_round(*, noise_multiplier: float, sample_rate: float) -> float:
    """One Poisson-subsampled round's contribution q²(e^{1/σ²} − 1) to μ² under the CLT."""
    _check_positive("noise_multiplier", noise_multiplier)
    _check_rate(sample_rate)
    try:
        return sample_rate**2 * math.expm1(1.0 / noise_multiplier**2)
    except OverflowError:  # σ below about 0.0375: e^{1/σ²} is past the float range
        return math.inf


def warn_clt(stacklevel: int = 2) -> None:
    warnings.warn(
        "GDP with Poisson sampling uses the central-limit approximation "
        "(Bu et al. 2020), which can understate epsilon for few rounds or large sample "
        "rates; compare with the rdp and pld values",
        GdpApproximationWarning,
        stacklevel=stacklevel + 1,
    )


def mu_poisson(*, noise_multiplier: float, sample_rate: float, rounds: int) -> float:
    """μ for T Poisson-subsampled rounds: exact √T/σ when q = 1, else the CLT value.

    The CLT value raises :class:`GdpApproximationWarning`.
    """
    _check_rate(sample_rate)
    if sample_rate == 1:
        return mu_full_participation(noise_multiplier=noise_multiplier, rounds=rounds)
    _check_rounds(rounds)
    warn_clt()
    return math.sqrt(
        rounds
        * clt_mu_squared_per_round(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    )


def delta_from_mu(*, mu: float, epsilon: float) -> float:
    """δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2), computed in log space for large ε."""
    if mu < 0 or not math.isfinite(mu):
        raise ConfigError(f"mu must be a finite number >= 0, got mu={mu!r}")
    if epsilon < 0:
        raise ConfigError(f"epsilon must be >= 0, got epsilon={epsilon!r}")
    if mu == 0:
        return 0.0
    a = float(special.log_ndtr(-epsilon / mu + mu / 2))
    b = epsilon + float(special.log_ndtr(-epsilon / mu - mu / 2))
    if b >= a:  # only rounding can get here; the exact difference is > 0
        return 0.0
    return float(np.exp(a) * -np.expm1(b - a))


def epsilon_from_mu(*, mu: float, delta: float) -> float:
    """The smallest ε ≥ 0 with δ(ε) ≤ delta for a μ-GDP mechanism (root of a monotone map)."""
    if not (0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got delta={delta!r}")
    if mu == math.inf:
        return math.inf
    if delta_from_mu(mu=mu, epsilon=0.0) <= delta:
        return 0.0
    hi = max(1.0, mu * mu)
    while delta_from_mu(mu=mu, epsilon=hi) > delta:
        hi *= 2.0
    eps = optimize.brentq(
        lambda e: delta_from_mu(mu=mu, epsilon=e) - delta, 0.0, hi, xtol=1e-12, rtol=1e-12
    )
    # brentq brackets the root; step up to the feasible side so ε is never understated
    # by the root finder itself.
    while delta_from_mu(mu=mu, epsilon=eps) > delta:
        eps = eps * (1 + 1e-12) + 1e-15
    return float(eps)
