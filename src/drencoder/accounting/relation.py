"""The neighbouring relation a run's ε is stated under, and the event one round performs.

Client-level DP: each round a client's update is clipped to L2 norm C and Gaussian noise
of std σC is added, by every client (placement ``local``) or once to the sum by a trusted
aggregator (``central``). Which pairs of datasets must be indistinguishable depends on what
the adversary sees:

- ``add-remove`` (add or remove one client; equivalently replacing one client's data by
  the zero message, dp-accounting's REPLACE_SPECIAL): one client moves the noised sum by at
  most C, and Poisson sampling amplifies the guarantee. This holds only when nobody who
  sees the output learns who took part: ``central`` noise with Poisson sampling, where the
  aggregator hides participation.
- ``replace-one`` (a participant's data swapped for any other): when the party that
  aggregates sees who took part (``local`` noise, whatever the sampling; ``central`` noise
  with a fixed-size cohort, where adding a client displaces another; the stage-1
  statistics release), presence is public and the protected secret is the participant's
  data. Its clipped vector can move anywhere in the ball of radius C, a shift of up to 2C:
  the same Gaussian mechanism is twice as sensitive.

Record-level DP (unit ``record``): the protected unit is one training example of one
client, and every client runs DP-SGD on its own data with Poisson-sampled batches drawn
from its own private randomness. Nobody outside the client sees which examples a step
used, so DP-SGD's standard statement holds: ``add-remove`` of one example (sensitivity C
per step, amplification by the Poisson sampling of examples), what ``auto`` picks for it.
``replace-one`` (2C) can be chosen and is only conservative.

The event of a round stays the mechanism's own (``GaussianDpEvent(σ)`` with σ the noise
std over C); the relation decides the analysis (see :mod:`drencoder.accounting.accountants`).
This module imports dp-accounting only: the mechanism enums live in a package that
imports torch, so placement and sampling are taken as their config strings here (the
enums are ``StrEnum``s and compare equal to them).
"""

from __future__ import annotations

import enum
import math

import dp_accounting
from dp_accounting import dp_event

from drencoder.errors import ConfigError

PLACEMENTS = ("local", "central")
SAMPLINGS = ("poisson", "fixed")
UNITS = ("client", "record")


class Relation(enum.StrEnum):
    ADD_REMOVE = "add-remove"
    REPLACE_ONE = "replace-one"


#: The config and CLI choices: ``auto`` picks the relation that holds (see
#: :func:`resolve_relation`); the others force one.
RELATION_CHOICES = ("auto", *(r.value for r in Relation))


def parse_relation(name: str | Relation) -> Relation:
    """``Relation(name)``, or ``ConfigError`` listing the valid values."""
    try:
        return Relation(name)
    except ValueError:
        raise ConfigError(
            f"relation must be one of {[r.value for r in Relation]}, got relation={name!r}"
        ) from None


