"""How a message is to be made, described by the server and echoed by the client.

The server describes the whole mechanism it wants a round's message made under
(:class:`RoundMechanism`: method, placement, clip point, C, σ, the count noise of adaptive
clipping and the neighbouring relation it accounts under) and the stage-1 statistics
release (:class:`ReleaseMechanism`). A client checks the description against its own
floor (:mod:`drencoder.federated.client.policy`), privatises with exactly what was described and
echoes the description's :meth:`~RoundMechanism.fingerprint`, so the server can refuse a
reply made under any other mechanism (e.g. after a resume with a changed config).

What a description costs the client that answers it (:func:`round_event`,
:func:`release_event`): the receiver of a client's message sees that this client took
part, so no amplification by sampling holds against it, and one client's message can be
any clipped vector: the *replace-one* relation (sensitivity 2C). The events are the
mechanism's own, ``GaussianDpEvent(σ)``, charged to a ledger kept under replace-one; a
message made without noise is charged as non-private (ε = ∞). With ``central`` placement
the message leaves un-noised: it is charged as non-private too, unless the client declares
that it trusts the aggregator to add the declared noise (node config
``trust-aggregator``).

Record-level DP (``unit = "record"``, with the DP-SGD described in ``record``): the client
trains with DP-SGD over its own examples and sends its update unclipped and un-noised at
client level. Against the receiver of the message that update is non-private for the
client as a whole (:func:`round_event` charges ``NonPrivateDpEvent``); its records are
protected by DP-SGD, which the client charges to a record-level ledger of its own
(:func:`record_event`, add-remove of one example, q from its own example count).

Adaptive clipping (``count_noise`` = σ_b set, central placement only): the server sends
each round's clip norm C_t in the description, and the client returns, besides its message,
the bit ``1[‖x‖ ≤ C_t]``, of which the aggregator releases a count noised with σ_b. The
round is then charged at the effective multiplier ``(σ⁻² + (2σ_b)⁻²)^(−1/2)``
(:attr:`RoundMechanism.charged_noise_multiplier`, :mod:`drencoder.federated.adaptive_clipping`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import dp_accounting
from dp_accounting import dp_event

from drencoder.accounting import Relation
from drencoder.config import Method
from drencoder.errors import ConfigError
from drencoder.federated.adaptive_clipping import effective_noise_multiplier
from drencoder.federated.record import RecordDpSgd
from drencoder.mechanisms import (
    ClipPoint,
    GaussianMechanism,
    NoisePlacement,
    PrivacyUnit,
    check_clip_norm,
    check_noise_multiplier,
)
from drencoder.prior import StatisticsRelease

FINGERPRINT_CHARS = 16


def canonical_json(data: Mapping[str, Any]) -> str:
    """Sorted keys, no whitespace, no NaN: one text per description, so one fingerprint."""
    return json.dumps(dict(data), sort_keys=True, separators=(",", ":"), allow_nan=False)


class _Description:
    """Strict JSON form and fingerprint shared by the two mechanism descriptions.

    Strict because a description is a promise about privacy: a key the reader does not
    know could change what the mechanism means, and a missing one leaves it undefined.
    """

    _TYPES: ClassVar[dict[str, tuple[type, ...]]]
    _WHAT: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]

    @classmethod
    def from_json(cls, data: str | Mapping[str, Any]):
        """Parse a description (its JSON text or the decoded object); unknown or missing
        keys and wrongly typed values raise :class:`ConfigError`."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise ConfigError(
                    f"a {cls._WHAT} description must be a JSON object, got text that does not "
                    f"parse ({exc.msg} at character {exc.pos}); server and client must run "
                    "the same drencoder version"
                ) from None
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"a {cls._WHAT} description must be a JSON object, got {type(data).__name__}"
            )
        expected = set(cls._TYPES)
        unknown, missing = sorted(set(data) - expected), sorted(expected - set(data))
        if unknown or missing:
            raise ConfigError(
                f"{cls._WHAT} description has unknown keys {unknown} and lacks keys "
                f"{missing}; expected exactly {sorted(expected)}: server and client must run "
                "the same drencoder version"
            )
        for key, types in cls._TYPES.items():
            value = data[key]
            # bool is an int subclass: a flag must not pass for a number or vice versa.
            if not (isinstance(value, types) and isinstance(value, bool) == (bool in types)):
                names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
                raise ConfigError(
                    f"{cls._WHAT} description key {key!r} must be {names}, got {value!r}"
                )
        return cls(**{k: data[k] for k in cls._TYPES})

    def canonical(self) -> str:
        """The description as canonical JSON text, as it travels."""
        return canonical_json(self.to_json())

    def fingerprint(self) -> str:
        """First 16 hex digits of the SHA-256 of :meth:`canonical`: any change of any
        field changes it, so a reply echoing it names the mechanism it was made under."""
        return hashlib.sha256(self.canonical().encode()).hexdigest()[:FINGERPRINT_CHARS]


