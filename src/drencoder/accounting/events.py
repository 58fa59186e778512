"""DpEvents for the mechanisms drencoder runs, and their JSON form.

Mechanisms *describe* what they do as ``dp_accounting`` DpEvents (dp_accounting
``dp_event.py``); accountants turn events into ε. This module builds the events of one
federated round, serialises any event tree to JSON (no pickle) and computes the GDP μ of
an event tree, since dp-accounting has no GDP accountant.
"""

from __future__ import annotations

import math
from typing import Any

import attr
import dp_accounting
from dp_accounting import dp_event

from drencoder.accounting import gdp
from drencoder.accounting.relation import Relation, parse_relation
from drencoder.errors import ConfigError

# Event classes the JSON form may name. Anything else is refused on load.
_EVENT_TYPES: dict[str, type[dp_event.DpEvent]] = {
    cls.__name__: cls
    for cls in (
        dp_event.NoOpDpEvent,
        dp_event.NonPrivateDpEvent,
        dp_event.GaussianDpEvent,
        dp_event.PoissonSampledDpEvent,
        dp_event.SelfComposedDpEvent,
        dp_event.ComposedDpEvent,
        dp_event.SampledWithoutReplacementDpEvent,
        dp_event.LaplaceDpEvent,
    )
}


def gaussian_round(*, noise_multiplier: float, sample_rate: float = 1.0) -> dp_event.DpEvent:
    """One round of the client-level Gaussian mechanism (sensitivity C, noise σC).

    ``sample_rate`` < 1 wraps it in Poisson subsampling (amplification); ``sample_rate`` = 1
    is the plain Gaussian mechanism (full participation, or no amplification claimed).
    """
    if not (math.isfinite(noise_multiplier) and noise_multiplier > 0):
        raise ConfigError(f"noise_multiplier must be a finite number > 0, got {noise_multiplier!r}")
    if not (0 < sample_rate <= 1):
        raise ConfigError(f"sample_rate must be in (0, 1], got sample_rate={sample_rate!r}")
    event = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate < 1:
        event = dp_accounting.PoissonSampledDpEvent(sample_rate, event)
    return event


def repeated(event: dp_event.DpEvent, count: int) -> dp_event.DpEvent:
    """``event`` composed with itself ``count`` times (``count`` = 0 is a no-op)."""
    if count == 0:
        return dp_accounting.NoOpDpEvent()
    return event if count == 1 else dp_accounting.SelfComposedDpEvent(event, count)


def event_to_json(event: dp_event.DpEvent) -> dict[str, Any]:
    """A JSON-ready dict ``{"type": ClassName, field: value, ...}``, nested for sub-events."""
    name = type(event).__name__
    if name not in _EVENT_TYPES:
        raise ConfigError(
            f"cannot serialise DpEvent of type {name}; supported: {sorted(_EVENT_TYPES)}"
        )
    out: dict[str, Any] = {"type": name}
    for field in attr.fields(type(event)):
        value = getattr(event, field.name)
        if isinstance(value, dp_event.DpEvent):
            value = event_to_json(value)
        elif isinstance(value, list | tuple):
            value = [event_to_json(v) if isinstance(v, dp_event.DpEvent) else v for v in value]
        out[field.name] = value
    return out


def event_from_json(data: dict[str, Any]) -> dp_event.DpEvent:
    """Inverse of :func:`event_to_json`; refuses unknown event types."""
    try:
        cls = _EVENT_TYPES[data["type"]]
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"unknown or missing DpEvent type in {data!r}; supported: {sorted(_EVENT_TYPES)}"
        ) from exc
    kwargs = {}
    for field in attr.fields(cls):
        value = data[field.name]
        if isinstance(value, dict):
            value = event_from_json(value)
        elif isinstance(value, list):
            value = [event_from_json(v) if isinstance(v, dict) else v for v in value]
        kwargs[field.name] = value
    return cls(**kwargs)


def min_noise_multiplier(event: dp_event.DpEvent) -> float | None:
    """The smallest Gaussian noise multiplier in ``event`` (None if it has none)."""
    if isinstance(event, dp_event.GaussianDpEvent):
        return float(event.noise_multiplier)
    if isinstance(event, dp_event.PoissonSampledDpEvent | dp_event.SelfComposedDpEvent):
        return min_noise_multiplier(event.event)
    if isinstance(event, dp_event.ComposedDpEvent):
        found = [m for e in event.events if (m := min_noise_multiplier(e)) is not None]
        return min(found) if found else None
    return None


def gdp_mu(
    event: dp_event.DpEvent, *, relation: str | Relation = Relation.ADD_REMOVE
) -> tuple[float, bool]:
    """μ of an event tree under GDP, and whether the CLT approximation was used.

    Gaussian(σ) contributes 1/σ² to μ² exactly; Poisson(q < 1) ∘ Gaussian(σ) contributes
    q²(e^{1/σ²} − 1) (CLT); compositions add; NonPrivate gives μ = ∞. Other events have no
    GDP form here and raise ``ConfigError``.

    Under replace-one μ doubles: a replaced client's clipped vector moves by up to 2C, so
    every Gaussian(σ) is a Gaussian of shift 2/σ, exactly. For the CLT value of Poisson
    rounds the doubling is the group-privacy bound (replace = remove, then add) applied to
    an approximation, so it stays an approximation.
    """
    factor = 2.0 if parse_relation(relation) is Relation.REPLACE_ONE else 1.0
    mu_sq, approx = _mu_squared(event)
    return factor * math.sqrt(mu_sq), approx


def _mu_squared(event: dp_event.DpEvent) -> tuple[float, bool]:
    if isinstance(event, dp_event.NoOpDpEvent):
        return 0.0, False
    if isinstance(event, dp_event.NonPrivateDpEvent):
        return math.inf, False
    if isinstance(event, dp_event.GaussianDpEvent):
        if event.noise_multiplier == 0:
            return math.inf, False
        return 1.0 / event.noise_multiplier**2, False
    if isinstance(event, dp_event.PoissonSampledDpEvent) and isinstance(
        event.event, dp_event.GaussianDpEvent
    ):
        q, sigma = event.sampling_probability, event.event.noise_multiplier
        if q == 0:
            return 0.0, False
        if sigma == 0:
            return math.inf, False
        if q == 1:
            return 1.0 / sigma**2, False
        return gdp.clt_mu_squared_per_round(noise_multiplier=sigma, sample_rate=q), True
    if isinstance(event, dp_event.SelfComposedDpEvent):
        mu_sq, approx = _mu_squared(event.event)
        return event.count * mu_sq, approx
    if isinstance(event, dp_event.ComposedDpEvent):
        parts = [_mu_squared(e) for e in event.events]
        return sum(p[0] for p in parts), any(p[1] for p in parts)
    raise ConfigError(f"GDP accounting does not support {type(event).__name__}")
