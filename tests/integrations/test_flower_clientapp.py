"""The ClientApp's handlers called directly: policy, node ledger, the sent mechanism, errors.

No processes: each node is a :class:`Context` whose runtime (tiny model, smoke workload)
is put into the app's cache, and messages are built as the ServerApp builds them.
"""

from __future__ import annotations

import dataclasses
import json
import logging

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
from drencoder.errors import ClientDropoutWarning
from drencoder.federated.client.runtime import ClientRuntime
from drencoder.federated.descriptions import ReleaseMechanism, RoundMechanism
from drencoder.federated.seeds import derive_seed
from drencoder.federated.server.orchestration import FederatedServer
from drencoder.federated.workload import build_workload
from drencoder.integrations.flower import (
    CLIENT_ERROR_CODE,
    REFUSED_CODE,
    FlowerClients,
    codec_content,
    from_record,
    to_record,
)
from drencoder.integrations.flower import client as flower
from drencoder.lora import adapter_layout, attach_lora, get_adapter_state

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

RUN_ID = 7
# The node's own copy of the run config: a clip norm far larger than the server's.
NODE_CONFIG = [
    "clients=2",
    "method=dp-fedavg-lora",
    "local.lr=0.01",
    "privacy.clip_norm=100.0",
    "privacy.noise_multiplier=3.0",
    "target_epsilon=none",
    "eval.questions=4",
    "eval.every=0",
]
SENT = RoundMechanism(
    method="dp-fedavg-lora",
    placement="central",  # nothing added on the node: the clipped latent shows the clip norm
    clip_point="latent",
    clip_norm=1e-4,
    noise_multiplier=1.0,
    relation="add-remove",
)


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages need a run id, which flwr sets inside an app process."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def make_runtime(*overrides) -> ClientRuntime:
    config = load_config(preset="smoke", overrides=[*NODE_CONFIG, *overrides])
    model = attach_lora(make_tiny_llama(), config.lora, seed=derive_seed(config.seed, "lora"))
    return ClientRuntime(
        model,
        build_workload(config, make_tiny_tokenizer()),
        config,
        layout=adapter_layout(model, sent=spec_for(config.method).sent),
        noise_generator=torch.Generator(),
    )


@pytest.fixture
def node(tmp_path, monkeypatch):
    """A node (partition 0, node id 21) with a cached runtime and a ledger in tmp_path."""

    def make(node_id=21, partition=0, runtime=None, **policy):
        runtime = runtime or make_runtime()
        monkeypatch.setitem(flower._RUNTIMES, (RUN_ID, node_id), runtime)
        node_config = {
            "partition-id": partition,
            "num-partitions": 2,
            "noise-seed": 1,
            "ledger-path": str(tmp_path / f"ledger-{partition}.json"),
            **policy,
        }
        context = Context(RUN_ID, node_id, node_config, RecordDict(), {})
        return SimpleNode(context, runtime, tmp_path / f"ledger-{partition}.json")

    return make


@dataclasses.dataclass
class SimpleNode:
    context: Context
    runtime: ClientRuntime
    ledger_path: object

    def ledger(self) -> PrivacyLedger | None:
        return PrivacyLedger.load(self.ledger_path) if self.ledger_path.exists() else None


def train_message(runtime, mechanism: RoundMechanism | str, node_id=21, round=1) -> Message:
    description = mechanism if isinstance(mechanism, str) else mechanism.canonical()
    content = RecordDict(
        {
            "adapter": to_record(get_adapter_state(runtime.model)),
            "task": ConfigRecord({"round": round, "data-seed": 3, "train-seed": 4}),
            "mechanism": ConfigRecord({"description": description}),
            **codec_content(IdentityCodec(input_dim=runtime.layout.dim)),
        }
    )
    return Message(content, dst_node_id=node_id, message_type="train", group_id="round-1")


