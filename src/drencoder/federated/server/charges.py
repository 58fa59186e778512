"""Privacy charges written ahead of the releases they pay for, never refunded.

A client's message is a release the moment the client is asked for
it, whether or not its reply is ever aggregated. The server therefore appends each charge
to ``pending-charges.jsonl`` (flushed and fsync-ed) *before* it sends the round's tasks, and
a checkpoint written afterwards absorbs them. When a run is killed between sending and
its next checkpoint, the resumed run adds the pending charges to the checkpoint's ledger
before it re-runs those rounds: the interrupted attempt stays charged, and the re-run is
charged again, with fresh noise (the server reseeds its DP streams from OS entropy, since
the same noise over a different set of replies would reveal their difference; Flower
clients draw fresh noise for every task anyway). Each pending line records
the ledger position its entry took, so a crash between writing a checkpoint and clearing
the file never charges an entry twice.

The file is ``RUN/checkpoints/pending-charges.jsonl``; :func:`charge_ahead` records an
event in the run's ledger and appends it there, :func:`absorb_pending` adds an interrupted
attempt's charges to a restored ledger, :func:`clear_pending` runs after each checkpoint.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from dp_accounting import dp_event

from drencoder.accounting import PrivacyLedger
from drencoder.accounting.ledger import Entry
from drencoder.errors import CheckpointError
from drencoder.federated.server.checkpoint import damaged_file

PENDING = "pending-charges.jsonl"


def append_pending(run_dir: str | os.PathLike, entry: Entry, *, index: int, relation: str) -> None:
    """Persist one charge (ledger position ``index``, analysed under ``relation``) before
    its release happens."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    line = {"index": index, "relation": str(relation), "entry": entry.to_json()}
    with (root / PENDING).open("a") as f:
        f.write(json.dumps(line) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_pending(run_dir: str | os.PathLike, *, after: int, relation: str) -> list[Entry]:
    """The pending charges whose ledger position is ``>= after`` (not yet in a checkpoint
    whose ledger has ``after`` entries), in order. A torn last line (a crash while it was
    written, before its tasks were sent) is ignored; any other damage raises. Charges made
    under another neighbouring relation than ``relation`` are refused
    (:class:`CheckpointError`): an event's meaning depends on it."""
    path = Path(run_dir) / "checkpoints" / PENDING
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    out = []
    for i, line in enumerate(lines):
        try:
            data = json.loads(line)
            index, entry = int(data["index"]), Entry.from_json(data["entry"])
            made_under = str(data["relation"])
        except (ValueError, KeyError, TypeError) as exc:
            if i == len(lines) - 1:
                break
            raise damaged_file(path, f"has a malformed line {i + 1} ({exc})") from None
        if made_under != str(relation):
            raise CheckpointError(
                f"{path} holds charges made under the {made_under} relation, but this run is "
                f"accounted under {relation}: they came from an interrupted run with another "
                "config. Run it again with that config, or choose another --out"
            )
        if index >= after:
            out.append(entry)
    return out


def clear_pending(run_dir: str | os.PathLike) -> None:
    """Forget the pending charges once a checkpoint holds them."""
    (Path(run_dir) / "checkpoints" / PENDING).unlink(missing_ok=True)


def charge_ahead(
    ledger: PrivacyLedger,
    run_dir: str | os.PathLike,
    event: dp_event.DpEvent,
    *,
    kind: str,
    label: str,
    round: int | None = None,
    clients: Sequence[int] | None = None,
) -> Entry:
    """Record ``event`` in ``ledger`` and persist it before the release it pays for."""
    entry = ledger.record(event, kind=kind, label=label, round=round, clients=clients)
    append_pending(run_dir, entry, index=len(ledger) - 1, relation=ledger.relation.value)
    return entry


def absorb_pending(ledger: PrivacyLedger, run_dir: str | os.PathLike, *, after: int) -> int:
    """Add to ``ledger`` the charges an interrupted attempt wrote ahead after the ledger's
    first ``after`` entries; returns how many there were."""
    entries = read_pending(run_dir, after=after, relation=ledger.relation.value)
    for entry in entries:
        ledger.record(
            entry.event,
            kind=entry.kind,
            round=entry.round,
            clients=entry.clients,
            label=f"{entry.label} (interrupted attempt, charged again when re-run)",
        )
    return len(entries)
