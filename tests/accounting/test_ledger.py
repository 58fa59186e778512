import json

import dp_accounting
import pytest

from drencoder import accounting as A
from drencoder.errors import CheckpointError

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")


def _round(sigma=1.0, q=1.0):
    return A.gaussian_round(noise_multiplier=sigma, sample_rate=q)


def test_homogeneous_central_rounds_match_closed_form():
    ledger = A.PrivacyLedger(delta=1e-5)
    for t in range(10):
        ledger.record(_round(1.0, 0.2), kind="round", round=t)
    direct = A.epsilons(
        A.rounds_event(noise_multiplier=1.0, sample_rate=0.2, rounds=10), delta=1e-5
    )
    assert ledger.epsilons() == pytest.approx(direct)


def test_heterogeneous_events_compose():
    ledger = A.PrivacyLedger(delta=1e-5)
    ledger.record(_round(4.0), kind="statistics")
    ledger.record(_round(1.0, 0.5), kind="round", round=0)
    ledger.record(_round(2.0, 0.25), kind="round", round=1)
    expected = dp_accounting.ComposedDpEvent([_round(4.0), _round(1.0, 0.5), _round(2.0, 0.25)])
    for acc in A.ALL_ACCOUNTANTS:
        assert ledger.epsilon(acc) == pytest.approx(
            A.epsilon(expected, delta=1e-5, accountant=acc), rel=1e-6
        )


def test_local_noise_charges_only_participants_and_reports_the_worst_client():
    ledger = A.PrivacyLedger(delta=1e-5)
    ledger.record(_round(5.0), kind="statistics")  # every client
    ledger.record(_round(1.0), kind="round", round=0, clients=[0, 1])
    ledger.record(_round(1.0), kind="round", round=1, clients=[1, 2])
    ledger.record(_round(1.0), kind="round", round=2, clients=[1])
    assert ledger.participation() == {0: 1, 1: 3, 2: 1}
    worst = dp_accounting.ComposedDpEvent([_round(5.0), A.repeated(_round(1.0), 3)])
    assert ledger.epsilon("gdp") == pytest.approx(
        A.epsilon(worst, delta=1e-5, accountant="gdp"), rel=1e-9
    )
    # Client 1 (three rounds) is worse than a client charged one round.
    one = dp_accounting.ComposedDpEvent([_round(5.0), _round(1.0)])
    assert ledger.epsilon("pld") > A.epsilon(one, delta=1e-5, accountant="pld")


def test_would_exceed_predicts_the_next_charge():
    ledger = A.PrivacyLedger(delta=1e-5)
    ledger.record(_round(1.0), kind="round", round=0)
    eps_two = A.epsilon(A.repeated(_round(1.0), 2), delta=1e-5, accountant="pld")
    assert not ledger.would_exceed(_round(1.0), target_epsilon=eps_two + 1e-9)
    assert ledger.would_exceed(_round(1.0), target_epsilon=eps_two - 1e-3)
    assert len(ledger) == 1  # probing charges nothing


def test_json_round_trip(tmp_path):
    ledger = A.PrivacyLedger(delta=1e-6)
    ledger.record(_round(3.0), kind="statistics")
    ledger.record(_round(1.1, 0.3), kind="round", round=0)
    ledger.record(_round(1.1), kind="round", round=1, clients=[3, 1])
    path = tmp_path / "ledger.json"
    ledger.save(path)
    loaded = A.PrivacyLedger.load(path)
    assert loaded == ledger
    assert loaded.epsilons() == ledger.epsilons()
    assert json.loads(path.read_text())["entries"][2]["clients"] == [1, 3]


def test_event_json_refuses_unknown_types():
    with pytest.raises(Exception, match="unknown"):
        A.event_from_json({"type": "os.system", "cmd": "x"})


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        A.PrivacyLedger.load(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": 99}')
    with pytest.raises(CheckpointError, match="format"):
        A.PrivacyLedger.load(bad)
