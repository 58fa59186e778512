"""What a run is charged, planned before it starts and recorded as it goes.

The neighbouring relation (``privacy.relation``, resolved by
:func:`drencoder.accounting.resolve_relation`) decides how every event is analysed. By
default it is the one that holds against the party that aggregates:

- ``local`` noise (any sampling): **replace-one**. The server sees who took part, so it is
  a participant's *data* that must be protected: its clipped message can move by 2C.
  Each round charges ``Gaussian(σ)`` (analysed with shift 2C) to the sampled clients.
- ``central`` noise, fixed-size sampling: **replace-one** (a client displaces another
  from a cohort of fixed size); ``Gaussian(σ)`` to every client, no amplification.
- ``central`` noise, Poisson sampling: **add-remove** (sensitivity C), valid when a trusted
  aggregator or secure aggregation hides who took part;
  ``PoissonSampled(q, Gaussian(σ))`` to every client (``Gaussian(σ)`` when q = 1).
- DR-Encoder's statistics release: every client sends its own noised vector and the
  server sees who sent one, so it is charged at sensitivity 2C_s under either relation:
  ``Gaussian(σ_s)`` under replace-one, the equivalent ``Gaussian(σ_s/2)`` under add-remove.

Adaptive clipping (``privacy.clip_quantile``, central noise only) adds a noisy count to
every round; the round is then one Gaussian mechanism of the effective multiplier
``z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2)`` (:mod:`drencoder.federated.adaptive_clipping`), which is
what calibration solves for and what the ledger charges; the update is noised with z_Δ.

Calibration plans for the worst client: with ``local`` noise a client could take part in
every round, so σ is calibrated for T full participations; the run's actual ledger
charges what happened and the budget stop uses it.

Record-level DP (``privacy.unit = record``) charges each participant its own DP-SGD steps
under add-remove of one example (:mod:`drencoder.federated.record`); σ is then DP-SGD's,
calibrated for the client with the fewest examples taking part in every round.
"""

from __future__ import annotations

from collections.abc import Sequence

import dp_accounting
from dp_accounting import dp_event

from drencoder import accounting
from drencoder.config import RunConfig
from drencoder.errors import ConfigError
from drencoder.federated import adaptive_clipping, record
from drencoder.mechanisms import GaussianMechanism, NoisePlacement, PrivacyUnit, Sampling


def amplification_rate(config: RunConfig) -> float:
    """q for the accountant: the Poisson rate, or 1 (no amplification) for fixed-size."""
    s = config.sampling
    return s.rate if s.scheme is Sampling.POISSON else 1.0


def expected_clients(config: RunConfig) -> float:
    """The public cohort size the server divides the noised sum by."""
    s = config.sampling
    return s.rate * config.clients if s.scheme is Sampling.POISSON else float(s.per_round)


def count_noise(config: RunConfig) -> float | None:
    """σ_b of adaptive clipping's count release, or None with a fixed clip norm."""
    p = config.privacy
    if p.clip_quantile is None:
        return None
    if p.clip_count_noise is not None:
        return float(p.clip_count_noise)
    return adaptive_clipping.default_count_noise(expected_clients(config))


def relation(config: RunConfig) -> accounting.Relation:
    """The neighbouring relation this run's epsilon is stated under."""
    return accounting.resolve_relation(
        config.privacy.relation,
        placement=config.privacy.placement.value,
        sampling=config.sampling.scheme.value,
        unit=config.privacy.unit.value,
        record_group=config.privacy.record_group,
    )


def relation_warning(config: RunConfig) -> str | None:
    """Why this run's relation is weaker than what holds against the aggregator, if it is."""
    return accounting.relation_warning(
        relation(config),
        placement=config.privacy.placement.value,
        sampling=config.sampling.scheme.value,
        unit=config.privacy.unit.value,
        record_group=config.privacy.record_group,
    )


