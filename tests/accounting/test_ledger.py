import json
import math
import random
from collections import Counter

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


# -- incremental composition against a from-scratch reference ------------------------------
_POOL = (
    dp_accounting.GaussianDpEvent(20.0),
    dp_accounting.GaussianDpEvent(30.0),
    dp_accounting.PoissonSampledDpEvent(0.05, dp_accounting.GaussianDpEvent(8.0)),
)  # large σ: small PLDs, so each accountant call is fast


def _event_key(event):
    return json.dumps(A.event_to_json(event), sort_keys=True)


def _reference_groups(entries):
    """Every client's multiset of events from scratch, the non-dominated ones only."""
    common, own = Counter(), {}
    for e in entries:
        if e.clients is None:
            common[_event_key(e.event)] += 1
        else:
            for c in e.clients:
                own.setdefault(c, Counter())[_event_key(e.event)] += 1
    sets = {frozenset((common + c).items()) for c in own.values()} or {frozenset(common.items())}
    return [
        s
        for s in sets
        if not any(o != s and all(dict(o).get(k, 0) >= n for k, n in s) for o in sets)
    ]


def _reference_epsilon(entries, *, delta, relation, accountant, memo):
    """The worst client's ε: compose each multiset in key order, one accountant call each."""
    worst = 0.0
    for group in _reference_groups(entries):
        if (group, accountant) not in memo:
            parts = [A.repeated(A.event_from_json(json.loads(k)), n) for k, n in sorted(group)]
            event = (
                dp_accounting.NoOpDpEvent()
                if not parts
                else parts[0]
                if len(parts) == 1
                else dp_accounting.ComposedDpEvent(parts)
            )
            try:
                value = A.epsilon(event, delta=delta, accountant=accountant, relation=relation)
            except A.UnsupportedRelation as exc:
                value = exc
            memo[group, accountant] = value
        value = memo[group, accountant]
        if isinstance(value, Exception):
            raise value
        worst = max(worst, value)
    return worst


def _reference_epsilons(entries, **kwargs):
    out = {}
    for a in ("gdp", "rdp", "pld"):
        try:
            out[a] = _reference_epsilon(entries, accountant=a, **kwargs)
        except A.UnsupportedRelation:
            out[a] = None
    return out


def _random_entry(rng, clients=5):
    """An event of the pool charged to all (20%), to nobody (5%) or to 1-3 clients."""
    event = rng.choice(_POOL)
    draw = rng.random()
    if draw < 0.2:
        return event, None
    if draw < 0.25:
        return event, []
    who = rng.sample(range(clients), rng.randint(1, 3))
    if rng.random() < 0.1:
        who.append(who[0])  # listed twice: charged twice
    return event, who


def _random_ledger(seed, relation, rounds):
    rng = random.Random(seed)
    ledger = A.PrivacyLedger(delta=1e-5, relation=relation)
    for t in range(rounds):
        event, who = _random_entry(rng)
        ledger.record(event, kind="round" if t else "statistics", round=t, clients=who)
    return ledger, rng


def _assert_would_exceed_is(ledger, probe, clients, count, accountant, value):
    """``would_exceed`` pins ε to exactly ``value``: not past it, past the float below."""
    kw = {"clients": clients, "count": count, "accountant": accountant}
    assert not ledger.would_exceed(probe, target_epsilon=value, **kw)
    assert ledger.would_exceed(probe, target_epsilon=math.nextafter(value, -math.inf), **kw)


@pytest.mark.parametrize("relation", ["add-remove", "replace-one"])
@pytest.mark.parametrize("seed", range(3))
def test_incremental_ledger_equals_a_from_scratch_reference(seed, relation):
    ledger, rng = _random_ledger(seed, relation, rounds=7)
    memo: dict = {}
    ref = {"delta": 1e-5, "relation": relation, "memo": memo}
    assert ledger.epsilons() == _reference_epsilons(ledger.entries, **ref)
    for _ in range(3):
        probe, who = _random_entry(rng)
        count = rng.choice([1, 2])
        extra = [A.Entry(kind="probe", label="probe", event=probe, clients=who)] * count
        for accountant in ("pld", "rdp"):
            try:
                value = _reference_epsilon(
                    list(ledger.entries) + extra, accountant=accountant, **ref
                )
            except A.UnsupportedRelation:
                with pytest.raises(A.UnsupportedRelation):
                    ledger.would_exceed(
                        probe, target_epsilon=1.0, accountant=accountant, clients=who, count=count
                    )
                continue
            _assert_would_exceed_is(ledger, probe, who, count, accountant, value)
    assert len(ledger) == 7  # probing charges nothing


