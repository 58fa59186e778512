"""A client's own floor and ledger: mechanism descriptions, policy rules, the node ledger."""

from __future__ import annotations

import dataclasses
import json
import math

import dp_accounting
import pytest

from drencoder.accounting import PrivacyLedger, Relation, epsilon
from drencoder.errors import CheckpointError, ConfigError, DrencoderError
from drencoder.federated.client.policy import (
    POLICY_KEYS,
    ClientPolicy,
    NodeLedger,
    PolicyRefusal,
    node_ledger_path,
)
from drencoder.federated.descriptions import (
    ReleaseMechanism,
    RoundMechanism,
    release_event,
    round_event,
)
from drencoder.prior import StatisticsRelease

ROUND = RoundMechanism(
    method="dr-encoder",
    placement="local",
    clip_point="latent",
    clip_norm=1.0,
    noise_multiplier=2.0,
    relation="replace-one",
)
RELEASE = ReleaseMechanism(enabled=True, clip_norm=0.02, noise_multiplier=5.0, std_floor=1e-8)


# -- descriptions ---------------------------------------------------------------------------
@pytest.mark.parametrize("description", [ROUND, RELEASE])
def test_description_round_trips_through_dict_and_text(description):
    cls = type(description)
    assert cls.from_json(description.to_json()) == description
    assert cls.from_json(description.canonical()) == description
    assert json.loads(description.canonical()) == description.to_json()
    fp = description.fingerprint()
    assert len(fp) == 16 and int(fp, 16) >= 0


def test_numbers_are_normalised_so_the_fingerprint_is_stable():
    same = dataclasses.replace(ROUND, clip_norm=1, noise_multiplier=2)
    assert same == ROUND and same.fingerprint() == ROUND.fingerprint()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("method", "dp-fedavg-lora"),
        ("placement", "central"),
        ("clip_point", "update"),
        ("clip_norm", 1.5),
        ("noise_multiplier", 2.5),
        ("relation", "add-remove"),
    ],
)
def test_fingerprint_changes_with_any_round_field(field, value):
    changed = dataclasses.replace(ROUND, **{field: value})
    assert changed.fingerprint() != ROUND.fingerprint()


@pytest.mark.parametrize(
    ("field", "value"),
    [("enabled", False), ("clip_norm", 0.03), ("noise_multiplier", 4.0), ("std_floor", 1e-6)],
)
def test_fingerprint_changes_with_any_release_field(field, value):
    changed = dataclasses.replace(RELEASE, **{field: value})
    assert changed.fingerprint() != RELEASE.fingerprint()


def test_release_mirrors_statistics_release():
    release = StatisticsRelease(clip_norm=0.05, noise_multiplier=3.0)
    described = ReleaseMechanism.from_release(release)
    assert described.to_release() == release
    assert described.to_json() == release.to_dict()


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({**ROUND.to_json(), "extra": 1}, r"unknown keys \['extra'\]"),
        (
            {k: v for k, v in ROUND.to_json().items() if k != "relation"},
            r"lacks keys \['relation'\]",
        ),
        ({**ROUND.to_json(), "noise_multiplier": "2.0"}, "'noise_multiplier' must be int or float"),
        ({**ROUND.to_json(), "noise_multiplier": True}, "'noise_multiplier' must be int or float"),
        ({**ROUND.to_json(), "clip_norm": "1"}, "'clip_norm' must be int or float or null"),
        ({**ROUND.to_json(), "method": "fedprox"}, "Method must be one of"),
        ({**ROUND.to_json(), "placement": "centre"}, "NoisePlacement must be one of"),
        ({**ROUND.to_json(), "relation": "swap"}, "relation must be one of"),
        ({**ROUND.to_json(), "noise_multiplier": -1.0}, "noise_multiplier must be finite"),
        ({**ROUND.to_json(), "clip_norm": 0.0}, "clip_norm must be finite and > 0"),
        ({**ROUND.to_json(), "clip_norm": None}, "needs noise_multiplier=0"),
        ("not json", "does not parse"),
        ("[1, 2]", "must be a JSON object, got list"),
    ],
)
def test_round_description_parsing_is_strict(data, match):
    with pytest.raises(ConfigError, match=match):
        RoundMechanism.from_json(data)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({**RELEASE.to_json(), "enabled": 1}, "'enabled' must be bool"),
        ({**RELEASE.to_json(), "relation": "replace-one"}, "unknown keys"),
        ({k: v for k, v in RELEASE.to_json().items() if k != "std_floor"}, "lacks keys"),
        ({**RELEASE.to_json(), "clip_norm": -1.0}, "clip_norm must be finite and > 0"),
    ],
)
def test_release_description_parsing_is_strict(data, match):
    with pytest.raises(ConfigError, match=match):
        ReleaseMechanism.from_json(data)