def round_label(
    config: RunConfig,
    relation_: accounting.Relation,
    t: int,
    *,
    clip_norm: float | None = None,
    update_noise: float | None = None,
) -> str:
    """The ledger label of round ``t``: every privacy-relevant choice, in words.

    ``clip_norm`` is the round's C (default ``privacy.clip_norm``); with adaptive clipping
    the label says that the charged multiplier includes the count release.
    """
    p = config.privacy
    c = p.clip_norm if clip_norm is None else clip_norm
    label = (
        f"round {t}: {p.placement.value} noise, {config.sampling.scheme.value} sampling, "
        f"clip {p.clip_point.value} at C={c:g}, {relation_.value}"
    )
    sigma_b = count_noise(config)
    if sigma_b is not None:
        shown = "" if update_noise is None else f"z_update={update_noise:g}, "
        label += (
            f", adaptive clipping: effective multiplier includes the noisy count of "
            f"unclipped clients ({shown}sigma_b={sigma_b:g})"
        )
    return label


def statistics_event(release, relation_: accounting.Relation) -> dp_event.DpEvent:
    """The stage-1 release's charge, at sensitivity 2C_s under either relation."""
    event = release.dp_event()
    if (
        relation_ is accounting.Relation.ADD_REMOVE
        and isinstance(event, dp_event.GaussianDpEvent)
        and event.noise_multiplier > 0
    ):
        return dp_accounting.GaussianDpEvent(event.noise_multiplier / 2)
    return event


def round_charge(
    mechanism: GaussianMechanism,
    config: RunConfig,
    participants: Sequence[int],
    *,
    count_noise: float | None = None,
) -> tuple[dp_event.DpEvent, list[int] | None]:
    """The event one round performs and the clients it is charged to (None = all).

    With ``local`` noise these are the sampled clients, charged when the round's tasks are
    sent, whether or not their replies arrive. ``count_noise`` (σ_b of adaptive clipping):
    ``mechanism`` noises the update with z_Δ and the round is charged as one Gaussian
    mechanism of the effective multiplier (z_Δ⁻² + (2σ_b)⁻²)^(−1/2).
    """
    if count_noise is not None and mechanism.noise_multiplier > 0:
        mechanism = GaussianMechanism(
            clip_norm=mechanism.clip_norm,
            noise_multiplier=adaptive_clipping.effective_noise_multiplier(
                mechanism.noise_multiplier, count_noise
            ),
            placement=mechanism.placement,
        )
    event = mechanism.dp_event(
        sample_rate=amplification_rate(config), sampling=config.sampling.scheme
    )
    if mechanism.placement is NoisePlacement.LOCAL:
        return event, list(participants)
    return event, None


def planned_event(
    noise_multiplier: float, config: RunConfig, stats_event: dp_event.DpEvent | None
) -> dp_event.DpEvent:
    """The worst client's whole-run event if every round runs (for calibration)."""
    mechanism = GaussianMechanism(
        clip_norm=config.privacy.clip_norm,
        noise_multiplier=noise_multiplier,
        placement=config.privacy.placement,
    )
    event, _ = round_charge(mechanism, config, participants=())
    rounds = accounting.repeated(event, config.rounds)
    if stats_event is None:
        return rounds
    return dp_accounting.ComposedDpEvent([stats_event, rounds])


def calibrate_noise(
    config: RunConfig,
    stats_event: dp_event.DpEvent | None,
    *,
    examples: Sequence[int] | None = None,
) -> float:
    """The smallest σ whose planned ε does not exceed ``target_epsilon``.

    With ``privacy.unit = record`` σ is DP-SGD's and ``examples`` (each client's example
    count) is required: the client with the fewest examples has the largest q."""
    if config.privacy.unit is PrivacyUnit.RECORD:
        if not examples:
            raise ConfigError("record-level calibration needs each client's example count")

        def make_event(sigma: float) -> dp_event.DpEvent:
            return record.planned_event(sigma, config, examples, stats_event)
    else:

        def make_event(sigma: float) -> dp_event.DpEvent:
            return planned_event(sigma, config, stats_event)

    return accounting.calibrate(
        make_event,
        target_epsilon=config.target_epsilon,
        delta=config.delta,
        accountant=config.privacy.accountant,
        relation=relation(config),
        rtol=1e-3,
    )
