"""What a client agrees to release, and the privacy ledger it keeps of its own.

Why a client needs this: the server's ledger is the server's word. A curious or
misconfigured server, or a resumed run whose config changed, could ask a client to clip
with a larger norm, to noise less, or to leave the noise to the aggregator, and the
client's own copy of the run config would not notice. So the server describes the whole
mechanism it wants a message made under (:class:`RoundMechanism` for a round,
:class:`ReleaseMechanism` for the stage-1 statistics), the client checks that description
against a floor of its own (:class:`ClientPolicy`), privatises with exactly what was
described, charges its own ledger (:class:`NodeLedger`) before anything leaves, and echoes
the description's :meth:`~RoundMechanism.fingerprint` so the server can tell that the
message was made under the mechanism it accounted.

What a client charges. The party that receives a client's message sees that this client
took part, so no amplification by sampling holds against it, and one client's message
can be any clipped vector: between two values of this client's data the message moves by
up to 2C (the *replace-one* relation). A Gaussian mechanism with noise σC at sensitivity
2C is the Gaussian mechanism of noise multiplier σ/2 at sensitivity C, which is how the
add/remove ledger of :mod:`drencoder.accounting` can express it (:func:`round_event`,
:func:`release_event`). A message made without noise is charged as non-private (ε = ∞).

With ``central`` placement the client's message leaves un-noised; the client charges the
declared σ all the same, which holds only if the aggregator really adds that noise. A
client that does not trust the aggregator requires ``local`` placement.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import dp_accounting
from dp_accounting import dp_event

from drencoder.accounting import Accountant, Entry, PrivacyLedger
from drencoder.config import Method
from drencoder.errors import ConfigError, DrencoderError
from drencoder.mechanisms import (
    ClipPoint,
    GaussianMechanism,
    NoisePlacement,
    check_clip_norm,
    check_noise_multiplier,
)
from drencoder.prior import StatisticsRelease

try:  # serialises charges of concurrent processes of one client; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

RELATIONS = ("replace-one", "add-remove")
"""Neighbouring relations a server may declare its accounting under: ``replace-one``
(one client's data replaced by any other; sensitivity 2C) or ``add-remove`` (one
client's data added or removed; sensitivity C)."""

REPLACE_ONE_FACTOR = 2.0
"""Sensitivity of a clipped message under replace-one, in units of the clip norm."""

NODE_ACCOUNTANT = Accountant.PLD
"""The accountant a client's ε cap is judged under: the tightest of the three whose
answer is a bound (PLD's estimate is pessimistic; GDP with sampling is only a CLT
approximation, and a client's ledger holds no sampled events anyway)."""

DEFAULT_DELTA = 1e-5

FINGERPRINT_CHARS = 16


class PolicyRefusal(DrencoderError):
    """A client declines a task because it breaks one of its rules.

    ``rule`` names the rule: a node-config key of :data:`POLICY_KEYS`, ``max-epsilon``
    for the ledger's cap, or ``method`` when the task's method sends other blocks than the
    client's layout. The message can name values the server sent and the client's own
    limits; it stays on the client (logged there), the server only learns that the client
    refused.
    """

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule


# -- mechanism descriptions ---------------------------------------------------------------
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
    """

    method: str
    placement: str
    clip_point: str
    clip_norm: float | None
    noise_multiplier: float
    relation: str

    _TYPES: ClassVar = {
        "method": (str,),
        "placement": (str,),
        "clip_point": (str,),
        "clip_norm": (*_NUMBER, type(None)),
        "noise_multiplier": _NUMBER,
        "relation": (str,),
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
        if self.relation not in RELATIONS:
            raise ConfigError(f"relation must be one of {RELATIONS}, got {self.relation!r}")
        if self.clip_norm is None and self.noise_multiplier != 0:
            raise ConfigError(
                f"an unclipped update cannot be noised meaningfully: clip_norm=None needs "
                f"noise_multiplier=0, got {self.noise_multiplier!r}; set a clip norm"
            )

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


def round_event(mechanism: RoundMechanism) -> dp_event.DpEvent:
    """What one answered round costs the client, against whoever receives its message.

    Replace-one, no amplification (module docstring): ``GaussianDpEvent(σ/2)``, or
    ``NonPrivateDpEvent`` without noise.
    """
    # The accounting layer's events are add/remove; replace-one is expressed as the
    # add/remove Gaussian of half the noise multiplier until events carry a relation.
    if mechanism.noise_multiplier == 0:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(mechanism.noise_multiplier / REPLACE_ONE_FACTOR)


def release_event(release: ReleaseMechanism) -> dp_event.DpEvent:
    """What the stage-1 release costs the client: ``GaussianDpEvent(σ_s/2)`` (replace-one,
    as :func:`round_event`), or ``NonPrivateDpEvent`` when the statistics go un-noised."""
    if not release.noised:
        return dp_accounting.NonPrivateDpEvent()
    return dp_accounting.GaussianDpEvent(release.noise_multiplier / REPLACE_ONE_FACTOR)


# -- the client's floor -------------------------------------------------------------------
POLICY_KEYS = {
    "min-noise-multiplier": "min_noise_multiplier",
    "max-clip-norm": "max_clip_norm",
    "require-placement": "placement",
    "require-stage1-noise": "require_stage1_noise",
    "max-epsilon": "max_epsilon",
    "delta": "delta",
}
"""Node-config key → :class:`ClientPolicy` field."""

LEDGER_PATH_KEY = "ledger-path"

_POLICY_PREFIXES = ("min-", "max-", "require-")
"""Node-config keys with these prefixes are reserved for the policy: a misspelt rule
must fail loudly, not leave the client without the floor its operator meant to set."""


def _unset(value: object) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def _node_number(key: str, value: object, *, low: float, low_open: bool, high=None) -> float:
    bound = f"> {low:g}" if low_open else f">= {low:g}"
    if high is not None:
        bound += f" and < {high:g}"
    fix = f'set it to a number {bound}, e.g. --node-config "{key}=1.0", or "" to leave it unset'
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"node config {key}={value!r} is not a number: {fix}") from None
    if not (
        math.isfinite(number)
        and (number > low if low_open else number >= low)
        and (high is None or number < high)
    ):
        raise ConfigError(f"node config {key}={value!r} is out of range: {fix}")
    return number


def _node_flag(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(
        f'node config {key}={value!r} must be true or false, e.g. --node-config "{key}=true"'
    )


@dataclass(frozen=True, kw_only=True)
class ClientPolicy:
    """A client's own floor: what it refuses to release, whatever the server asks.

    Every limit is optional (None = no limit) except ``require_stage1_noise``, on by
    default because an un-noised statistics release has ε = ∞. ``max_epsilon`` caps the
    client's own ledger (:class:`NodeLedger`) at ``delta``.
    """

    min_noise_multiplier: float | None = None
    max_clip_norm: float | None = None
    placement: str | None = None
    require_stage1_noise: bool = True
    max_epsilon: float | None = None
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        if self.min_noise_multiplier is not None:
            object.__setattr__(
                self,
                "min_noise_multiplier",
                check_noise_multiplier(self.min_noise_multiplier, name="min_noise_multiplier"),
            )
        if self.max_clip_norm is not None:
            object.__setattr__(
                self, "max_clip_norm", check_clip_norm(self.max_clip_norm, name="max_clip_norm")
            )
        if self.placement is not None:
            object.__setattr__(self, "placement", NoisePlacement(self.placement).value)
        if not isinstance(self.require_stage1_noise, bool):
            raise ConfigError(
                f"require_stage1_noise must be true or false, got {self.require_stage1_noise!r}"
            )
        if self.max_epsilon is not None and not (
            math.isfinite(self.max_epsilon) and self.max_epsilon > 0
        ):
            raise ConfigError(
                f"max_epsilon must be finite and > 0 (None for no cap), got {self.max_epsilon!r}"
            )
        if not (0 < self.delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got delta={self.delta!r}")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> ClientPolicy:
        """The policy a SuperNode's node config sets (keys in :data:`POLICY_KEYS`).

        An empty string leaves a key unset. Keys this policy does not read belong to
        others (``partition-id``, …) and are ignored, except unknown keys starting with
        ``min-``, ``max-`` or ``require-``, which are refused as likely misspellings.
        """
        for key in node_config:
            if key.startswith(_POLICY_PREFIXES) and key not in POLICY_KEYS:
                raise ConfigError(
                    f"node config key {key!r} is not a rule this client knows; the rules are "
                    f"{sorted(POLICY_KEYS)}: correct the key or remove it"
                )
        raw = {k: node_config.get(k) for k in POLICY_KEYS}
        kwargs: dict[str, Any] = {}
        if not _unset(v := raw["min-noise-multiplier"]):
            kwargs["min_noise_multiplier"] = _node_number(
                "min-noise-multiplier", v, low=0, low_open=False
            )
        if not _unset(v := raw["max-clip-norm"]):
            kwargs["max_clip_norm"] = _node_number("max-clip-norm", v, low=0, low_open=True)
        if not _unset(v := raw["require-placement"]):
            valid = [p.value for p in NoisePlacement]
            if not isinstance(v, str) or v.strip() not in valid:
                raise ConfigError(
                    f"node config require-placement={v!r} must be one of {valid}, e.g. "
                    '--node-config \'require-placement="local"\', or "" for no requirement'
                )
            kwargs["placement"] = v.strip()
        if not _unset(v := raw["require-stage1-noise"]):
            kwargs["require_stage1_noise"] = _node_flag("require-stage1-noise", v)
        if not _unset(v := raw["max-epsilon"]):
            kwargs["max_epsilon"] = _node_number("max-epsilon", v, low=0, low_open=True)
        if not _unset(v := raw["delta"]):
            kwargs["delta"] = _node_number("delta", v, low=0, low_open=True, high=1)
        return cls(**kwargs)

    def check_round(self, mechanism: RoundMechanism) -> None:
        """Raise :class:`PolicyRefusal` unless a round under ``mechanism`` is acceptable."""
        floor, sigma = self.min_noise_multiplier, mechanism.noise_multiplier
        if floor is not None and sigma < floor:
            raise PolicyRefusal(
                "min-noise-multiplier",
                f"the task's noise multiplier {sigma:g} is below this client's floor {floor:g}",
            )
        cap = self.max_clip_norm
        if cap is not None and mechanism.clip_norm is None:
            raise PolicyRefusal(
                "max-clip-norm",
                f"the task sends the update unclipped; this client caps C at {cap:g}",
            )
        if cap is not None and mechanism.clip_norm > cap:  # type: ignore[operator]
            raise PolicyRefusal(
                "max-clip-norm",
                f"the task's clip norm {mechanism.clip_norm:g} exceeds this client's cap {cap:g}",
            )
        if self.placement is not None and mechanism.placement != self.placement:
            raise PolicyRefusal(
                "require-placement",
                f"the task's noise placement is {mechanism.placement!r}; this client requires "
                f"{self.placement!r}",
            )

    def check_release(self, release: ReleaseMechanism) -> None:
        """Raise :class:`PolicyRefusal` unless the stage-1 ``release`` is acceptable.

        ``min_noise_multiplier`` applies to a noised release as to a round (ε of a Gaussian
        release depends on σ alone); ``max_clip_norm`` does not: the statistics' clip norm
        bounds another vector, on another scale. An un-noised release is refused unless
        ``require_stage1_noise`` is off.
        """
        if self.require_stage1_noise and not release.noised:
            raise PolicyRefusal(
                "require-stage1-noise",
                "the task releases the stage-1 statistics without noise (enabled="
                f"{release.enabled}, noise multiplier {release.noise_multiplier:g})",
            )
        floor = self.min_noise_multiplier
        if release.enabled and floor is not None and release.noise_multiplier < floor:
            raise PolicyRefusal(
                "min-noise-multiplier",
                f"the statistics release's noise multiplier {release.noise_multiplier:g} is "
                f"below this client's floor {floor:g}",
            )


# -- the client's ledger ------------------------------------------------------------------
def node_ledger_path(node_config: Mapping[str, Any], partition_id: int) -> Path:
    """``ledger-path`` from the node config, else
    ``<cache>/node-ledgers/partition-<id>.json`` (``$DRENCODER_CACHE`` or
    ``~/.cache/drencoder``). Keyed by partition, not by run: a client's data is the same in
    every run it joins, so every run charges one ledger."""
    path = node_config.get(LEDGER_PATH_KEY)
    if not _unset(path):
        if not isinstance(path, str):
            raise ConfigError(
                f"node config {LEDGER_PATH_KEY}={path!r} must be a path string, e.g. "
                f"--node-config '{LEDGER_PATH_KEY}=\"/srv/site/ledger.json\"'"
            )
        return Path(path).expanduser()
    from drencoder.models.cache import cache_root

    return cache_root() / "node-ledgers" / f"partition-{int(partition_id)}.json"


class NodeLedger:
    """A client's own privacy ledger, a JSON file it alone writes.

    Charged before a message is released (:meth:`charge` persists the entry, fsynced,
    before it returns), so a crash or a lost reply can over-charge, never under-charge.
    Each charge re-reads the file under a lock, since every task may run in a process of
    its own. ε is the ledger's composition at ``delta`` under :data:`NODE_ACCOUNTANT`;
    δ is a reporting choice, so a ledger written at another δ is read at this one.
    A damaged file raises :class:`~drencoder.errors.CheckpointError`: the client then
    releases nothing until its operator repairs or replaces it.
    """

    def __init__(self, path: str | os.PathLike, *, delta: float = DEFAULT_DELTA) -> None:
        self.path = Path(path)
        self.delta = float(delta)
        self.ledger = self._read()

    def _read(self) -> PrivacyLedger:
        if not self.path.exists():
            return PrivacyLedger(delta=self.delta)
        return PrivacyLedger(delta=self.delta, entries=PrivacyLedger.load(self.path).entries)

    @property
    def entries(self) -> tuple[Entry, ...]:
        return self.ledger.entries

    def epsilon(self) -> float:
        return self.ledger.epsilon(NODE_ACCOUNTANT)

    def would_exceed(self, event: dp_event.DpEvent, cap: float | None) -> bool:
        """Whether charging ``event`` would take ε past ``cap`` (never, when None)."""
        if cap is None:
            return False
        return self.ledger.would_exceed(event, target_epsilon=cap, accountant=NODE_ACCOUNTANT)

    def check(self, event: dp_event.DpEvent, cap: float | None) -> None:
        """Raise :class:`PolicyRefusal` (rule ``max-epsilon``) if charging ``event`` would
        take ε past ``cap``; lets a client refuse before it does the work."""
        if self.would_exceed(event, cap):
            raise PolicyRefusal(
                "max-epsilon",
                f"the task would take this client's epsilon past its cap {cap:g} at "
                f"delta={self.delta:g} ({NODE_ACCOUNTANT.value})",
            )

    def charge(
        self,
        event: dp_event.DpEvent,
        *,
        kind: str,
        label: str,
        round: int | None = None,
        cap: float | None = None,
    ) -> Entry:
        """Record ``event`` and persist the ledger; :class:`PolicyRefusal` (rule
        ``max-epsilon``), charging nothing, if it would take ε past ``cap``."""
        with self._locked():
            self.ledger = self._read()  # another task may have charged meanwhile
            self.check(event, cap)
            entry = self.ledger.record(event, kind=kind, label=label, round=round)
            self._write()
        return entry

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _write(self) -> None:
        text = json.dumps(self.ledger.to_json(), indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
