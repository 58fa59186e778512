"""Client failures in the simulator: the round goes on, nothing sent is refunded."""

from __future__ import annotations

import pytest

from drencoder.errors import ClientDropoutWarning
from helpers import tiny_simulator

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

BASE = [
    "rounds=3",
    "clients=3",
    "local.lr=0.01",
    "eval.questions=4",
    "eval.every=0",
    "method=dp-fedavg-lora",
    "privacy.noise_multiplier=3.0",
    "target_epsilon=none",
]


def make(tmp_path, *overrides, hook=None):
    return tiny_simulator(tmp_path / "run", [*BASE, *overrides], hook=hook)


class ClientCrashed(Exception):
    pass


def fail(round_, client):
    def hook(event, **info):
        if event == "client_work" and info["round"] == round_ and info["client"] == client:
            raise ClientCrashed(f"client {client} lost its disk")

    return hook


def test_a_failing_client_is_a_dropout_and_is_still_charged(tmp_path):
    sim = make(tmp_path, hook=fail(2, 1))
    with (
        pytest.warns(ClientDropoutWarning, match="round 2: 2 of 3 sampled clients replied"),
        pytest.warns(ClientDropoutWarning, match="client 1 lost its disk"),  # local only
    ):
        summary = sim.run()
    assert summary["rounds_done"] == 3
    rounds = {r["round"]: r for r in sim.rows if r["kind"] == "round"}
    assert rounds[2]["sampled"] == [0, 1, 2]
    assert rounds[2]["participants"] == [0, 2]
    assert rounds[2]["failed"] == {"1": "client-error"}  # a fixed code, never the text
    assert rounds[2]["bytes_up"] == 2 * sim.codec.bytes_per_upload
    assert rounds[1]["failed"] == {} and rounds[1]["participants"] == [0, 1, 2]
    # Local noise: every sampled client is charged when the round is sent, whether or not
    # its message arrives (a failure after sending may still have released it).
    assert sim.ledger.participation() == {0: 3, 1: 3, 2: 3}
    round2 = [e for e in sim.ledger.entries if e.round == 2]
    assert [e.clients for e in round2] == [(0, 1, 2)]


def test_central_noise_still_charges_everyone_when_a_client_fails(tmp_path):
    sim = make(tmp_path, "privacy.placement=central", hook=fail(1, 0))
    with pytest.warns(ClientDropoutWarning):
        sim.run()
    assert all(e.clients is None for e in sim.ledger.entries)
    assert len([e for e in sim.ledger.entries if e.kind == "round"]) == 3


def test_a_round_where_every_client_fails_raises(tmp_path):
    def hook(event, **info):
        if event == "client_work":
            raise ClientCrashed("all down")

    sim = make(tmp_path, hook=hook)
    with pytest.raises(RuntimeError, match="every sampled client of round 1 failed"):
        sim.run()