def stage1_message(runtime, release: ReleaseMechanism, node_id=21) -> Message:
    content = RecordDict(
        {
            "adapter": to_record(get_adapter_state(runtime.model)),
            "task": ConfigRecord({"data-seed": 3, "train-seed": 4}),
            "mechanism": ConfigRecord({"description": release.canonical()}),
        }
    )
    return Message(content, dst_node_id=node_id, message_type="train.stage1", group_id="stage1")


def assert_error(reply: Message, code: int, reason: str) -> None:
    assert reply.has_error() and not reply.has_content()
    assert (reply.error.code, reply.error.reason) == (code, reason)


def test_node_with_a_noise_floor_refuses_with_a_fixed_reason(node, caplog):
    n = node(**{"min-noise-multiplier": 5.0})
    with caplog.at_level(logging.WARNING):
        reply = flower.train(train_message(n.runtime, SENT), n.context)
    assert_error(reply, REFUSED_CODE, "refused")
    assert n.ledger() is None  # nothing released, nothing charged
    assert "min-noise-multiplier" in caplog.text  # the reason stays in the node's log


def test_node_privatises_with_the_sent_mechanism_and_charges_first(node, monkeypatch):
    n = node()
    assert n.runtime.config.privacy.clip_norm == 100.0
    seen = {}
    reply_builder = flower._reply

    def reply_spy(message, records, fingerprint, **kwargs):
        seen["ledger_when_replying"] = n.ledger()  # write-ahead: charged before the reply
        return reply_builder(message, records, fingerprint, **kwargs)

    monkeypatch.setattr(flower, "_reply", reply_spy)
    reply = flower.train(train_message(n.runtime, SENT), n.context)
    assert not reply.has_error()
    content = reply.content
    assert set(content.array_records) == {"update"} and set(content.config_records) == {"mechanism"}
    assert len(content.metric_records) == 0  # no loss, no metrics
    assert content.config_records["mechanism"]["fingerprint"] == SENT.fingerprint()
    latent = from_record(content.array_records["update"])["latent"]
    # Clipped to the sent C = 1e-4 (the node's own config says 100), not noised (central).
    assert 0.99e-4 <= float(latent.double().norm()) <= 1e-4 * (1 + 1e-6)
    (entry,) = seen["ledger_when_replying"].entries
    assert entry.kind == "round" and entry.round == 1
    # Central: the latent left un-noised, so against the aggregator it is not private.
    assert entry.event == dp_accounting.NonPrivateDpEvent()
    assert SENT.fingerprint() in entry.label and f"run {RUN_ID}" in entry.label


def test_a_node_that_trusts_the_aggregator_is_charged_the_declared_noise(node):
    n = node(**{"trust-aggregator": "true"})
    assert not flower.train(train_message(n.runtime, SENT), n.context).has_error()
    (entry,) = n.ledger().entries
    assert entry.event == dp_accounting.GaussianDpEvent(1.0)  # under replace-one


def test_a_capped_node_refuses_central_tasks_it_cannot_account(node):
    n = node(**{"max-epsilon": 100.0})  # no finite cap admits an un-noised release
    assert_error(flower.train(train_message(n.runtime, SENT), n.context), REFUSED_CODE, "refused")
    assert n.ledger() is None


def test_node_uses_the_sent_clip_point(node, monkeypatch):
    n = node()
    calls = {}
    train = n.runtime.train

    def spy(*args, **kwargs):
        calls.update(kwargs)
        return train(*args, **kwargs)

    monkeypatch.setattr(n.runtime, "train", spy)
    sent = dataclasses.replace(SENT, clip_point="update", placement="local")
    assert not flower.train(train_message(n.runtime, sent), n.context).has_error()
    assert calls["clip_point"] == "update" and n.runtime.config.privacy.clip_point.value == "latent"
    assert calls["mechanism"].clip_norm == 1e-4 and calls["mechanism"].placement.value == "local"
    assert calls["diagnostics"] is False