@pytest.mark.parametrize("relation", ["add-remove", "replace-one"])
def test_incremental_ledger_matches_the_reference_after_every_record(relation):
    """gdp after each of 40 records (cheap), the groups too: the state stays exact."""
    rng = random.Random(7)
    ledger = A.PrivacyLedger(delta=1e-5, relation=relation)
    memo: dict = {}
    for t in range(40):
        event, who = _random_entry(rng, clients=6)
        ledger.record(event, kind="round", round=t, clients=who)
        expected = _reference_epsilon(
            ledger.entries, delta=1e-5, relation=relation, accountant="gdp", memo=memo
        )
        assert ledger.epsilon("gdp") == expected
        groups = {frozenset(g.items()) for g in ledger._groups()}
        assert groups == set(_reference_groups(ledger.entries))


@pytest.mark.parametrize("relation", ["add-remove", "replace-one"])
def test_a_loaded_ledger_answers_as_the_one_that_recorded(relation):
    ledger, rng = _random_ledger(11, relation, rounds=8)
    loaded = A.PrivacyLedger.from_json(json.loads(json.dumps(ledger.to_json())))
    assert loaded == ledger
    assert loaded.epsilons() == ledger.epsilons()
    assert loaded.participation() == ledger.participation()
    assert loaded.charges() == ledger.charges()
    assert loaded.uses_clt() == ledger.uses_clt()
    for _ in range(3):
        probe, who = _random_entry(rng)
        target = ledger.epsilon("pld") + 0.05
        assert loaded.would_exceed(probe, target_epsilon=target, clients=who) == (
            ledger.would_exceed(probe, target_epsilon=target, clients=who)
        )
    # and both keep agreeing as they go on recording
    for led in (ledger, loaded):
        led.record(_POOL[0], kind="round", round=99, clients=[0, 1])
    assert loaded.epsilons() == ledger.epsilons()


@pytest.mark.parametrize("local", [False, True], ids=["central", "local"])
def test_query_cost_does_not_grow_with_the_rounds(monkeypatch, local):
    """1,000 rounds, each recorded then queried as a run does: after warm-up every round
    costs O(1) accountant calls and event keys, never a walk over the earlier entries."""
    from drencoder.accounting import accountants
    from drencoder.accounting import ledger as ledger_module

    calls = {"epsilon": 0, "key": 0}
    real_key = ledger_module._key

    def fake_epsilon(event, **kwargs):
        calls["epsilon"] += 1
        return 0.0

    def counting_key(event):
        calls["key"] += 1
        return real_key(event)

    monkeypatch.setattr(accountants, "epsilon", fake_epsilon)
    monkeypatch.setattr(ledger_module, "_key", counting_key)
    rng = random.Random(3)
    ledger = A.PrivacyLedger(delta=1e-5)
    ledger.record(_round(4.0), kind="statistics")
    event = _round(1.0) if local else _round(1.0, 0.1)
    per_round = []
    for t in range(1000):
        who = rng.sample(range(50), 5) if local else None
        before = dict(calls)
        assert not ledger.would_exceed(event, target_epsilon=1.0, clients=who)
        ledger.record(event, kind="round", round=t, clients=who)
        ledger.epsilon("pld")
        ledger.epsilon("pld")  # a repeated query is served from the cache
        per_round.append({k: calls[k] - before[k] for k in calls})
        assert len(ledger._groups()) == 1  # one event kind: one maximal client
    for cost in per_round[10:]:
        assert cost["key"] == 2  # the probe's key and the record's
        assert cost["epsilon"] <= 2  # the probed group, then at most one more
    assert sum(c["epsilon"] for c in per_round[-100:]) <= 200
