"""ε and δ of a DpEvent under three accountants: GDP, RDP and PLD.

- ``gdp``: :mod:`drencoder.accounting.gdp` (exact for full participation, CLT otherwise).
- ``rdp``: dp-accounting's ``RdpAccountant`` (Rényi DP, Mironov 2017; subsampled Gaussian
  of Mironov, Talwar, Zhang 2019), at its default orders plus a few larger ones.
- ``pld``: dp-accounting's ``PLDAccountant`` (privacy loss distributions, Koskela et al.;
  Doroshenko et al. 2022), the tightest of the three. Its estimate is pessimistic.

The unit is a *client*; the neighbouring relation is a parameter
(:mod:`drencoder.accounting.relation`). Add-remove is every accountant's native case.
Replace-one makes each Gaussian(σ) a Gaussian of shift 2 instead of 1, i.e. the
add-remove Gaussian(σ/2):

- gdp doubles μ (exact for Gaussian events; for the CLT value of Poisson rounds it is the
  group-privacy bound on an approximation);
- pld is built with dp-accounting's REPLACE_ONE relation, which analyses the shift-2
  Gaussian, subsampled or not;
- rdp accounts the equivalent event with every Gaussian(σ) rewritten to Gaussian(σ/2)
  under add-remove, because dp-accounting's ``RdpAccountant`` ignores REPLACE_ONE for
  Gaussian events (it silently returns the add-remove value) and refuses Poisson
  subsampling under it; a Poisson-sampled event under replace-one therefore raises
  :class:`UnsupportedRelation` for rdp.

Speed. Building the PLD of one Poisson-subsampled Gaussian round is the expensive step
(about a second on a CPU), and a run asks for ε of the same round composed 1, 2, 3, …
times (every round's report and budget check). :class:`_ReusingPLDAccountant` keeps the
PLDs of the subsampled Gaussians it has built (an LRU cache keyed by σ, q, grid and
relation) and self-composes them, as dp-accounting's accountant does with a fresh one;
the result is the same number.

dp-accounting logs convergence warnings through absl for extreme orders;
:func:`_quiet_absl` keeps them off the terminal and turns them into an error only when
the returned value is not finite (a real failure).
"""

from __future__ import annotations

import contextlib
import enum
import functools
import logging
import math
import warnings

from dp_accounting import dp_event, privacy_accountant
from dp_accounting.pld import pld_privacy_accountant, privacy_loss_distribution
from dp_accounting.rdp import rdp_privacy_accountant

from drencoder.accounting import events as ev
from drencoder.accounting import gdp
from drencoder.accounting.relation import Relation, parse_relation
from drencoder.errors import ConfigError, DrencoderError

RDP_ORDERS = (*rdp_privacy_accountant.DEFAULT_RDP_ORDERS, 2048, 4096)
PLD_DISCRETIZATION = 1e-4
PLD_COARSEN_BELOW = 0.5
"""Below this noise multiplier the PLD grid is coarsened by (0.5/σ)²: the privacy loss of a
Gaussian spans about 1/(2σ²), so a fixed grid grows as 1/σ² (σ = 0.1 took 0.7 GB and
σ = 0.01 more than 12 GB). dp-accounting's pessimistic discretisation keeps ε an upper
bound; at σ = 0.3 the coarser grid changes ε by 1e-9 relative."""


def pld_discretization(event: dp_event.DpEvent) -> float:
    """The PLD grid's interval for ``event`` (see :data:`PLD_COARSEN_BELOW`)."""
    sigma = ev.min_noise_multiplier(event)
    if sigma is None or sigma <= 0 or sigma >= PLD_COARSEN_BELOW:
        return PLD_DISCRETIZATION
    return PLD_DISCRETIZATION * (PLD_COARSEN_BELOW / sigma) ** 2


class Accountant(enum.StrEnum):
    GDP = "gdp"
    RDP = "rdp"
    PLD = "pld"


ALL_ACCOUNTANTS = tuple(Accountant)


class AccountingError(DrencoderError):
    """An accountant failed to produce a finite answer for a finite mechanism."""