_NUMBER = (int, float)


@dataclass(frozen=True, kw_only=True)
class RoundMechanism(_Description):
    """How one round's message is to be made: method, clipping, noise and the relation
    the server accounts it under.

    ``clip_norm=None`` means the update is sent unclipped (``fedavg-lora``); it requires
    ``noise_multiplier = 0``. ``noise_multiplier = 0`` means no noise at all.
    ``count_noise`` (σ_b, None without adaptive clipping) asks the client for its clip
    indicator and says how the aggregator noises their count; ``noise_multiplier`` is then
    the update's share z_Δ.
    """

    method: str
    placement: str
    clip_point: str
    clip_norm: float | None
    noise_multiplier: float
    count_noise: float | None = None
    relation: str
    unit: str = "client"
    record: dict | None = None
    """Record-level DP (``unit = "record"``): the DP-SGD every participant runs
    (:class:`~drencoder.federated.record.RecordDpSgd` as JSON); the message itself is then
    sent unclipped and un-noised (``clip_norm`` None, ``noise_multiplier`` 0)."""

    _TYPES: ClassVar = {
        "method": (str,),
        "placement": (str,),
        "clip_point": (str,),
        "clip_norm": (*_NUMBER, type(None)),
        "noise_multiplier": _NUMBER,
        "count_noise": (*_NUMBER, type(None)),
        "relation": (str,),
        "unit": (str,),
        "record": (dict, type(None)),
    }
    _WHAT: ClassVar = "round mechanism"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "method", Method(self.method).value)
        set_(self, "placement", NoisePlacement(self.placement).value)
        set_(self, "clip_point", ClipPoint(self.clip_point).value)
        if self.clip_norm is not None:
            set_(self, "clip_norm", check_clip_norm(self.clip_norm))
        set_(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        relations = tuple(r.value for r in Relation)
        if self.relation not in relations:
            raise ConfigError(f"relation must be one of {relations}, got {self.relation!r}")
        if self.clip_norm is None and self.noise_multiplier != 0:
            raise ConfigError(
                f"an unclipped update cannot be noised meaningfully: clip_norm=None needs "
                f"noise_multiplier=0, got {self.noise_multiplier!r}; set a clip norm"
            )
        set_(self, "unit", PrivacyUnit(self.unit).value)
        if (self.unit == PrivacyUnit.RECORD.value) != (self.record is not None):
            raise ConfigError(
                f"a round mechanism with unit {self.unit!r} needs record "
                f"{'set' if self.unit == PrivacyUnit.RECORD.value else 'null'}, got "
                f"record={self.record!r}"
            )
        if self.record is not None:
            set_(self, "record", RecordDpSgd.from_json(self.record).to_json())
            if self.clip_norm is not None or self.count_noise is not None:
                raise ConfigError(
                    "a record-level round sends its update without client-level clipping "
                    "or noise: clip_norm and count_noise must be null"
                )
        if self.count_noise is not None:
            set_(self, "count_noise", check_noise_multiplier(self.count_noise, name="count_noise"))
            if (
                self.count_noise == 0
                or self.noise_multiplier == 0
                or self.placement != NoisePlacement.CENTRAL.value
            ):
                raise ConfigError(
                    "adaptive clipping (count_noise set) needs central placement and positive "
                    f"noise, got placement {self.placement!r}, noise_multiplier "
                    f"{self.noise_multiplier!r}, count_noise {self.count_noise!r}"
                )

    @property
    def charged_noise_multiplier(self) -> float:
        """The multiplier a round under this description is charged at: σ, or with
        adaptive clipping the effective (σ⁻² + (2σ_b)⁻²)^(−1/2) of update and count."""
        if self.count_noise is None:
            return self.noise_multiplier
        return effective_noise_multiplier(self.noise_multiplier, self.count_noise)

    @property
    def dp_sgd(self) -> RecordDpSgd | None:
        """Record-level DP: the described DP-SGD; None at client level."""
        return None if self.record is None else RecordDpSgd.from_json(self.record)

    @property
    def gaussian(self) -> GaussianMechanism | None:
        """The mechanism a client runs, or None when it sends the update as it is."""
        if self.clip_norm is None:
            return None
        return GaussianMechanism(
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            placement=NoisePlacement(self.placement),
        )


@dataclass(frozen=True, kw_only=True)
class ReleaseMechanism(_Description):
    """How the stage-1 statistics are to be released (:class:`StatisticsRelease`)."""

    enabled: bool
    clip_norm: float
    noise_multiplier: float
    std_floor: float

    _TYPES: ClassVar = {
        "enabled": (bool,),
        "clip_norm": _NUMBER,
        "noise_multiplier": _NUMBER,
        "std_floor": _NUMBER,
    }
    _WHAT: ClassVar = "statistics release"

    def __post_init__(self) -> None:
        release = self.to_release()  # validates every field
        for key, value in release.to_dict().items():
            object.__setattr__(self, key, value)

    @classmethod
    def from_release(cls, release: StatisticsRelease) -> ReleaseMechanism:
        return cls(**release.to_dict())

    def to_release(self) -> StatisticsRelease:
        return StatisticsRelease(
            enabled=self.enabled,
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            std_floor=self.std_floor,
        )

    @property
    def noised(self) -> bool:
        return self.enabled and self.noise_multiplier > 0


def round_event(mechanism: RoundMechanism, *, trust_aggregator: bool = False) -> dp_event.DpEvent:
    """What one answered round costs the client, against whoever receives its message.

    ``GaussianDpEvent(σ)`` (with adaptive clipping σ is the effective multiplier of update
    and count, :attr:`RoundMechanism.charged_noise_multiplier`), analysed under replace-one
    with no amplification (module docstring), or ``NonPrivateDpEvent`` without noise. A
    ``central`` message leaves un-noised: it is charged as non-private unless the client
    trusts the aggregator to add the declared noise (``trust_aggregator``).
    """
    if mechanism.noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    if mechanism.placement == NoisePlacement.CENTRAL.value and not trust_aggregator:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(mechanism.charged_noise_multiplier)


def record_event(mechanism: RoundMechanism, *, examples: int) -> dp_event.DpEvent:
    """What one record-level round costs the records of a client holding ``examples``
    examples: its own DP-SGD steps at q = min(1, batch / examples), charged to a ledger
    kept under add-remove of one example (:mod:`drencoder.federated.record`)."""
    record = mechanism.dp_sgd
    if record is None:
        raise ConfigError("record_event needs a record-level round mechanism (unit 'record')")
    return record.event(examples)


def release_event(release: ReleaseMechanism) -> dp_event.DpEvent:
    """What the stage-1 release costs the client: ``GaussianDpEvent(σ_s)`` under
    replace-one, as :func:`round_event`, or ``NonPrivateDpEvent`` when un-noised."""
    if not release.noised:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(release.noise_multiplier)
