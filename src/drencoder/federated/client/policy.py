"""What a client agrees to release, and the privacy ledger it keeps of its own.

Why a client needs this: the server's ledger is the server's word. A curious or
misconfigured server, or a resumed run whose config changed, could ask a client to clip
with a larger norm, to noise less, or to leave the noise to the aggregator, and the
client's own copy of the run config would not notice. So the server describes the
mechanism it wants (:mod:`drencoder.federated.descriptions`), the client checks that
description against a floor of its own (:class:`ClientPolicy`), privatises with exactly
what was described, and charges its own ledger (:class:`NodeLedger`, kept under the
replace-one relation) before anything leaves.

A client that does not trust the aggregator to add central noise requires ``local``
placement (``require-placement``).

Record-level DP (a round described with ``unit = "record"``): the client runs the described
DP-SGD and keeps a second ledger for its records (:func:`record_ledger_path`, kept under
add-remove of one example), capped by ``max-record-epsilon``. Its sent update carries no
client-level guarantee, so its client-level ledger is charged a non-private release, which
any ``max-epsilon`` refuses: a node that takes part in record-level runs sets
``max-record-epsilon`` instead. ``min-noise-multiplier`` and ``max-clip-norm`` apply to
DP-SGD's σ and per-example C.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dp_accounting import dp_event

from drencoder.accounting import Accountant, Entry, PrivacyLedger, Relation
from drencoder.errors import ConfigError, DrencoderError
from drencoder.federated.descriptions import ReleaseMechanism, RoundMechanism
from drencoder.mechanisms import (
    NoisePlacement,
    check_clip_norm,
    check_noise_multiplier,
)

try:  # serialises charges of concurrent processes of one client; absent on Windows
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

NODE_ACCOUNTANT = Accountant.PLD
"""The accountant a client's ε cap is judged under: the tightest of the three whose
answer is a bound (PLD's estimate is pessimistic; GDP with sampling is only a CLT
approximation, and a client's ledger holds no sampled events anyway)."""

DEFAULT_DELTA = 1e-5


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


# -- the client's floor -------------------------------------------------------------------
POLICY_KEYS = {
    "min-noise-multiplier": "min_noise_multiplier",
    "max-clip-norm": "max_clip_norm",
    "require-placement": "placement",
    "require-stage1-noise": "require_stage1_noise",
    "max-epsilon": "max_epsilon",
    "max-record-epsilon": "max_record_epsilon",
    "trust-aggregator": "trust_aggregator",
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
    client's own ledger (:class:`NodeLedger`) at ``delta``. ``trust_aggregator`` (default
    false) decides what a ``central``-placement task costs: the message leaves un-noised,
    so against the aggregator it is not private and is charged as such (ε = ∞, which any
    ``max_epsilon`` refuses); a client that trusts the aggregator to add the declared
    noise (a trusted party, or secure aggregation with distributed noise) sets it true and
    is charged the declared Gaussian.
    """

    min_noise_multiplier: float | None = None
    max_clip_norm: float | None = None
    placement: str | None = None
    require_stage1_noise: bool = True
    max_epsilon: float | None = None
    max_record_epsilon: float | None = None
    trust_aggregator: bool = False
    delta: float = DEFAULT_DELTA

    def __post_init__(self) -> None:
        if not isinstance(self.trust_aggregator, bool):
            raise ConfigError(
                f"trust_aggregator must be true or false, got {self.trust_aggregator!r}"
            )
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
        if self.max_record_epsilon is not None and not (
            math.isfinite(self.max_record_epsilon) and self.max_record_epsilon > 0
        ):
            raise ConfigError(
                "max_record_epsilon must be finite and > 0 (None for no cap), got "
                f"{self.max_record_epsilon!r}"
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
        if not _unset(v := raw["max-record-epsilon"]):
            kwargs["max_record_epsilon"] = _node_number(
                "max-record-epsilon", v, low=0, low_open=True
            )
        if not _unset(v := raw["trust-aggregator"]):
            kwargs["trust_aggregator"] = _node_flag("trust-aggregator", v)
        if not _unset(v := raw["delta"]):
            kwargs["delta"] = _node_number("delta", v, low=0, low_open=True, high=1)
        return cls(**kwargs)

    def check_round(self, mechanism: RoundMechanism) -> None:
        """Raise :class:`PolicyRefusal` unless a round under ``mechanism`` is acceptable."""
        record = mechanism.dp_sgd
        if record is not None:
            self._check_record(record, mechanism.placement)
            return
        # With adaptive clipping the round is charged at the effective multiplier of update
        # and count release together, which is below the update's own.
        floor, sigma = self.min_noise_multiplier, mechanism.charged_noise_multiplier
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

    def _check_record(self, record, placement: str) -> None:
        """The floor applied to a record-level round's DP-SGD (σ per step, C per example)."""
        floor, cap = self.min_noise_multiplier, self.max_clip_norm
        if floor is not None and record.noise_multiplier < floor:
            raise PolicyRefusal(
                "min-noise-multiplier",
                f"the task's DP-SGD noise multiplier {record.noise_multiplier:g} is below "
                f"this client's floor {floor:g}",
            )
        if cap is not None and record.clip_norm > cap:
            raise PolicyRefusal(
                "max-clip-norm",
                f"the task's per-example clip norm {record.clip_norm:g} exceeds this "
                f"client's cap {cap:g}",
            )
        if self.placement is not None and placement != self.placement:
            raise PolicyRefusal(
                "require-placement",
                f"the task's noise placement is {placement!r}; this client requires "
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


def record_ledger_path(path: str | os.PathLike) -> Path:
    """Where a node keeps its record-level ledger: beside its client-level ledger
    ``NAME.json``, as ``NAME.record.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.record{path.suffix or '.json'}")


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

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        delta: float = DEFAULT_DELTA,
        relation: Relation = Relation.REPLACE_ONE,
    ) -> None:
        self.path = Path(path)
        self.delta = float(delta)
        self.relation = relation
        """replace-one for the client-level ledger; add-remove of one example for the
        record-level one (:func:`record_ledger_path`)."""
        self.ledger = self._read()

    def _read(self) -> PrivacyLedger:
        if not self.path.exists():
            return PrivacyLedger(delta=self.delta, relation=self.relation)
        return PrivacyLedger(
            delta=self.delta,
            relation=self.relation,
            entries=PrivacyLedger.load(self.path).entries,
        )

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