class UnsupportedRelation(AccountingError):
    """The accountant has no analysis of this event under the requested relation.

    Raised rather than falling back to another relation, because a fallback would report
    an ε that does not hold (add-remove) or one that is not this accountant's (pld).
    """


_NEIGHBORING = {
    Relation.ADD_REMOVE: privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE,
    Relation.REPLACE_ONE: privacy_accountant.NeighboringRelation.REPLACE_ONE,
}


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


def _rdp_add_remove_equivalent(event: dp_event.DpEvent) -> dp_event.DpEvent:
    """The add-remove event whose RDP equals ``event``'s under replace-one.

    Replacing a client moves its clipped vector by up to 2C, so Gaussian(σ) under
    replace-one is Gaussian(σ/2) under add-remove, and compositions follow. Subsampling
    does not rewrite that way: the subsampled mixture under replace-one is a different
    pair of distributions, which dp-accounting's RDP does not analyse.
    """
    if isinstance(event, dp_event.NoOpDpEvent | dp_event.NonPrivateDpEvent):
        return event
    if isinstance(event, dp_event.GaussianDpEvent):
        return dp_event.GaussianDpEvent(event.noise_multiplier / 2)
    if isinstance(event, dp_event.PoissonSampledDpEvent):
        if event.sampling_probability == 0:
            return dp_event.NoOpDpEvent()
        if event.sampling_probability == 1:
            return _rdp_add_remove_equivalent(event.event)
    elif isinstance(event, dp_event.SelfComposedDpEvent):
        return dp_event.SelfComposedDpEvent(_rdp_add_remove_equivalent(event.event), event.count)
    elif isinstance(event, dp_event.ComposedDpEvent):
        return dp_event.ComposedDpEvent([_rdp_add_remove_equivalent(e) for e in event.events])
    why = (
        "dp-accounting's RdpAccountant has no Poisson subsampling under replace-one"
        if isinstance(event, dp_event.PoissonSampledDpEvent)
        else "no replace-one rewrite is known here for this event"
    )
    raise UnsupportedRelation(
        f"accountant rdp cannot analyse {type(event).__name__} under relation replace-one "
        f"({why}); use accountant pld"
    )


@functools.lru_cache(maxsize=32)
def _subsampled_gaussian_pld(
    sigma: float,
    q: float,
    interval: float,
    relation: privacy_accountant.NeighboringRelation,
) -> privacy_loss_distribution.PrivacyLossDistribution:
    """The PLD of one ``PoissonSampled(q, Gaussian(σ))`` round, built as dp-accounting's
    PLD accountant builds it (PLDs are immutable: composing returns a new one)."""
    return privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=sigma,
        value_discretization_interval=interval,
        sampling_prob=q,
        neighboring_relation=relation,
    )


class _ReusingPLDAccountant(pld_privacy_accountant.PLDAccountant):
    """dp-accounting's PLD accountant, with the PLDs of Poisson-subsampled Gaussian events
    taken from :func:`_subsampled_gaussian_pld` (see module doc); every other event goes
    to the parent class. Overrides ``_maybe_compose`` of dp-accounting 0.6.0 (pinned)."""

    def _maybe_compose(self, event, count, do_compose):
        if (
            do_compose
            and isinstance(event, dp_event.PoissonSampledDpEvent)
            and isinstance(event.event, dp_event.GaussianDpEvent)
            and event.sampling_probability != 0
            and event.event.noise_multiplier != 0
        ):
            pld = _subsampled_gaussian_pld(
                float(event.event.noise_multiplier),
                float(event.sampling_probability),
                self._value_discretization_interval,
                self.neighboring_relation,
            )
            self._pld = self._pld.compose(pld.self_compose(count))
            return None
        return super()._maybe_compose(event, count, do_compose)


