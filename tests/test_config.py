import dataclasses
import re

import pytest

from drencoder.config import Method, PrivacyConfig, RunConfig, dump_toml, load_config
from drencoder.errors import ConfigError
from drencoder.mechanisms import NoisePlacement


def test_defaults_are_the_embedded_demo():
    c = load_config()
    assert c.method is Method.DR_ENCODER
    assert c.target_epsilon == 8.0 and c.delta == 1e-5
    assert 4 <= c.clients <= 8
    assert c.model.name == "smollm2-135m"
    assert c.privacy.placement is NoisePlacement.LOCAL


def test_precedence_preset_file_set(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("rounds = 5\n[privacy]\nclip_norm = 0.5\n[local]\nlr = 0.01\n")
    c = load_config(path, overrides=["rounds=7"], preset="smoke")
    assert c.rounds == 7  # --set beats the file
    assert c.privacy.clip_norm == 0.5  # file beats the default
    assert c.clients == 2  # preset value kept
    assert c.local.lr == 0.01 and c.local.steps == 1  # partial section keeps the rest


def test_resolved_toml_round_trips(tmp_path):
    c = load_config(overrides=["target_epsilon=none", "privacy.noise_multiplier=1.5"])
    path = tmp_path / "resolved.toml"
    path.write_text(dump_toml(c))
    assert load_config(path) == c


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("privacy.placment=local", "did you mean 'placement'"),
        ("rounds=0", "rounds must be >= 1, got 0"),
        ("rounds=2.5", "rounds must be an integer, got 2.5"),
        ("delta=1.5", "delta must be > 0 and < 1, got 1.5"),
        ("privacy.placement=trusted", "one of 'local', 'central'"),
        ("method=dp-sgd", "method must be one of"),
        ("lora.rank=0", "rank"),
        ("model.device=gpu", "cpu, cuda or cuda:N"),
        ("sampling.rate=0", "sampling.rate must be > 0"),
        ("privacy.accountant=prv", "'gdp', 'rdp', 'pld'"),
        ("lora=3", "must be a table"),
        ("rounds", "key=value"),
    ],
)
def test_errors_name_key_value_and_allowed(override, message):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[override])
    assert message in str(exc.value)


def test_cross_field_rules():
    assert load_config(overrides=["method=ffa-lora-dp"]).lora.train_a is False
    with pytest.raises(ConfigError, match="train_a must be false"):
        load_config(overrides=["method=ffa-lora-dp", "lora.train_a=true"])
    with pytest.raises(ConfigError, match="no epsilon"):
        load_config(overrides=["method=fedavg-lora", "target_epsilon=3"])
    assert load_config(overrides=["method=fedavg-lora"]).target_epsilon is None
    with pytest.raises(ConfigError, match="needs privacy.noise_multiplier or target_epsilon"):
        load_config(overrides=["target_epsilon=none"])
    with pytest.raises(ConfigError, match="needs privacy.placement = local"):
        load_config(overrides=["privacy.placement=central", "privacy.aggregation=decode_then_mean"])
    with pytest.raises(ConfigError, match="per_round must be <= clients"):
        load_config(overrides=["sampling.scheme=fixed", "sampling.per_round=9"])


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("rounds = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="unknown preset"):
        load_config(preset="huge")


def test_cross_device_presets_set_up_the_regime_in_which_dp_learns():
    from drencoder.accounting import Relation
    from drencoder.federated.server import budget

    full, demo = load_config(preset="cross-device"), load_config(preset="demo")
    for c in (full, demo):
        assert c.method.value == "dp-fedavg-lora" and c.target_epsilon == 8
        assert c.clients >= 1000 and c.eval.questions >= 1000
        assert c.privacy.placement.value == "central" and c.sampling.scheme.value == "poisson"
        assert budget.relation(c) is Relation.ADD_REMOVE  # the aggregator hides who took part
        assert c.lora.layers == "top:1" and c.data.loss_on.value == "letters"
        assert c.server.optimizer.value == "adam"
        assert budget.expected_clients(c) >= 100
    assert demo.clients < full.clients and demo.rounds <= full.rounds
    assert demo.eval.every == 0  # base model first, final model last


def test_eval_offset_gives_a_disjoint_held_out_set(tiny_tokenizer):
    from drencoder.federated.workload import build_workload

    def uids(*overrides):
        config = load_config(preset="smoke", overrides=list(overrides))
        return [it.uid for it in build_workload(config, tiny_tokenizer).eval_items]

    first, second = uids("eval.questions=20"), uids("eval.questions=20", "eval.offset=20")
    assert len(first) == len(second) == 20 and not set(first) & set(second)
    assert uids("eval.questions=40")[20:] == second
    with pytest.raises(ConfigError, match="eval.offset"):
        uids("eval.offset=100000")


# -- a RunConfig built in Python checks itself as the loader does ----------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RunConfig(rounds=0), "rounds must be >= 1"),
        (lambda: RunConfig(method="dp-fedvg"), "method must be one of"),
        (lambda: RunConfig(delta=1.5), "delta must be > 0 and < 1"),
        (
            lambda: dataclasses.replace(
                RunConfig(), privacy=dataclasses.replace(PrivacyConfig(), clip_norm=0.0)
            ),
            "clip_norm must be > 0",
        ),
        (
            lambda: RunConfig(
                privacy=PrivacyConfig(placement="central", aggregation="decode_then_mean")
            ),
            "decode_then_mean needs privacy.placement = local",
        ),
        (
            lambda: RunConfig(target_epsilon=None, privacy=PrivacyConfig(noise_multiplier=None)),
            "needs privacy.noise_multiplier or target_epsilon",
        ),
        (
            lambda: RunConfig(method="fedavg-lora", privacy=PrivacyConfig(unit="record")),
            "privacy.unit = record needs a DP method",
        ),
    ],
)
def test_a_config_built_in_python_is_checked(build, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()


def test_a_config_built_in_python_gets_what_the_method_fixes():
    ffa = RunConfig(method="ffa-lora-dp")
    assert ffa.method is Method.FFA_LORA_DP and ffa.lora.train_a is False
    assert RunConfig(method="fedavg-lora").target_epsilon is None
    assert isinstance(RunConfig(target_epsilon=8).target_epsilon, float)  # normalised
    assert RunConfig(rounds=3) == load_config(overrides=["rounds=3"])
