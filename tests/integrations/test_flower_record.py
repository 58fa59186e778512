"""Record-level DP over Flower: a node runs the described DP-SGD, keeps and enforces its own
record ledger, and declares its epsilon; the server reads the declaration."""

from __future__ import annotations

import dp_accounting
import pytest
import torch

from helpers import make_tiny_llama, make_tiny_tokenizer

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, Context, Message, RecordDict

from drencoder.accounting import PrivacyLedger
from drencoder.codecs import IdentityCodec
from drencoder.config import load_config
from drencoder.config.methods import spec_for
from drencoder.errors import ConfigError
from drencoder.federated.client.runtime import ClientRuntime
from drencoder.federated.descriptions import RoundMechanism, round_event
from drencoder.federated.record import RecordDpSgd
from drencoder.federated.seeds import derive_seed
from drencoder.federated.workload import build_workload
from drencoder.integrations.flower import REFUSED_CODE, codec_content, from_record, to_record
from drencoder.integrations.flower import client as flower
from drencoder.integrations.flower.server import declared_epsilon, round_mechanism
from drencoder.lora import adapter_layout, attach_lora, get_adapter_state

RUN_ID = 9
RECORD = RecordDpSgd(clip_norm=0.5, noise_multiplier=1.5, batch_size=2, steps=2)
SENT = RoundMechanism(
    method="dp-fedavg-lora",
    placement="local",
    clip_point="latent",
    clip_norm=None,
    noise_multiplier=0.0,
    relation="add-remove",
    unit="record",
    record=RECORD.to_json(),
)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@pytest.fixture
def node(tmp_path, monkeypatch):
    def make(**policy):
        config = load_config(
            preset="smoke",
            overrides=[
                "clients=2",
                "method=dp-fedavg-lora",
                "privacy.unit=record",
                "privacy.noise_multiplier=1.5",
                "target_epsilon=none",
                "eval.questions=4",
            ],
        )
        model = attach_lora(make_tiny_llama(), config.lora, seed=derive_seed(config.seed, "lora"))
        runtime = ClientRuntime(
            model,
            build_workload(config, make_tiny_tokenizer()),
            config,
            layout=adapter_layout(model, sent=spec_for(config.method).sent),
            noise_generator=torch.Generator(),
        )
        monkeypatch.setitem(flower._RUNTIMES, (RUN_ID, 21), runtime)
        node_config = {
            "partition-id": 0,
            "num-partitions": 2,
            "noise-seed": 1,
            "ledger-path": str(tmp_path / "ledger-0.json"),
            **policy,
        }
        return Context(RUN_ID, 21, node_config, RecordDict(), {}), runtime

    return make


def message(runtime, mechanism=SENT, round=1) -> Message:
    content = RecordDict(
        {
            "adapter": to_record(get_adapter_state(runtime.model)),
            "task": ConfigRecord({"round": round, "data-seed": 3, "train-seed": 4}),
            "mechanism": ConfigRecord({"description": mechanism.canonical()}),
            **codec_content(IdentityCodec(input_dim=runtime.layout.dim)),
        }
    )
    return Message(content, dst_node_id=21, message_type="train", group_id=f"round-{round}")


def pld(event, delta=1e-5):
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


def test_node_charges_its_own_record_ledger_and_declares_its_epsilon(node, tmp_path):
    context, runtime = node()
    n = len(runtime.workload.clients[0])  # 8 examples: q = 2/8
    reply = flower.train(message(runtime), context)
    assert not reply.has_error()
    want = pld(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(2 / n, dp_accounting.GaussianDpEvent(1.5)), 2
        )
    )
    assert declared_epsilon(reply) == pytest.approx(want, rel=1e-9)
    record_ledger = PrivacyLedger.load(tmp_path / "ledger-0.record.json")
    assert record_ledger.relation.value == "add-remove"
    assert record_ledger.epsilon("pld") == pytest.approx(want, rel=1e-9)
    # Client level: the update left without client-level noise: non-private.
    (entry,) = PrivacyLedger.load(tmp_path / "ledger-0.json").entries
    assert entry.event == dp_accounting.NonPrivateDpEvent()
    latent = from_record(reply.content.array_records["update"])["latent"]
    assert latent.shape == (runtime.layout.dim,) and torch.isfinite(latent).all()


def test_node_enforces_its_record_level_cap(node, tmp_path):
    def rounds(k):  # 2 DP-SGD steps a round
        step = dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.5))
        return pld(dp_accounting.SelfComposedDpEvent(step, 2 * k))

    context, runtime = node(**{"max-record-epsilon": (rounds(1) + rounds(2)) / 2})
    assert not flower.train(message(runtime, round=1), context).has_error()
    refused = flower.train(message(runtime, round=2), context)
    assert refused.has_error() and refused.error.code == REFUSED_CODE
    assert len(PrivacyLedger.load(tmp_path / "ledger-0.record.json").entries) == 1


def test_a_node_capping_its_client_level_epsilon_refuses_record_level_tasks(node):
    context, runtime = node(**{"max-epsilon": 8.0})
    refused = flower.train(message(runtime), context)
    assert refused.has_error() and refused.error.code == REFUSED_CODE


def test_node_floor_applies_to_dp_sgd_sigma_and_per_example_clip(node):
    context, runtime = node(**{"min-noise-multiplier": 2.0})
    assert flower.train(message(runtime), context).error.code == REFUSED_CODE
    context, runtime = node(**{"max-clip-norm": 0.1})
    assert flower.train(message(runtime), context).error.code == REFUSED_CODE


def test_server_describes_record_level_rounds_and_descriptions_are_strict():
    config = load_config(
        preset="smoke",
        overrides=["method=dp-fedavg-lora", "privacy.unit=record", "privacy.noise_multiplier=1.5"],
    )
    described = round_mechanism(config, None, record=RECORD)
    assert described == SENT
    assert RoundMechanism.from_json(described.canonical()) == described
    assert described.gaussian is None and described.dp_sgd == RECORD
    assert round_event(described) == dp_accounting.NonPrivateDpEvent()
    with pytest.raises(ConfigError, match="needs record"):
        RoundMechanism(**{**SENT.to_json(), "record": None})
    with pytest.raises(ConfigError, match="clip_norm and count_noise must be null"):
        RoundMechanism(**{**SENT.to_json(), "clip_norm": 1.0})
    with pytest.raises(ConfigError, match="exactly the keys"):
        RoundMechanism(**{**SENT.to_json(), "record": {"clip_norm": 1.0}})