def _compose(accountant: Accountant, relation: Relation, event: dp_event.DpEvent):
    """A dp-accounting accountant with ``event`` composed, analysed under ``relation``."""
    if accountant is Accountant.RDP:
        if relation is Relation.REPLACE_ONE:
            event = _rdp_add_remove_equivalent(event)
        acc = rdp_privacy_accountant.RdpAccountant(orders=RDP_ORDERS)
    else:
        acc = _ReusingPLDAccountant(
            neighboring_relation=_NEIGHBORING[relation],
            value_discretization_interval=pld_discretization(event),
        )
    try:
        acc.compose(event)
    except privacy_accountant.UnsupportedEventError as exc:
        if relation is Relation.ADD_REMOVE:
            raise
        raise UnsupportedRelation(
            f"accountant {accountant.value} cannot analyse {type(event).__name__} under "
            f"relation {relation.value}: {exc}"
        ) from exc
    return acc


def _finite_or_raise(value: float, messages: list[str], what: str) -> float:
    if math.isnan(value) or (math.isinf(value) and messages):
        raise AccountingError(f"{what} failed: {'; '.join(messages[:3]) or 'no result'}")
    return float(value)


def _gdp_mu(event: dp_event.DpEvent, relation: Relation) -> float:
    mu, approx = ev.gdp_mu(event, relation=relation)
    if approx:
        gdp.warn_clt(stacklevel=3)
    return mu


def _is_non_private(event: dp_event.DpEvent) -> bool:
    """True when the event releases something un-noised (GDP μ = ∞)."""
    try:
        return math.isinf(ev.gdp_mu(event)[0])
    except ConfigError:  # no GDP form: let dp-accounting decide
        return False


def epsilon(
    event: dp_event.DpEvent,
    *,
    delta: float,
    accountant: str | Accountant,
    relation: str | Relation = Relation.ADD_REMOVE,
) -> float:
    """ε at ``delta`` of ``event`` under one accountant (∞ for a non-private event).

    Raises :class:`UnsupportedRelation` where the accountant has no analysis of the event
    under ``relation`` (rdp with Poisson subsampling under replace-one).
    """
    accountant = parse_accountant(accountant)
    relation = parse_relation(relation)
    _check_delta(delta)
    if accountant is Accountant.GDP:
        return gdp.epsilon_from_mu(mu=_gdp_mu(event, relation), delta=delta)
    if _is_non_private(event):
        return math.inf
    with _quiet_absl() as messages:
        acc = _compose(accountant, relation, event)
        value = acc.get_epsilon(delta)
    return _finite_or_raise(value, messages, f"{accountant.value} epsilon")


def delta_at(
    event: dp_event.DpEvent,
    *,
    epsilon: float,
    accountant: str | Accountant,
    relation: str | Relation = Relation.ADD_REMOVE,
) -> float:
    """δ at ``epsilon`` of ``event`` under one accountant and relation (see :func:`epsilon`)."""
    accountant = parse_accountant(accountant)
    relation = parse_relation(relation)
    if not (epsilon >= 0):
        raise ConfigError(f"epsilon must be >= 0, got epsilon={epsilon!r}")
    if accountant is Accountant.GDP:
        mu = _gdp_mu(event, relation)
        return 1.0 if math.isinf(mu) else gdp.delta_from_mu(mu=mu, epsilon=epsilon)
    if _is_non_private(event):
        return 1.0
    with _quiet_absl() as messages:
        acc = _compose(accountant, relation, event)
        value = acc.get_delta(epsilon)
    return _finite_or_raise(value, messages, f"{accountant.value} delta")


def epsilons(
    event: dp_event.DpEvent,
    *,
    delta: float,
    accountants=ALL_ACCOUNTANTS,
    relation: str | Relation = Relation.ADD_REMOVE,
) -> dict[str, float | None]:
    """``{"gdp": ε, "rdp": ε, "pld": ε}`` for one event (CLT warnings shown once).

    An accountant with no analysis of the event under ``relation`` gives ``None`` (rdp for
    Poisson subsampling under replace-one), so a table can show "n/a" beside the others
    instead of failing as a whole; :func:`epsilon` raises for it.
    """
    relation = parse_relation(relation)
    out: dict[str, float | None] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", gdp.GdpApproximationWarning)
        for a in accountants:
            try:
                value = epsilon(event, delta=delta, accountant=a, relation=relation)
            except UnsupportedRelation:
                value = None
            out[parse_accountant(a).value] = value
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
