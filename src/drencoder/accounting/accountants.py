"""ε and δ of a DpEvent under three accountants: GDP, RDP and PLD.

- ``gdp``: :mod:`drencoder.accounting.gdp` (exact for full participation, CLT otherwise).
- ``rdp``: dp-accounting's ``RdpAccountant`` (Rényi DP, Mironov 2017; subsampled Gaussian
  of Mironov, Talwar, Zhang 2019), at its default orders plus a few larger ones.
- ``pld``: dp-accounting's ``PLDAccountant`` (privacy loss distributions, Koskela et al.;
  Doroshenko et al. 2022), the tightest of the three. Its estimate is pessimistic.

All three use the add/remove-one neighbouring relation with a *client* as the unit
(DESIGN §3). dp-accounting logs convergence warnings through absl for extreme orders;
:func:`_quiet_absl` keeps them off the terminal and turns them into an error only when
the returned value is not finite (a real failure).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import math
import warnings

from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from dp_accounting.rdp import rdp_privacy_accountant

from drencoder.accounting import events as ev
from drencoder.accounting import gdp
from drencoder.errors import ConfigError, DrencoderError

RDP_ORDERS = (*rdp_privacy_accountant.DEFAULT_RDP_ORDERS, 2048, 4096)
PLD_DISCRETIZATION = 1e-4


class Accountant(enum.StrEnum):
    GDP = "gdp"
    RDP = "rdp"
    PLD = "pld"


ALL_ACCOUNTANTS = tuple(Accountant)


class AccountingError(DrencoderError):
    """An accountant failed to produce a finite answer for a finite mechanism."""


def parse_accountant(name: str | Accountant) -> Accountant:
    try:
        return Accountant(name)
    except ValueError:
        raise ConfigError(
            f"accountant must be one of {[a.value for a in Accountant]}, got {name!r}"
        ) from None


class _Collect(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.messages.append(record.getMessage())
        return False  # swallow


@contextlib.contextmanager
def _quiet_absl():
    logger = logging.getLogger("absl")
    collector = _Collect()
    logger.addFilter(collector)
    try:
        yield collector.messages
    finally:
        logger.removeFilter(collector)


def _check_delta(delta: float) -> None:
    if not (0 < delta < 1):
        raise ConfigError(f"delta must be in (0, 1), got delta={delta!r}")


def _dp_accountant(accountant: Accountant):
    if accountant is Accountant.RDP:
        return rdp_privacy_accountant.RdpAccountant(orders=RDP_ORDERS)
    return pld_privacy_accountant.PLDAccountant(value_discretization_interval=PLD_DISCRETIZATION)


def _finite_or_raise(value: float, messages: list[str], what: str) -> float:
    if math.isnan(value) or (math.isinf(value) and messages):
        raise AccountingError(f"{what} failed: {'; '.join(messages[:3]) or 'no result'}")
    return float(value)


def _is_non_private(event: dp_event.DpEvent) -> bool:
    """True when the event releases something un-noised (GDP μ = ∞)."""
    try:
        return math.isinf(ev.gdp_mu(event)[0])
    except ConfigError:  # no GDP form: let dp-accounting decide
        return False


def epsilon(event: dp_event.DpEvent, *, delta: float, accountant: str | Accountant) -> float:
    """ε at ``delta`` of ``event`` under one accountant (∞ for a non-private event)."""
    accountant = parse_accountant(accountant)
    _check_delta(delta)
    if accountant is Accountant.GDP:
        mu, approx = ev.gdp_mu(event)
        if approx:
            gdp.warn_clt(stacklevel=2)
        return gdp.epsilon_from_mu(mu=mu, delta=delta)
    if _is_non_private(event):
        return math.inf
    acc = _dp_accountant(accountant)
    with _quiet_absl() as messages:
        acc.compose(event)
        value = acc.get_epsilon(delta)
    return _finite_or_raise(value, messages, f"{accountant.value} epsilon")


def delta_at(event: dp_event.DpEvent, *, epsilon: float, accountant: str | Accountant) -> float:
    """δ at ``epsilon`` of ``event`` under one accountant."""
    accountant = parse_accountant(accountant)
    if not (epsilon >= 0):
        raise ConfigError(f"epsilon must be >= 0, got epsilon={epsilon!r}")
    if accountant is Accountant.GDP:
        mu, approx = ev.gdp_mu(event)
        if approx:
            gdp.warn_clt(stacklevel=2)
        return 1.0 if math.isinf(mu) else gdp.delta_from_mu(mu=mu, epsilon=epsilon)
    if _is_non_private(event):
        return 1.0
    acc = _dp_accountant(accountant)
    with _quiet_absl() as messages:
        acc.compose(event)
        value = acc.get_delta(epsilon)
    return _finite_or_raise(value, messages, f"{accountant.value} delta")


def epsilons(
    event: dp_event.DpEvent, *, delta: float, accountants=ALL_ACCOUNTANTS
) -> dict[str, float]:
    """``{"gdp": ε, "rdp": ε, "pld": ε}`` for one event (CLT warnings shown once)."""
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gdp.GdpApproximationWarning)
        for a in accountants:
            out[parse_accountant(a).value] = epsilon(event, delta=delta, accountant=a)
    if any(issubclass(w.category, gdp.GdpApproximationWarning) for w in caught):
        gdp.warn_clt(stacklevel=2)
    for w in caught:
        if not issubclass(w.category, gdp.GdpApproximationWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def rounds_event(*, noise_multiplier: float, sample_rate: float, rounds: int) -> dp_event.DpEvent:
    """T identical rounds of the client-level Gaussian mechanism."""
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got rounds={rounds!r}")
    return ev.repeated(
        ev.gaussian_round(noise_multiplier=noise_multiplier, sample_rate=sample_rate), rounds
    )
