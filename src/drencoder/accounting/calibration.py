"""Calibration: the smallest noise multiplier σ whose ε does not exceed a target.

ε is decreasing in σ for every accountant here: the search brackets the crossing, finds
it with Brent's method on log σ, and returns a σ on the feasible side, so the calibrated σ
never overshoots the target ε. The
search works on any event family ``σ ↦ DpEvent`` (e.g. a fixed stage-1 charge followed by
T rounds), so a run can be calibrated for its whole ledger, not just its rounds.

Approximations never decide a budget. GDP under Poisson sampling is the central-limit
approximation of Bu et al., which can understate ε: the σ it calibrates for ε = 8 at
q = 0.25, T = 10, δ = 1e-5 has a PLD ε of about 9.45 (pinned in the tests). Reporting that
figure beside rdp and pld is informative; choosing σ with it is not safe, so
:func:`calibrate` refuses gdp whenever the event needs the CLT. Exact GDP (no
subsampling) stays allowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dp_accounting import dp_event
from scipy import optimize

from drencoder.accounting import accountants as acc
from drencoder.accounting import events
from drencoder.accounting.relation import Relation, parse_relation
from drencoder.errors import ConfigError

SIGMA_MIN = 1e-3
SIGMA_MAX = 1e6

#: Why gdp may not decide a budget under the CLT, with a measured case: the σ that gdp
#: calibrates for ε = 8 at q = 0.25, 10 rounds, δ = 1e-5 (add-remove) has pld ε ≈ 9.45.
CLT_UNDERSTATES = (
    "accountant gdp under Poisson sampling is a central-limit approximation that can "
    "understate epsilon (the sigma it calibrates for epsilon 8 at q=0.25, 10 rounds, "
    "delta=1e-5 has pld epsilon 9.45)"
)
CLT_REFUSAL = f"{CLT_UNDERSTATES}; calibrate with pld or rdp"


def needs_clt(event: dp_event.DpEvent) -> bool:
    """Whether GDP can only approximate ``event`` (Poisson subsampling at q < 1)."""
    try:
        return events.gdp_mu(event)[1]
    except ConfigError:  # no GDP form at all: epsilon() reports that itself
        return False


def calibrate(
    make_event: Callable[[float], dp_event.DpEvent],
    *,
    target_epsilon: float,
    delta: float,
    accountant: str | acc.Accountant,
    relation: str | Relation = Relation.ADD_REMOVE,
    rtol: float = 1e-4,
) -> float:
    """The smallest σ (to relative tolerance ``rtol``) with ε(make_event(σ)) ≤ target.

    ε is taken under ``relation``. Raises ``ConfigError`` for gdp when the event needs the
    central-limit approximation (see the module docstring), and
    :class:`~drencoder.accounting.accountants.UnsupportedRelation` for rdp with Poisson
    subsampling under replace-one.
    """
    accountant = acc.parse_accountant(accountant)
    relation = parse_relation(relation)
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (0 < rtol < 1):
        raise ConfigError(f"rtol must be in (0, 1), got rtol={rtol!r}")
    if accountant is acc.Accountant.GDP and needs_clt(make_event(1.0)):
        raise ConfigError(CLT_REFUSAL)
    # Without subsampling, GDP composition is exact (μ doubled under replace-one) and PLD is
    # a numerical approximation of the same curve: search with the closed form, then
    # confirm under PLD and the same relation below.
    search = acc.Accountant.GDP if _exact_in_gdp(make_event, accountant) else accountant

    def eps(sigma: float, accountant: acc.Accountant = search) -> float:
        event = make_event(sigma)
        if accountant is acc.Accountant.GDP and needs_clt(event):
            raise ConfigError(CLT_REFUSAL)
        return acc.epsilon(event, delta=delta, accountant=accountant, relation=relation)

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
    relation: str | Relation = Relation.ADD_REMOVE,
    rtol: float = 1e-4,
) -> float:
    """σ for ``rounds`` identical rounds at ``sample_rate`` (1 = full participation).

    Each round is ``gaussian_round`` (Poisson-amplified when ``sample_rate`` < 1); for a
    setting that claims no amplification pass ``sample_rate=1`` or use :func:`calibrate`
    with ``relation.round_event``.
    """
    acc.rounds_event(noise_multiplier=1.0, sample_rate=sample_rate, rounds=rounds)  # validate
    return calibrate(
        lambda s: acc.rounds_event(noise_multiplier=s, sample_rate=sample_rate, rounds=rounds),
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        relation=relation,
        rtol=rtol,
    )
