import json

import dp_accounting
import pytest

from drencoder import accounting as A
from drencoder.errors import CheckpointError, ConfigError

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


def _local_round(sigma=1.0):
    return A.round_event(
        noise_multiplier=sigma, placement="local", sampling="poisson", sample_rate=0.3
    )


def test_relation_defaults_to_add_remove_and_is_used_for_every_epsilon():
    assert A.PrivacyLedger(delta=1e-5).relation is A.Relation.ADD_REMOVE
    ledger = A.PrivacyLedger(delta=1e-5, relation="replace-one")
    assert ledger.relation is A.Relation.REPLACE_ONE
    ledger.record(_round(4.0), kind="statistics")
    ledger.record(_local_round(), kind="round", round=0, clients=[0, 1])
    ledger.record(_local_round(), kind="round", round=1, clients=[1])
    worst = dp_accounting.ComposedDpEvent([_round(4.0), A.repeated(_round(1.0), 2)])
    expected = A.epsilons(worst, delta=1e-5, relation="replace-one")
    assert ledger.epsilons() == pytest.approx(expected)
    assert ledger.epsilon("pld") > A.epsilon(worst, delta=1e-5, accountant="pld")


def test_unsupported_accountant_gives_none_in_epsilons():
    ledger = A.PrivacyLedger(delta=1e-5, relation="replace-one")
    ledger.record(_round(1.0, 0.25), kind="round", round=0)
    eps = ledger.epsilons()
    assert eps["rdp"] is None
    assert eps["pld"] is not None and eps["gdp"] is not None
    with pytest.raises(A.UnsupportedRelation):
        ledger.epsilon("rdp")


@pytest.mark.parametrize("accountant", ["pld", "rdp", "gdp"])
def test_would_exceed_agrees_with_record_then_epsilon_under_replace_one(accountant):
    ledger = A.PrivacyLedger(delta=1e-5, relation="replace-one")
    ledger.record(_round(3.0), kind="statistics")
    ledger.record(_local_round(1.5), kind="round", round=0, clients=[0])
    probe = _local_round(1.5)
    after = A.PrivacyLedger.from_json(ledger.to_json())
    after.record(probe, kind="round", round=1, clients=[0])
    eps_after = after.epsilon(accountant)
    kwargs = {"accountant": accountant, "clients": [0]}
    assert not ledger.would_exceed(probe, target_epsilon=eps_after + 1e-9, **kwargs)
    assert ledger.would_exceed(probe, target_epsilon=eps_after - 1e-3, **kwargs)
    # a different client's probe leaves client 0 as the worst: same answer at eps_after
    before = ledger.epsilon(accountant)
    assert not ledger.would_exceed(
        probe, target_epsilon=before + 1e-9, **{**kwargs, "clients": [5]}
    )
    assert len(ledger) == 2


def test_gdp_never_decides_a_budget_under_the_clt():
    ledger = A.PrivacyLedger(delta=1e-5)
    ledger.record(_round(1.0), kind="round", round=0)
    assert not ledger.would_exceed(_round(1.0), target_epsilon=100, accountant="gdp")  # exact
    with pytest.raises(ConfigError, match="central-limit.*pld or rdp"):
        ledger.would_exceed(_round(1.0, 0.25), target_epsilon=100, accountant="gdp")
    ledger.record(_round(1.0, 0.25), kind="round", round=1)
    with pytest.raises(ConfigError, match="central-limit"):
        ledger.would_exceed(_round(1.0), target_epsilon=100, accountant="gdp")
    # reporting the CLT figure stays allowed
    assert ledger.epsilon("gdp") > 0


def test_json_round_trip_keeps_the_relation(tmp_path):
    ledger = A.PrivacyLedger(delta=1e-6, relation="replace-one")
    ledger.record(_round(3.0), kind="statistics")
    ledger.record(_local_round(1.1), kind="round", round=0, clients=[2])
    path = tmp_path / "ledger.json"
    ledger.save(path)
    assert json.loads(path.read_text())["relation"] == "replace-one"
    loaded = A.PrivacyLedger.load(path)
    assert loaded.relation is A.Relation.REPLACE_ONE
    assert loaded == ledger
    assert loaded.epsilons() == ledger.epsilons()
    other = A.PrivacyLedger.from_json({**ledger.to_json(), "relation": "add-remove"})
    assert other != ledger  # equality includes the relation
    assert "replace-one" in repr(ledger)


def test_ledger_written_before_the_relation_key_loads_as_add_remove():
    old = {
        "format": 1,
        "delta": 1e-5,
        "entries": [
            {
                "kind": "round",
                "label": "round 0",
                "round": 0,
                "clients": None,
                "event": {"type": "GaussianDpEvent", "noise_multiplier": 1.0},
            }
        ],
    }
    ledger = A.PrivacyLedger.from_json(old)
    assert ledger.relation is A.Relation.ADD_REMOVE
    assert ledger.epsilon("pld") == A.epsilon(_round(1.0), delta=1e-5, accountant="pld")
    with pytest.raises(CheckpointError, match="relation must be one of"):
        A.PrivacyLedger.from_json({**old, "relation": "zero-out"})
