"""The privacy ledger of a run: every charged event, composed per client.

Describe, then account: mechanisms describe what they did as
DpEvents; the run records them here; ε is derived from the ledger, never stored beside it.

Each entry is charged either to every client (``clients=None``: the stage-1 statistics
release, or a ``central``-noise round, where any client may have been sampled and the
amplified event applies to all) or to the listed clients only (``local`` noise: the server
knows who took part, so each participant is charged an un-amplified Gaussian round and
non-participants nothing; docs/design.md §3). ε of the run is the worst client's ε.

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
from dataclasses import dataclass, replace
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


#: One client's own charges (entries listing it), as sorted ``(event key, count)`` pairs.
#: Sorted tuples are canonical, so equal multisets are one dict key.
Group = tuple[tuple[str, int], ...]


def _covers(big: dict[str, int], small: dict[str, int]) -> bool:
    """Whether the multiset ``big`` contains ``small`` (so its ε is at least as large)."""
    return all(big.get(k, 0) >= n for k, n in small.items())


def _admit(maximal: dict[int, dict[str, int]], gid: int, group: dict[str, int]) -> None:
    """Insert group ``gid`` into the antichain ``maximal`` (id → multiset), in place.

    Dropped if a member contains it; otherwise it enters and evicts the members it contains.
    """
    if gid in maximal or any(_covers(m, group) for m in maximal.values()):
        return
    for g in [g for g, m in maximal.items() if _covers(group, m)]:
        del maximal[g]
    maximal[gid] = group


class PrivacyLedger:
    """Append-only record of privacy events; answers ε under gdp, rdp and pld.

    The composition state is kept up to date as entries are recorded (or loaded), so a
    query never re-walks the entries. ``_common`` counts the events charged to every
    client. Each distinct multiset of events charged to clients individually (a *group*)
    gets a small integer id; ``_client_group`` maps each client some entry named to its
    group, ``_members`` counts the clients of each group, and ``_maximal`` holds the groups
    no other group contains. Composition is monotone (a sub-multiset cannot have a larger
    ε), so ε of the run is the largest ε among ``_common`` + each maximal group.

    Recording an entry moves only the clients it lists, bucketed by their group, and
    ``_step`` memoises group + charge → group, so a round costs O(its clients) dictionary
    operations however long the run. Clients only ever gain events: a group dominated once
    stays dominated, and a maximal group that loses its last client is contained in the
    groups its clients moved to, which are new; so inserting the new groups alone keeps
    ``_maximal`` exact. ε of each composed multiset is cached per accountant, keyed by the
    multiset, so repeated queries, and a probe followed by the same charge, cost nothing.
    """

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
        self._entries: list[Entry] = []
        self._cache: dict[tuple[str, str], float] = {}
        self._common: Counter = Counter()
        self._group: list[dict[str, int]] = [{}]  # id → multiset; 0: charged nothing yet
        self._group_id: dict[Group, int] = {(): 0}
        self._step: dict[tuple[int, str, int], int] = {}  # (group, key, times) → group
        self._client_group: dict[int, int] = {}
        self._members: dict[int, int] = {}  # group → its clients (group 0 not counted)
        self._maximal: dict[int, dict[str, int]] = {}
        self._kinds: Counter = Counter()
        self._participation: Counter = Counter()
        self._ids: dict[int, int] = {}  # one int object per client id, shared by entries
        self._clt_at: int | None = None  # first entry needing the CLT under gdp
        self._no_gdp: tuple[int, ConfigError] | None = None  # first entry gdp cannot take
        for entry in entries:
            self._append(entry)

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
        entry = Entry(
            kind=kind,
            label=label or (f"{kind} {round}" if round is not None else kind),
            event=event,
            clients=None if clients is None else tuple(sorted(map(int, clients))),
            round=round,
        )
        return self._append(entry)

    def _append(self, entry: Entry) -> Entry:
        """Add ``entry`` to the entries and to the composition state (O(its clients))."""
        key = _key(entry.event)  # refuse unsupported events now, not at save time
        if entry.clients is not None:
            # One int object per client id, shared by every entry listing it (8 bytes a
            # listing instead of 36: a run's entries list each participant of each round).
            ids = self._ids
            entry = replace(entry, clients=tuple(map(ids.setdefault, entry.clients, entry.clients)))
        self._entries.append(entry)
        self._kinds[entry.kind] += 1
        self._note_gdp(entry.event, len(self._entries) - 1)
        if entry.clients is None:
            self._common[key] += 1
            return entry
        if entry.kind == "round":
            self._participation.update(entry.clients)
        members, client_group, fresh = self._members, self._client_group, []
        for (old, n), moved in self._moves(entry.clients, 1).items():
            new = self._next(old, key, n)
            for c in moved:
                client_group[c] = new
            if old:
                left = members[old] - len(moved)
                if left:
                    members[old] = left
                else:
                    del members[old]
                    self._maximal.pop(old, None)
            if new not in members:
                members[new] = 0
                fresh.append(new)
            members[new] += len(moved)
        for gid in fresh:
            _admit(self._maximal, gid, self._group[gid])
        return entry

    def _moves(self, clients: Sequence[int], times: int) -> dict[tuple[int, int], list[int]]:
        """The listed clients bucketed by (current group, charges each receives).

        A client listed twice in one entry is charged twice, as a walk over the entries
        would; the common case (no repeats) skips the counting.
        """
        get = self._client_group.get
        buckets: dict[tuple[int, int], list[int]] = {}
        if len(set(clients)) == len(clients):
            for c in clients:
                buckets.setdefault((get(c, 0), times), []).append(c)
        else:
            for c, n in Counter(clients).items():
                buckets.setdefault((get(c, 0), n * times), []).append(c)
        return buckets

    def _next(self, gid: int, key: str, times: int) -> int:
        """The id of group ``gid`` with ``times`` more charges of event ``key`` (memoised)."""
        step = (gid, key, times)
        new = self._step.get(step)
        if new is None:
            group = dict(self._group[gid])
            group[key] = group.get(key, 0) + times
            canonical = tuple(sorted(group.items()))
            new = self._group_id.get(canonical)
            if new is None:
                new = self._group_id[canonical] = len(self._group)
                self._group.append(group)
            self._step[step] = new
        return new

    def _note_gdp(self, event: dp_event.DpEvent, index: int) -> None:
        """Remember the first entry needing the CLT and the first gdp cannot analyse."""
        if self._clt_at is not None or self._no_gdp is not None:
            return
        try:
            if ev.gdp_mu(event)[1]:
                self._clt_at = index
        except ConfigError as exc:
            self._no_gdp = (index, exc)

    # -- composition -------------------------------------------------------------------
    def _groups(self) -> list[Counter]:
        """The multisets to account: the common events plus each maximal client group.

        A client whose events are a sub-multiset of another client's cannot have a larger
        ε (composition is monotone), so only maximal groups need accounting. With no
        client-specific entry every client holds the common events alone.
        """
        return self._with_common(self._common, self._maximal.values())

    @staticmethod
    def _with_common(common: Counter, maximal: Iterable[dict[str, int]]) -> list[Counter]:
        groups = [common + Counter(g) for g in maximal]
        return groups or [Counter(common)]

    def _probe_groups(
        self, event: dp_event.DpEvent, clients: Sequence[int] | None, count: int
    ) -> list[Counter]:
        """The groups after charging ``event`` ``count`` times to ``clients``; no entry added.

        Charged to all, it adds to every group and dominance is unchanged. Charged to some
        clients, only their groups change: the groups that do not exist yet are inserted
        into a copy of the antichain (an existing group is already in it or dominated by
        it, and a maximal group that would lose all its clients is contained in their new
        groups, so it drops out by itself). O(listed clients + maximal groups).
        """
        if count <= 0:
            return self._groups()
        key = _key(event)
        if clients is None:
            return self._with_common(self._common + Counter({key: count}), self._maximal.values())
        maximal = dict(self._maximal)
        for old, n in self._moves(list(map(int, clients)), count):
            new = self._next(old, key, n)
            if new not in self._members:
                _admit(maximal, new, self._group[new])
        return self._with_common(self._common, maximal.values())

    @staticmethod
    def _compose(group: Counter) -> dp_event.DpEvent:
        parts = [
            ev.repeated(ev.event_from_json(json.loads(k)), n) for k, n in sorted(group.items())
        ]
        if not parts:
            return dp_event.NoOpDpEvent()
        return parts[0] if len(parts) == 1 else dp_event.ComposedDpEvent(parts)

    def _epsilon_of(self, groups: Iterable[Counter], accountant: acc.Accountant) -> float:
        """The largest ε among ``groups``, each computed once per accountant and cached."""
        worst = 0.0
        for group in groups:
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
        return self._epsilon_of(self._groups(), acc.parse_accountant(accountant))

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
        """Whether GDP needs the central-limit approximation for this ledger.

        Kept as entries are recorded; like a walk over the entries in order, it raises
        ``ConfigError`` when an entry gdp cannot analyse comes before any CLT entry.
        """
        if self._no_gdp is not None:
            raise self._no_gdp[1]
        return self._clt_at is not None

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
        The probe is composed into the current state without copying the entries; only the
        listed clients' multisets change (see :meth:`_probe_groups`).
        """
        accountant = acc.parse_accountant(accountant)
        if accountant is acc.Accountant.GDP and (
            self.uses_clt() or (count > 0 and ev.gdp_mu(event)[1])
        ):
            raise ConfigError(f"{CLT_UNDERSTATES}; decide the budget with accountant pld or rdp")
        groups = self._probe_groups(event, clients, count)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", GdpApproximationWarning)
            eps = self._epsilon_of(groups, accountant)
        return eps > target_epsilon

    def charges(self) -> dict[str, int]:
        """How many entries of each kind were recorded (``{"statistics": 1, "round": 12}``)."""
        return dict(self._kinds)

    def participation(self) -> dict[int, int]:
        """Rounds charged per client for client-specific entries."""
        return dict(sorted(self._participation.items()))

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