def test_unclipped_description_has_no_mechanism():
    plain = dataclasses.replace(ROUND, method="fedavg-lora", clip_norm=None, noise_multiplier=0)
    assert plain.gaussian is None
    assert ROUND.gaussian.clip_norm == 1.0 and ROUND.gaussian.noise_multiplier == 2.0


# -- events ---------------------------------------------------------------------------------
def test_events_are_replace_one_gaussians():
    assert round_event(ROUND) == dp_accounting.GaussianDpEvent(2.0)  # under replace-one
    central = dataclasses.replace(ROUND, placement="central", relation="add-remove")
    # Central: the message leaves un-noised, so it is not private against the aggregator,
    # unless the client trusts the aggregator to add the declared noise.
    assert round_event(central) == dp_accounting.NonPrivateDpEvent()
    assert round_event(central, trust_aggregator=True) == dp_accounting.GaussianDpEvent(2.0)
    assert round_event(dataclasses.replace(ROUND, noise_multiplier=0)) == (
        dp_accounting.NonPrivateDpEvent()
    )
    assert release_event(RELEASE) == dp_accounting.GaussianDpEvent(5.0)
    for off in (
        dataclasses.replace(RELEASE, enabled=False),
        dataclasses.replace(RELEASE, noise_multiplier=0),
    ):
        assert release_event(off) == dp_accounting.NonPrivateDpEvent()


# -- policy rules ---------------------------------------------------------------------------
def refuses(check, description, rule):
    with pytest.raises(PolicyRefusal) as info:
        check(description)
    assert info.value.rule == rule and str(info.value).startswith(f"{rule}: ")
    assert isinstance(info.value, DrencoderError)


def test_empty_policy_accepts_everything_but_unnoised_statistics():
    policy = ClientPolicy()
    policy.check_round(ROUND)
    policy.check_round(dataclasses.replace(ROUND, clip_norm=None, noise_multiplier=0))
    policy.check_release(RELEASE)
    refuses(
        policy.check_release, dataclasses.replace(RELEASE, enabled=False), "require-stage1-noise"
    )
    refuses(
        policy.check_release,
        dataclasses.replace(RELEASE, noise_multiplier=0),
        "require-stage1-noise",
    )
    ClientPolicy(require_stage1_noise=False).check_release(
        dataclasses.replace(RELEASE, enabled=False)
    )


def test_noise_floor_refuses_below_and_accepts_at_the_boundary():
    policy = ClientPolicy(min_noise_multiplier=2.0)
    policy.check_round(ROUND)  # σ = 2: at the floor
    refuses(
        policy.check_round,
        dataclasses.replace(ROUND, noise_multiplier=1.999),
        "min-noise-multiplier",
    )
    refuses(
        policy.check_round, dataclasses.replace(ROUND, noise_multiplier=0), "min-noise-multiplier"
    )
    floor5 = ClientPolicy(min_noise_multiplier=5.0)
    floor5.check_release(RELEASE)  # σ_s = 5: at the floor
    refuses(
        floor5.check_release,
        dataclasses.replace(RELEASE, noise_multiplier=4.9),
        "min-noise-multiplier",
    )


