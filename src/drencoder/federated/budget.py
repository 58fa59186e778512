"""What a run is charged, planned before it starts and recorded as it goes (DESIGN §3).

- ``central`` noise with Poisson sampling at q < 1: each round is
  ``PoissonSampled(q, Gaussian(σ))``, charged to every client (amplification by sampling
  holds against everyone but a trusted aggregator).
- ``central`` noise otherwise (q = 1, or fixed-size sampling): ``Gaussian(σ)`` to every
  client, no amplification claimed.
- ``local`` noise: ``Gaussian(σ)`` charged only to the round's participants.
- DR-Encoder's statistics release: one ``Gaussian(σ_s)`` event charged to every client.

Calibration plans for the worst client: with ``local`` noise a client could take part in
every round, so σ is calibrated for T full participations; the run's actual ledger
charges what happened and the budget stop uses it.
"""

from __future__ import annotations

from collections.abc import Sequence

import dp_accounting
from dp_accounting import dp_event

from drencoder import accounting
from drencoder.config import RunConfig
from drencoder.mechanisms import GaussianMechanism, NoisePlacement, Sampling


def amplification_rate(config: RunConfig) -> float:
    """q for the accountant: the Poisson rate, or 1 (no amplification) for fixed-size."""
    s = config.sampling
    return s.rate if s.scheme is Sampling.POISSON else 1.0


def expected_clients(config: RunConfig) -> float:
    """The public cohort size the server divides the noised sum by."""
    s = config.sampling
    return s.rate * config.clients if s.scheme is Sampling.POISSON else float(s.per_round)


def round_charge(
    mechanism: GaussianMechanism, config: RunConfig, participants: Sequence[int]
) -> tuple[dp_event.DpEvent, list[int] | None]:
    """The event one round performs and the clients it is charged to (None = all)."""
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


def calibrate_noise(config: RunConfig, stats_event: dp_event.DpEvent | None) -> float:
    """The smallest σ whose planned ε does not exceed ``target_epsilon``."""
    return accounting.calibrate(
        lambda sigma: planned_event(sigma, config, stats_event),
        target_epsilon=config.target_epsilon,
        delta=config.delta,
        accountant=config.privacy.accountant,
        rtol=1e-3,
    )
