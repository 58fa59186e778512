"""LoraSettings and TrainSettings validation: bad values raise ConfigError echoing them."""

from __future__ import annotations

import dataclasses

import pytest

from drencoder.errors import ConfigError
from drencoder.lora import LoraSettings, OptimizerName, SentBlocks, TrainSettings


def test_lora_defaults_and_help():
    s = LoraSettings()
    assert (s.rank, s.alpha, s.dropout, s.train_a) == (8, 16.0, 0.0, True)
    assert s.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj")
    assert s.scaling == 2.0 and s.sent is SentBlocks.ALL
    assert LoraSettings(train_a=False).sent is SentBlocks.B_ONLY
    assert all(f.metadata.get("help") for f in dataclasses.fields(LoraSettings))
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainSettings))
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rank = 4


def test_lists_from_toml_become_tuples():
    assert LoraSettings(target_modules=["q_proj", "v_proj"]).target_modules == ("q_proj", "v_proj")
    assert TrainSettings(optimizer="sgd").optimizer is OptimizerName.SGD


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"rank": 0}, "rank=0"),
        ({"rank": 2.5}, "rank=2.5"),
        ({"rank": True}, "rank=True"),
        ({"alpha": 0}, "alpha=0"),
        ({"alpha": float("nan")}, "alpha=nan"),
        ({"dropout": 1.0}, "dropout=1.0"),
        ({"dropout": -0.1}, "dropout=-0.1"),
        ({"target_modules": "q_proj"}, "target_modules='q_proj'"),
        ({"target_modules": ()}, "target_modules=()"),
        ({"target_modules": ("q_proj", "q_proj")}, "duplicates"),
        ({"target_modules": ("q_proj", " v_proj")}, "' v_proj'"),
        ({"train_a": "yes"}, "train_a='yes'"),
    ],
)
def test_bad_lora_settings(kwargs, shown):
    with pytest.raises(ConfigError, match="lora") as err:
        LoraSettings(**kwargs)
    assert shown in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "shown"),
    [
        ({"lr": 0.0}, "lr=0.0"),
        ({"lr": -1e-3}, "lr=-0.001"),
        ({"lr": float("inf")}, "lr=inf"),
        ({"steps": 0}, "steps=0"),
        ({"steps": 1.5}, "steps=1.5"),
        ({"optimizer": "adam"}, "optimizer='adam'"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1"),
        ({"max_grad_norm": 0.0}, "max_grad_norm=0.0"),
    ],
)
def test_bad_train_settings(kwargs, shown):
    with pytest.raises(ConfigError, match="training") as err:
        TrainSettings(**kwargs)
    assert shown in str(err.value)


def test_sent_blocks_parse():
    assert SentBlocks.parse("b_only") is SentBlocks.B_ONLY
    with pytest.raises(ConfigError, match="sent='a_only'"):
        SentBlocks.parse("a_only")