def test_clip_cap_refuses_above_and_unclipped_accepts_at_the_boundary():
    policy = ClientPolicy(max_clip_norm=1.0)
    policy.check_round(ROUND)  # C = 1: at the cap
    refuses(policy.check_round, dataclasses.replace(ROUND, clip_norm=1.001), "max-clip-norm")
    unclipped = dataclasses.replace(ROUND, clip_norm=None, noise_multiplier=0)
    refuses(policy.check_round, unclipped, "max-clip-norm")
    # The statistics' clip norm lives on another scale: the round cap does not apply.
    ClientPolicy(max_clip_norm=1e-6).check_release(RELEASE)


def test_required_placement():
    policy = ClientPolicy(placement="local")
    policy.check_round(ROUND)
    refuses(
        policy.check_round, dataclasses.replace(ROUND, placement="central"), "require-placement"
    )
    ClientPolicy(placement="central").check_round(dataclasses.replace(ROUND, placement="central"))


# -- node config ----------------------------------------------------------------------------
def test_node_config_sets_every_rule():
    policy = ClientPolicy.from_node_config(
        {
            "partition-id": 0,
            "num-partitions": 2,
            "min-noise-multiplier": 5,
            "max-clip-norm": 0.5,
            "require-placement": "local",
            "require-stage1-noise": False,
            "max-epsilon": 8,
            "max-record-epsilon": 4,
            "trust-aggregator": "true",
            "delta": 1e-6,
        }
    )
    assert policy == ClientPolicy(
        min_noise_multiplier=5.0,
        max_clip_norm=0.5,
        placement="local",
        require_stage1_noise=False,
        max_epsilon=8.0,
        max_record_epsilon=4.0,
        trust_aggregator=True,
        delta=1e-6,
    )
    assert set(POLICY_KEYS) == {
        "min-noise-multiplier",
        "max-clip-norm",
        "require-placement",
        "require-stage1-noise",
        "max-epsilon",
        "max-record-epsilon",
        "trust-aggregator",
        "delta",
    }


def test_empty_strings_leave_the_defaults():
    assert ClientPolicy.from_node_config({k: "" for k in POLICY_KEYS}) == ClientPolicy()
    assert ClientPolicy.from_node_config({}) == ClientPolicy()
    quoted = ClientPolicy.from_node_config(
        {"min-noise-multiplier": "1.5", "require-stage1-noise": "true"}
    )
    assert quoted.min_noise_multiplier == 1.5 and quoted.require_stage1_noise is True


@pytest.mark.parametrize(
    ("config", "match"),
    [
        ({"min-noise-multiplier": "lots"}, "min-noise-multiplier='lots' is not a number"),
        ({"min-noise-multiplier": -1}, "min-noise-multiplier=-1 is out of range: .*>= 0"),
        ({"min-noise-multiplier": True}, "is not a number"),
        ({"max-clip-norm": 0}, "max-clip-norm=0 is out of range: .*> 0"),
        ({"max-epsilon": math.inf}, "max-epsilon=inf is out of range"),
        ({"delta": 1}, r"delta=1 is out of range: .*< 1"),
        (
            {"require-placement": "centre"},
            r"require-placement='centre' must be one of \['local', 'central'\]",
        ),
        ({"require-stage1-noise": "yes"}, "require-stage1-noise='yes' must be true or false"),
        ({"max-epsilom": 8}, "'max-epsilom' is not a rule this client knows"),
        ({"require-tls": True}, "'require-tls' is not a rule"),
    ],
)
def test_node_config_errors_name_key_value_and_fix(config, match):
    with pytest.raises(ConfigError, match=match):
        ClientPolicy.from_node_config(config)


