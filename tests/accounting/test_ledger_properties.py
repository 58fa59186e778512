"""Properties of the privacy ledger over random charge sequences (hypothesis).

The incremental ledger keeps groups of clients with the same charges; these tests check it
against what a ledger must mean, whatever the sequence: ε is the worst client's ε of its own
composed events, charging fewer clients never raises it, a probe (``would_exceed``) agrees
with recording the same charge, and the JSON form round-trips.
"""

from __future__ import annotations

import functools
import math

import pytest
from dp_accounting import dp_event
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drencoder import accounting
from drencoder.accounting.ledger import PrivacyLedger

CLIENTS = 5
DELTA = 1e-5
# RDP keeps each example fast; the ledger's bookkeeping does not depend on the accountant.
ACCOUNTANT = "rdp"

_EVENTS = [
    accounting.gaussian_round(noise_multiplier=2.0, sample_rate=1.0),
    accounting.gaussian_round(noise_multiplier=4.0, sample_rate=1.0),
    accounting.gaussian_round(noise_multiplier=2.0, sample_rate=0.5),
]

# One charge: (event index, the clients charged; None = every client).
charge = st.tuples(
    st.integers(0, len(_EVENTS) - 1),
    st.one_of(
        st.none(),
        st.lists(st.integers(0, CLIENTS - 1), min_size=1, max_size=CLIENTS, unique=True),
    ),
)
charges = st.lists(charge, min_size=1, max_size=4)
SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _ledger(seq) -> PrivacyLedger:
    ledger = PrivacyLedger(delta=DELTA)
    for t, (i, clients) in enumerate(seq, start=1):
        ledger.record(_EVENTS[i], kind="round", round=t, clients=clients)
    return ledger


@functools.cache
def _composed_epsilon(indices: tuple[int, ...]) -> float:
    own = [_EVENTS[i] for i in indices]
    event = own[0] if len(own) == 1 else dp_event.ComposedDpEvent(own)
    return accounting.epsilon(event, delta=DELTA, accountant=ACCOUNTANT)


def _naive_epsilon(seq) -> float:
    """The worst client's ε, composing each client's own events from scratch."""
    worst = 0.0
    for c in range(CLIENTS):
        own = sorted(i for i, clients in seq if clients is None or c in clients)
        if own:
            worst = max(worst, _composed_epsilon(tuple(own)))
    return worst


@SETTINGS
@given(charges)
def test_epsilon_is_the_worst_clients_own_composition(seq):
    assert _ledger(seq).epsilon(ACCOUNTANT) == pytest.approx(_naive_epsilon(seq), rel=1e-9)


@SETTINGS
@given(charges, st.data())
def test_charging_fewer_clients_never_raises_epsilon(seq, data):
    fewer = []
    for i, clients in seq:
        pool = list(range(CLIENTS)) if clients is None else clients
        kept = data.draw(st.lists(st.sampled_from(pool), max_size=len(pool), unique=True))
        if kept:
            fewer.append((i, kept))
    full = _ledger(seq).epsilon(ACCOUNTANT)
    reduced = _ledger(fewer).epsilon(ACCOUNTANT) if fewer else 0.0
    assert reduced <= full + 1e-12


@SETTINGS
@given(charges, charge, st.floats(0.1, 20.0), st.integers(1, 3))
def test_would_exceed_agrees_with_recording_the_charge(seq, probe, target, count):
    ledger = _ledger(seq)
    i, clients = probe
    predicted = ledger.would_exceed(
        _EVENTS[i], target_epsilon=target, accountant=ACCOUNTANT, clients=clients, count=count
    )
    for _ in range(count):
        ledger.record(_EVENTS[i], kind="round", clients=clients)
    after = ledger.epsilon(ACCOUNTANT)
    if math.isclose(after, target, rel_tol=1e-9):
        return  # a tie at the target is decided by rounding either way
    assert predicted == (after > target)


@SETTINGS
@given(charges)
def test_json_round_trip_keeps_entries_and_epsilon(seq):
    ledger = _ledger(seq)
    again = PrivacyLedger.from_json(ledger.to_json())
    assert again.to_json() == ledger.to_json()
    assert again.charges() == ledger.charges()
    assert again.participation() == ledger.participation()
    assert again.epsilon(ACCOUNTANT) == ledger.epsilon(ACCOUNTANT)