def _check_setting(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {list(valid)}, got {name}={value!r}")
    return str(value)


def _hides_participation(placement: str, sampling: str) -> bool:
    """Whether add/remove holds: central noise, Poisson sampling, participation hidden."""
    placement = _check_setting("placement", placement, PLACEMENTS)
    sampling = _check_setting("sampling", sampling, SAMPLINGS)
    return placement == "central" and sampling == "poisson"


def record_relation(record_group: int = 1) -> Relation:
    """The relation record-level DP-SGD bounds: add-remove of one example when it clips
    per example, replace-one when it clips per group of ``record_group > 1`` consecutive
    examples (removing an example would regroup the ones after it)."""
    return Relation.ADD_REMOVE if record_group == 1 else Relation.REPLACE_ONE


def resolve_relation(
    choice: str, *, placement: str, sampling: str, unit: str = "client", record_group: int = 1
) -> Relation:
    """The relation to account under: ``auto`` picks the one that holds for the setting.

    ``auto`` gives add-remove for record-level DP (``unit = "record"``, DP-SGD over each
    client's examples) clipped per example, replace-one for record-level DP clipped per
    group of ``record_group > 1`` consecutive examples (removing an example would regroup
    the ones after it; replacing one changes only its own group) and, at client level,
    add-remove only for ``central`` noise with ``poisson`` sampling; replace-one otherwise.
    An explicit relation is returned as given, so a user can state ε under the other
    relation on purpose; :func:`relation_warning` says when that choice is weaker than what
    holds.
    """
    if choice not in RELATION_CHOICES:
        raise ConfigError(
            f"relation must be one of {list(RELATION_CHOICES)}, got relation={choice!r}; "
            "use 'auto' to pick the relation that holds for the placement and sampling"
        )
    if _check_setting("unit", unit, UNITS) == "record":
        return record_relation(record_group) if choice == "auto" else Relation(choice)
    hides = _hides_participation(placement, sampling)
    if choice == "auto":
        return Relation.ADD_REMOVE if hides else Relation.REPLACE_ONE
    return Relation(choice)


def relation_warning(
    relation: str | Relation,
    *,
    placement: str,
    sampling: str,
    unit: str = "client",
    record_group: int = 1,
) -> str | None:
    """A one-line warning when ``relation`` claims more than the setting supports, else None.

    Add-remove protects a client whose presence is secret; when the aggregating party sees
    who took part it can compare a participant against any other, so the weaker add-remove
    ε is not a guarantee against it. Replace-one where add-remove holds is only
    conservative and gets no warning.
    """
    relation = parse_relation(relation)
    if _check_setting("unit", unit, UNITS) == "record":
        if relation is Relation.ADD_REMOVE and record_relation(record_group) is not relation:
            return (
                f"relation add-remove with record groups of {record_group} examples: "
                "removing an example regroups the examples after it, so add-remove is not "
                "what DP-SGD over fixed groups bounds; the replace-one epsilon is the one "
                "that holds (relation auto or replace-one)"
            )
        return None  # add-remove of one example holds for DP-SGD (module docstring)
    if relation is Relation.ADD_REMOVE and not _hides_participation(placement, sampling):
        return (
            f"relation add-remove with placement={placement}, sampling={sampling}: the party "
            "that aggregates sees who took part, so add/remove (zero-out) does not protect a "
            "participant against it; the replace-one epsilon is the one that holds "
            "(relation auto or replace-one)"
        )
    return None


def round_event(
    *, noise_multiplier: float, placement: str, sampling: str, sample_rate: float
) -> dp_event.DpEvent:
    """The event one round of the client-level Gaussian mechanism performs.

    - σ = 0: ``NonPrivateDpEvent`` (clipped, un-noised updates: ε = ∞, never 0).
    - ``central`` + ``poisson`` at q < 1: ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``,
      amplification by sampling, which holds only while the aggregator hides who took part.
    - otherwise ``GaussianDpEvent(σ)``, no amplification claimed: with ``local`` noise the
      server sees participation, so a round is charged to its participants only and a
      client may take part in every round; a fixed-size cohort has no Poisson analysis.

    This is the one place the rule lives; ``GaussianMechanism.dp_event`` delegates here.
    """
    sigma = float(noise_multiplier)
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(
            f"noise_multiplier must be finite and >= 0 (0 disables DP), "
            f"got noise_multiplier={noise_multiplier!r}"
        )
    q = float(sample_rate)
    if not (0.0 < q <= 1.0):
        raise ConfigError(f"sample_rate must be in (0, 1], got sample_rate={sample_rate!r}")
    amplified = _hides_participation(placement, sampling) and q < 1.0
    if sigma == 0:
        return dp_accounting.NonPrivateDpEvent()
    event = dp_accounting.GaussianDpEvent(sigma)
    return dp_accounting.PoissonSampledDpEvent(q, event) if amplified else event


def charged_to(placement: str) -> str:
    """Who a round is charged to: its ``participants`` (local) or ``all`` clients (central)."""
    placement = _check_setting("placement", placement, PLACEMENTS)
    return "participants" if placement == "local" else "all"