def test_an_exception_in_the_handler_becomes_a_fixed_code_error(node, monkeypatch, caplog):
    n = node()

    def crash(*args, **kwargs):
        raise RuntimeError("row 4711 of patient-notes.csv is malformed")

    monkeypatch.setattr(n.runtime, "train", crash)
    with caplog.at_level(logging.ERROR):
        reply = flower.train(train_message(n.runtime, SENT), n.context)
    assert_error(reply, CLIENT_ERROR_CODE, "client-error")
    assert "4711" in caplog.text  # logged on the node, nowhere else
    assert n.ledger() is None


def test_malformed_description_is_a_client_error(node):
    n = node()
    text = json.dumps({**SENT.to_json(), "extra": 1})
    assert_error(
        flower.train(train_message(n.runtime, text), n.context), CLIENT_ERROR_CODE, "client-error"
    )


def test_method_with_another_layout_is_refused(node):
    n = node()
    ffa = dataclasses.replace(SENT, method="ffa-lora-dp")  # B blocks only; the node sends A and B
    assert_error(flower.train(train_message(n.runtime, ffa), n.context), REFUSED_CODE, "refused")


def test_epsilon_cap_refuses_before_training_and_charges_nothing(node, monkeypatch):
    n = node(**{"max-epsilon": 1.0})  # Gaussian(1) under replace-one alone is far past ε = 1

    def never(*args, **kwargs):
        raise AssertionError("a refused task must not train")

    monkeypatch.setattr(n.runtime, "train", never)
    assert_error(flower.train(train_message(n.runtime, SENT), n.context), REFUSED_CODE, "refused")
    assert n.ledger() is None


def test_stage1_refuses_unnoised_statistics_and_charges_a_noised_release(node):
    n = node()
    off = ReleaseMechanism(enabled=False, clip_norm=0.02, noise_multiplier=5.0, std_floor=1e-8)
    assert_error(flower.stage1(stage1_message(n.runtime, off), n.context), REFUSED_CODE, "refused")
    assert n.ledger() is None
    on = dataclasses.replace(off, enabled=True)
    reply = flower.stage1(stage1_message(n.runtime, on), n.context)
    assert not reply.has_error()
    assert reply.content.config_records["mechanism"]["fingerprint"] == on.fingerprint()
    assert set(reply.content.array_records) == {"statistics"}
    (entry,) = n.ledger().entries
    assert entry.kind == "statistics" and entry.event == dp_accounting.GaussianDpEvent(5.0)


def test_hello_checks_the_policy_before_the_run(node):
    n = node(**{"min-noise-multiplier": "lots"})
    hello = Message(RecordDict(), dst_node_id=21, message_type="query.hello")
    assert_error(flower.hello(hello, n.context), CLIENT_ERROR_CODE, "client-error")
    ok = node(node_id=22, partition=1)
    reply = flower.hello(
        Message(RecordDict(), dst_node_id=22, message_type="query.hello"), ok.context
    )
    assert dict(reply.content.config_records["hello"]) == {"partition-id": 1, "num-partitions": 2}


class HandlerGrid:
    """A Grid that hands every message to the ClientApp's handlers of the addressed node."""

    def __init__(self, nodes):
        self.nodes = {n.context.node_id: n for n in nodes}

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        handlers = {"query.hello": flower.hello, "train": flower.train}
        return [
            handlers[m.metadata.message_type](m, self.nodes[m.metadata.dst_node_id].context)
            for m in messages
        ]


def test_server_and_nodes_agree_on_the_wire(node, tmp_path):
    """The ServerApp's pool against the real handlers: one node accepts, one refuses."""
    cfg = load_config(preset="smoke", overrides=[*NODE_CONFIG, "privacy.clip_norm=1.0"])
    server = FederatedServer(
        cfg,
        tmp_path / "run",
        model_and_tokenizer=(make_tiny_llama(), make_tiny_tokenizer()),
        progress=False,
    )
    accepting = node(node_id=21, partition=0)
    refusing = node(node_id=22, partition=1, **{"max-clip-norm": 0.5})
    server.clients = FlowerClients(
        HandlerGrid([accepting, refusing]), server, round_timeout=1, connect_timeout=1
    )
    server.start()
    with pytest.warns(ClientDropoutWarning, match="1 of 2"):
        server.run_round(1)
    row = server.rows[-1]
    assert row["participants"] == [0] and row["failed"] == {"1": "refused"}
    assert [e.kind for e in accepting.ledger().entries] == ["round"]
    assert refusing.ledger() is None


