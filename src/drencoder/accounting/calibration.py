"""Calibration: the smallest noise multiplier σ whose ε does not exceed a target.

ε is decreasing in σ for every accountant here: the search brackets the crossing, finds
it with Brent's method on log σ, and returns a σ on the feasible side, so the calibrated σ
never overshoots the target ε (STYLE habit 8). The
search works on any event family ``σ ↦ DpEvent`` (e.g. a fixed stage-1 charge followed by
T rounds), so a run can be calibrated for its whole ledger, not just its rounds.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

from dp_accounting import dp_event
from scipy import optimize

from drencoder.accounting import accountants as acc
from drencoder.accounting import events
from drencoder.accounting.gdp import GdpApproximationWarning, warn_clt
from drencoder.errors import ConfigError

SIGMA_MIN = 1e-3
SIGMA_MAX = 1e6


def calibrate(
    make_event: Callable[[float], dp_event.DpEvent],
    *,
    target_epsilon: float,
    delta: float,
    accountant: str | acc.Accountant,
    rtol: float = 1e-4,
) -> float:
    """The smallest σ (to relative tolerance ``rtol``) with ε(make_event(σ)) ≤ target."""
    accountant = acc.parse_accountant(accountant)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (0 < rtol < 1):
        raise ConfigError(f"rtol must be in (0, 1), got rtol={rtol!r}")
    approx = False
    # Without subsampling, GDP composition is exact and PLD is a numerical approximation
    # of the same curve: search with the closed form, then confirm under PLD below.
    search = acc.Accountant.GDP if _exact_in_gdp(make_event, accountant) else accountant

    def eps(sigma: float, accountant: acc.Accountant = search) -> float:
        nonlocal approx
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", GdpApproximationWarning)
            value = acc.epsilon(make_event(sigma), delta=delta, accountant=accountant)
        approx = approx or any(issubclass(w.category, GdpApproximationWarning) for w in caught)
        return value

    hi = 1.0
    while eps(hi) > target_epsilon:
        hi *= 2.0
        if hi > SIGMA_MAX:
            raise ConfigError(
                f"no noise multiplier up to {SIGMA_MAX:g} reaches epsilon <= {target_epsilon} "
                f"at delta={delta} under {accountant.value}; raise the target or lower the rounds"
            )
    lo = hi / 2.0
    while eps(lo) <= target_epsilon:
        hi, lo = lo, lo / 2.0
        if lo < SIGMA_MIN:
            break
    # Invariant: eps(hi) <= target < eps(lo) (or lo below SIGMA_MIN). Brent's method on
    # log(sigma) finds the crossing in a few evaluations; the result is then moved to the
    # feasible side, so the returned sigma never overshoots the target epsilon.
    if lo >= SIGMA_MIN and hi / lo > 1 + rtol:
        root = optimize.brentq(
            lambda x: eps(math.exp(x)) - target_epsilon,
            math.log(lo),
            math.log(hi),
            xtol=rtol / 4,
        )
        sigma = math.exp(root)
        while eps(sigma) > target_epsilon:
            sigma *= 1 + rtol / 4
        hi = min(hi, sigma)
    while search is not accountant and eps(hi, accountant) > target_epsilon:
        hi *= 1 + rtol / 4
    if approx:
        warn_clt(stacklevel=2)
    return hi


def _exact_in_gdp(make_event: Callable[[float], dp_event.DpEvent], accountant) -> bool:
    if accountant is not acc.Accountant.PLD:
        return False
    try:
        mu, approx = events.gdp_mu(make_event(1.0))
    except ConfigError:
        return False
    return not approx and math.isfinite(mu)


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    rounds: int,
    accountant: str | acc.Accountant,
    rtol: float = 1e-4,
) -> float:
    """σ for ``rounds`` identical rounds at ``sample_rate`` (1 = full participation)."""
    acc.rounds_event(noise_multiplier=1.0, sample_rate=sample_rate, rounds=rounds)  # validate
    return calibrate(
        lambda s: acc.rounds_event(noise_multiplier=s, sample_rate=sample_rate, rounds=rounds),
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        rtol=rtol,
    )