def test_ledger_path_from_node_config_or_cache(tmp_path, monkeypatch):
    assert node_ledger_path({"ledger-path": str(tmp_path / "l.json")}, 3) == tmp_path / "l.json"
    monkeypatch.setenv("DRENCODER_CACHE", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "node-ledgers" / "partition-3.json"
    assert node_ledger_path({"ledger-path": ""}, 3) == expected
    assert node_ledger_path({}, 3) == expected
    with pytest.raises(ConfigError, match="ledger-path=5 must be a path string"):
        node_ledger_path({"ledger-path": 5}, 3)


# -- the node ledger ------------------------------------------------------------------------
def test_charge_is_on_disk_before_it_returns(tmp_path):
    path = tmp_path / "nested" / "ledger.json"
    ledger = NodeLedger(path)
    assert not path.exists() and ledger.entries == ()
    ledger.charge(round_event(ROUND), kind="round", round=1, label="round 1")
    # A fresh reader, as a crash and restart would see it.
    on_disk = PrivacyLedger.load(path)
    assert [(e.kind, e.round, e.event) for e in on_disk.entries] == [
        ("round", 1, dp_accounting.GaussianDpEvent(2.0))
    ]
    assert on_disk.relation == Relation.REPLACE_ONE
    assert not list(path.parent.glob(".ledger.json.*"))  # no temporary file left behind


def test_reload_continues_the_ledger(tmp_path):
    path = tmp_path / "ledger.json"
    NodeLedger(path).charge(release_event(RELEASE), kind="statistics", label="stage 1")
    again = NodeLedger(path)
    again.charge(round_event(ROUND), kind="round", round=1, label="round 1")
    assert NodeLedger(path).ledger.charges() == {"statistics": 1, "round": 1}
    # Another writer of the same file in between is not lost: charge re-reads it.
    stale = NodeLedger(path)
    NodeLedger(path).charge(round_event(ROUND), kind="round", round=2, label="round 2")
    stale.charge(round_event(ROUND), kind="round", round=3, label="round 3")
    assert [e.round for e in NodeLedger(path).entries] == [None, 1, 2, 3]


def test_epsilon_composes_what_was_charged(tmp_path):
    ledger = NodeLedger(tmp_path / "ledger.json", delta=1e-6)
    for t in (1, 2):
        ledger.charge(round_event(ROUND), kind="round", round=t, label=f"round {t}")
    # Replace-one: two Gaussian(2) rounds cost what two Gaussian(1) rounds cost under
    # add/remove (sensitivity 2C).
    composed = dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), 2)
    assert ledger.epsilon() == pytest.approx(
        epsilon(composed, delta=1e-6, accountant="pld"), rel=1e-6
    )


def test_cap_refuses_the_task_that_would_exceed_and_charges_nothing(tmp_path):
    path = tmp_path / "ledger.json"
    event = round_event(ROUND)  # Gaussian(2) under replace-one: ε ≈ 4.4 once, ≈ 6.6 twice
    one = epsilon(event, delta=1e-5, accountant="pld", relation="replace-one")
    two = epsilon(
        dp_accounting.SelfComposedDpEvent(event, 2),
        delta=1e-5,
        accountant="pld",
        relation="replace-one",
    )
    cap = (one + two) / 2
    ledger = NodeLedger(path)
    assert not ledger.would_exceed(event, cap) and not ledger.would_exceed(event, None)
    ledger.charge(event, kind="round", round=1, label="round 1", cap=cap)
    assert ledger.would_exceed(event, cap)
    with pytest.raises(PolicyRefusal, match="max-epsilon: .*past its cap") as info:
        ledger.charge(event, kind="round", round=2, label="round 2", cap=cap)
    assert info.value.rule == "max-epsilon"
    with pytest.raises(PolicyRefusal):
        ledger.check(event, cap)
    assert [e.round for e in NodeLedger(path).entries] == [1]
    ledger.charge(event, kind="round", round=2, label="round 2", cap=two * 1.001)  # at the edge


def test_unnoised_release_exceeds_any_cap(tmp_path):
    ledger = NodeLedger(tmp_path / "ledger.json")
    assert ledger.would_exceed(dp_accounting.NonPrivateDpEvent(), 1e6)
    assert not ledger.would_exceed(dp_accounting.NonPrivateDpEvent(), None)


def test_damaged_ledger_stops_the_client(tmp_path):
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        NodeLedger(path)