@pytest.mark.parametrize("failure", ["raises", "non-finite"])
def test_a_training_failure_is_answered_with_the_privatised_zero_update(
    node, monkeypatch, caplog, failure
):
    """Whether training failed can depend on the data: the node must not say so."""
    from drencoder.federated.client import runtime as runtime_mod

    def broken(*args, **kwargs):
        raise RuntimeError("loss diverged on record 17")

    def nan_update(model, global_state, batches, settings, *, layout, **kwargs):
        return torch.full((layout.dim,), float("nan")), [float("nan")]

    monkeypatch.setattr(runtime_mod, "local_update", broken if failure == "raises" else nan_update)
    n = node()
    with caplog.at_level(logging.WARNING):
        reply = flower.train(train_message(n.runtime, SENT), n.context)
    assert not reply.has_error()  # an ordinary reply, made under the mechanism
    latent = from_record(reply.content.array_records["update"])["latent"]
    assert torch.equal(latent, torch.zeros_like(latent))  # central: the clipped zero update
    assert n.ledger() is not None and len(n.ledger().entries) == 1  # still charged
    assert "sending a zero update" in caplog.text  # the reason stays on the node


def test_a_failing_warm_up_releases_noised_zero_statistics(node, monkeypatch, caplog):
    from drencoder.federated.client import runtime as runtime_mod

    def broken(*args, **kwargs):
        raise RuntimeError("warm-up diverged on record 17")

    monkeypatch.setattr(runtime_mod, "release_client_statistics", broken)
    n = node()
    on = ReleaseMechanism(enabled=True, clip_norm=0.02, noise_multiplier=5.0, std_floor=1e-8)
    with caplog.at_level(logging.WARNING):
        reply = flower.stage1(stage1_message(n.runtime, on), n.context)
    assert not reply.has_error()  # an ordinary release, indistinguishable by its form
    vector = from_record(reply.content.array_records["statistics"])["vector"]
    assert float(vector.std()) > 0.02  # noised (sigma_s * C_s = 0.1), not a bare zero vector
    assert len(n.ledger().entries) == 1 and "releasing zero statistics" in caplog.text


def test_adaptive_clipping_node_returns_its_bit_and_is_charged_the_effective_sigma(node):
    n = node(**{"trust-aggregator": "true"})
    sent = dataclasses.replace(SENT, count_noise=2.0)
    reply = flower.train(train_message(n.runtime, sent), n.context)
    assert not reply.has_error()
    update = from_record(reply.content.array_records["update"])
    assert set(update) == {"latent", "clip-bit"}
    assert update["clip-bit"].tolist() == [0.0]  # any trained update exceeds C = 1e-4
    (entry,) = n.ledger().entries
    effective = (1.0**-2 + 4.0**-2) ** -0.5
    assert entry.event == dp_accounting.GaussianDpEvent(effective)
    assert "sigma_b=2" in entry.label
    # The node's noise floor is judged on the effective multiplier, below the update's own.
    floor = node(node_id=22, partition=1, **{"min-noise-multiplier": 0.99})
    assert_error(
        flower.train(train_message(floor.runtime, sent, node_id=22), floor.context),
        REFUSED_CODE,
        "refused",
    )


def test_a_count_noise_needs_central_noise():
    from drencoder.errors import ConfigError

    with pytest.raises(ConfigError, match="needs central placement"):
        dataclasses.replace(SENT, count_noise=2.0, placement="local")
