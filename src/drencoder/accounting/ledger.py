"""The privacy ledger of a run: every charged event, composed per client.

Habit 1 of STYLE.md (describe, then account): mechanisms describe what they did as
DpEvents; the run records them here; ε is derived from the ledger, never stored beside it.

Each entry is charged either to every client (``clients=None``: the stage-1 statistics
release, or a ``central``-noise round, where any client may have been sampled and the
amplified event applies to all) or to the listed clients only (``local`` noise: the server
knows who took part, so each participant is charged an un-amplified Gaussian round and
non-participants nothing; DESIGN §3). ε of the run is the worst client's ε.

Every ε of a ledger is stated under one neighbouring relation (``relation``, see
:mod:`drencoder.accounting.relation`): the events are what the mechanisms did, the relation
is what they are compared against, so it belongs to the ledger rather than to an entry. It
is saved with the entries, and a ledger written before the relation was recorded loads as
add-remove, the relation it was accounted under then.

The ledger saves to JSON; events are stored in dp-accounting's vocabulary.
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dp_accounting import dp_event

from drencoder.accounting import accountants as acc
from drencoder.accounting import events as ev
from drencoder.accounting.calibration import CLT_UNDERSTATES
from drencoder.accounting.gdp import GdpApproximationWarning, warn_clt
from drencoder.accounting.relation import Relation, parse_relation
from drencoder.errors import CheckpointError, ConfigError

LEDGER_FORMAT = 1


@dataclass(frozen=True)
class Entry:
    """One charged event. ``clients=None`` means it is charged to every client."""

    kind: str
    label: str
    event: dp_event.DpEvent
    clients: tuple[int, ...] | None = None
    round: int | None = None

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "label": self.label,
            "round": self.round,
            "clients": None if self.clients is None else list(self.clients),
            "event": ev.event_to_json(self.event),
        }

    @classmethod
    def from_json(cls, data: dict) -> Entry:
        clients = data.get("clients")
        return cls(
            kind=data["kind"],
            label=data["label"],
            round=data.get("round"),
            clients=None if clients is None else tuple(int(c) for c in clients),
            event=ev.event_from_json(data["event"]),
        )


def _key(event: dp_event.DpEvent) -> str:
    return json.dumps(ev.event_to_json(event), sort_keys=True)


class PrivacyLedger:
    """Append-only record of privacy events; answers ε under gdp, rdp and pld."""

    def __init__(
        self,
        *,
        delta: float,
        relation: str | Relation = Relation.ADD_REMOVE,
        entries: Iterable[Entry] = (),
    ) -> None:
        if not (0 < delta < 1):
            raise ConfigError(f"delta must be in (0, 1), got delta={delta!r}")
        self.delta = float(delta)
        self._relation = parse_relation(relation)
        self._entries: list[Entry] = list(entries)
        self._cache: dict[tuple[str, str], float] = {}

    @property
    def relation(self) -> Relation:
        """The neighbouring relation every ε of this ledger is stated under (fixed)."""
        return self._relation

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def record(
        self,
        event: dp_event.DpEvent,
        *,
        kind: str,
        label: str | None = None,
        round: int | None = None,
        clients: Sequence[int] | None = None,
    ) -> Entry:
        """Charge ``event`` to ``clients`` (all clients when None)."""
        ev.event_to_json(event)  # refuse unsupported events now, not at save time
        entry = Entry(
            kind=kind,
            label=label or (f"{kind} {round}" if round is not None else kind),
            event=event,
            clients=None if clients is None else tuple(sorted(int(c) for c in clients)),
            round=round,
        )
        self._entries.append(entry)
        return entry

    # -- composition -------------------------------------------------------------------
    def _groups(self, entries: Sequence[Entry]) -> list[Counter]:
        """The distinct per-client multisets of events that are not dominated by another.

        A client whose events are a sub-multiset of another client's cannot have a larger
        ε (composition is monotone), so only maximal multisets need accounting.
        """
        common: Counter = Counter()
        per_client: dict[int, Counter] = {}
        for e in entries:
            if e.clients is None:
                common[_key(e.event)] += 1
            else:
                for c in e.clients:
                    per_client.setdefault(c, Counter())[_key(e.event)] += 1
        groups = {frozenset((common + c).items()) for c in per_client.values()} or {
            frozenset(common.items())
        }
        counters = [Counter(dict(g)) for g in groups]
        return [
            g
            for g in counters
            if not any(h != g and all(h[k] >= n for k, n in g.items()) for h in counters)
        ]

    @staticmethod
    def _compose(group: Counter) -> dp_event.DpEvent:
        parts = [
            ev.repeated(ev.event_from_json(json.loads(k)), n) for k, n in sorted(group.items())
        ]
        if not parts:
            return dp_event.NoOpDpEvent()
        return parts[0] if len(parts) == 1 else dp_event.ComposedDpEvent(parts)

    def _epsilon_of(self, entries: Sequence[Entry], accountant: acc.Accountant) -> float:
        worst = 0.0
        for group in self._groups(entries):
            key = (json.dumps(sorted(group.items())), accountant.value)
            if key not in self._cache:
                self._cache[key] = acc.epsilon(
                    self._compose(group),
                    delta=self.delta,
                    accountant=accountant,
                    relation=self._relation,
                )
            worst = max(worst, self._cache[key])
        return worst

    def epsilon(self, accountant: str | acc.Accountant = acc.Accountant.PLD) -> float:
        """The worst client's ε at the ledger's δ and relation under one accountant.

        Raises :class:`~drencoder.accounting.accountants.UnsupportedRelation` where the
        accountant has no analysis under the ledger's relation.
        """
        return self._epsilon_of(self._entries, acc.parse_accountant(accountant))

    def epsilons(self, accountants=acc.ALL_ACCOUNTANTS) -> dict[str, float | None]:
        """``{"gdp": ε, "rdp": ε, "pld": ε}`` (worst client each); one CLT warning at most.

        ``None`` for an accountant with no analysis under the ledger's relation (rdp with
        Poisson subsampling under replace-one), as in ``accounting.epsilons``.
        """
        out: dict[str, float | None] = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GdpApproximationWarning)
            for a in accountants:
                try:
                    out[acc.parse_accountant(a).value] = self.epsilon(a)
                except acc.UnsupportedRelation:
                    out[acc.parse_accountant(a).value] = None
        if acc.Accountant.GDP.value in out and self.uses_clt():
            warn_clt(stacklevel=2)
        return out

    def uses_clt(self) -> bool:
        """Whether GDP needs the central-limit approximation for this ledger."""
        return any(ev.gdp_mu(e.event)[1] for e in self._entries)

    def would_exceed(
        self,
        event: dp_event.DpEvent,
        *,
        target_epsilon: float,
        accountant: str | acc.Accountant = acc.Accountant.PLD,
        clients: Sequence[int] | None = None,
        count: int = 1,
    ) -> bool:
        """Whether charging ``event`` (``count`` times) would take ε past ``target_epsilon``.

        A budget stop is a decision, and approximations never decide a budget: gdp raises
        ``ConfigError`` when the ledger or the probe needs the central-limit approximation.
        """
        accountant = acc.parse_accountant(accountant)
        extra = [Entry(kind="probe", label="probe", event=event, clients=clients)] * count
        if accountant is acc.Accountant.GDP and (
            self.uses_clt() or any(ev.gdp_mu(e.event)[1] for e in extra)
        ):
            raise ConfigError(f"{CLT_UNDERSTATES}; decide the budget with accountant pld or rdp")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GdpApproximationWarning)
            eps = self._epsilon_of(self._entries + extra, accountant)
        return eps > target_epsilon

    def charges(self) -> dict[str, int]:
        """How many entries of each kind were recorded (``{"statistics": 1, "round": 12}``)."""
        return dict(Counter(e.kind for e in self._entries))

    def participation(self) -> dict[int, int]:
        """Rounds charged per client for client-specific entries."""
        counts: Counter = Counter()
        for e in self._entries:
            if e.clients is not None and e.kind == "round":
                counts.update(e.clients)
        return dict(sorted(counts.items()))

    # -- persistence -------------------------------------------------------------------
    def to_json(self) -> dict:
        return {
            "format": LEDGER_FORMAT,
            "delta": self.delta,
            "relation": self._relation.value,
            "entries": [e.to_json() for e in self._entries],
        }

    @classmethod
    def from_json(cls, data: dict) -> PrivacyLedger:
        if not isinstance(data, dict) or data.get("format") != LEDGER_FORMAT:
            raise CheckpointError(
                f"not a drencoder privacy ledger (format {LEDGER_FORMAT} expected), "
                f"got format={data.get('format') if isinstance(data, dict) else None!r}"
            )
        try:
            return cls(
                delta=data["delta"],
                # Ledgers written before the relation was recorded were add-remove.
                relation=data.get("relation", Relation.ADD_REMOVE.value),
                entries=[Entry.from_json(e) for e in data["entries"]],
            )
        except (KeyError, TypeError) as exc:
            raise CheckpointError(f"malformed privacy ledger: missing {exc}") from exc
        except ConfigError as exc:
            raise CheckpointError(f"malformed privacy ledger: {exc}") from exc

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PrivacyLedger:
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise CheckpointError(f"privacy ledger not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"privacy ledger {path} is not valid JSON: {exc}") from exc

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PrivacyLedger) and self.to_json() == other.to_json()

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(delta={self.delta}, relation={self._relation.value}, "
            f"entries={len(self)}, charges={self.charges()})"
        )
