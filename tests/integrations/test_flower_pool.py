"""FlowerClients without processes: a fake Grid answers, fails or stays silent."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from helpers import make_tiny_llama, make_tiny_tokenizer

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, RecordDict

from drencoder.config import load_config
from drencoder.errors import ClientDropoutWarning, ConfigError
from drencoder.federated.descriptions import RoundMechanism
from drencoder.federated.server.orchestration import FederatedServer
from drencoder.integrations.flower import (
    CLIENT_ERROR_CODE,
    REFUSED_CODE,
    FlowerClients,
    config_from_run_config,
    round_mechanism,
    to_record,
)

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")


def reply(node, content=None, error=None):
    return SimpleNamespace(
        metadata=SimpleNamespace(src_node_id=node),
        content=content,
        error=error,
        has_error=lambda: error is not None,
    )


def latent_reply(node, latent, fingerprint, **extra):
    content = RecordDict(
        {
            "update": to_record({"latent": latent}),
            "mechanism": ConfigRecord({"fingerprint": fingerprint}),
            **extra,
        }
    )
    return reply(node, content)


def sent_fingerprint(message):
    return RoundMechanism.from_json(
        message.content.config_records["mechanism"]["description"]
    ).fingerprint()


class FakeGrid:
    """Nodes 11, 12, 13 hold partitions 0, 1, 2; in training 12 fails and 13 is silent.

    ``answers`` replaces the training behaviour: node -> function(message) -> reply or None.
    """

    def __init__(self, latent_dim, partitions=None, answers=None):
        self.latent_dim = latent_dim
        self.partitions = partitions or {11: 0, 12: 1, 13: 2}
        self.answers = answers or {
            11: lambda m: latent_reply(11, torch.ones(self.latent_dim), sent_fingerprint(m)),
            12: lambda m: reply(12, error=SimpleNamespace(code=0, reason="out of memory")),
        }
        self.sent = []

    def get_node_ids(self):
        return list(self.partitions)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            node, kind = m.metadata.dst_node_id, m.metadata.message_type
            if kind == "query.hello":
                hello = ConfigRecord({"partition-id": self.partitions[node], "num-partitions": 3})
                out.append(reply(node, RecordDict({"hello": hello})))
                continue
            self.sent.append(m)
            if node in self.answers and (r := self.answers[node](m)) is not None:
                out.append(r)
        return out


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    """Messages need a run id, which flwr sets inside a ServerApp process."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_task_id", "_node_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


@pytest.fixture
def server(tmp_path):
    cfg = load_config(
        preset="smoke",
        overrides=[
            "clients=3",
            "method=dp-fedavg-lora",
            "privacy.noise_multiplier=3.0",
            "target_epsilon=none",
            "eval.questions=4",
            "eval.every=0",
        ],
    )
    return FederatedServer(
        cfg,
        tmp_path / "run",
        model_and_tokenizer=(make_tiny_llama(), make_tiny_tokenizer()),
        progress=False,
    )


def test_error_replies_and_silent_nodes_are_dropouts(server):
    server.clients = FlowerClients(
        FakeGrid(server.layout.dim), server, round_timeout=1, connect_timeout=1
    )
    assert server.clients.nodes == {0: 11, 1: 12, 2: 13}
    server.start()
    before = dict(server.global_state)
    with pytest.warns(ClientDropoutWarning, match="round 1: 1 of 3 sampled clients replied"):
        server.run_round(1)
    row = server.rows[-1]
    assert row["sampled"] == [0, 1, 2] and row["participants"] == [0]
    # Fixed codes only: the node's error text ("out of memory") can depend on its data.
    assert row["failed"] == {"1": "client-error", "2": "no-reply"}
    assert "out of memory" not in json.dumps(server.rows)
    assert "loss" not in row and row["bytes_up"] == server.layout.dim * 4
    (entry,) = [e for e in server.ledger.entries if e.kind == "round"]
    assert entry.clients == (0, 1, 2)  # local noise: every sampled client, charged when sent
    assert any(not torch.equal(before[k], server.global_state[k]) for k in before)


def test_two_nodes_with_one_partition_are_refused(server):
    grid = FakeGrid(server.layout.dim, partitions={11: 0, 12: 0, 13: 2})
    with pytest.raises(ConfigError, match="both hold partition-id=0"):
        FlowerClients(grid, server, round_timeout=1, connect_timeout=1)


def test_run_config_maps_onto_dotted_drencoder_keys():
    config, settings = config_from_run_config(
        {
            "out": "runs/x",
            "preset": "smoke",
            "round-timeout": 30.0,
            "method": "dp-random-projection",
            "privacy.placement": "central",
            "privacy.noise_multiplier": "",
            "sampling.rate": 0.5,
            "clients": 4,
            "stage1.release_noise": False,
        }
    )
    assert settings["out"] == "runs/x" and settings["round-timeout"] == 30.0
    assert settings["connect-timeout"] == 120.0
    assert config.method.value == "dp-random-projection"
    assert config.privacy.placement.value == "central"
    assert config.privacy.noise_multiplier is None  # "" keeps the default
    assert config.sampling.rate == 0.5 and config.clients == 4
    assert config.stage1.release_noise is False
    assert config.local.steps == 1  # from the smoke preset


def test_train_sends_the_full_mechanism(server):
    grid = FakeGrid(server.layout.dim)
    server.clients = FlowerClients(grid, server, round_timeout=1, connect_timeout=1)
    server.start()
    with pytest.warns(ClientDropoutWarning):
        server.run_round(1)
    described = {m.content.config_records["mechanism"]["description"] for m in grid.sent}
    (text,) = described  # one description for the whole round
    mechanism = RoundMechanism.from_json(text)
    assert mechanism == round_mechanism(server.config, server.mechanism)
    assert mechanism.to_json() == {
        "method": "dp-fedavg-lora",
        "placement": "local",
        "clip_point": "latent",
        "clip_norm": server.config.privacy.clip_norm,
        "noise_multiplier": 3.0,
        "count_noise": None,
        "relation": "replace-one",
        "unit": "client",
        "record": None,
    }
    assert all("noise-multiplier" not in m.content.config_records["task"] for m in grid.sent)


def test_reply_under_another_mechanism_is_a_mismatch_dropout(server):
    ones = torch.ones(server.layout.dim)
    grid = FakeGrid(
        server.layout.dim,
        answers={
            11: lambda m: latent_reply(11, ones, sent_fingerprint(m)),
            12: lambda m: latent_reply(12, ones, "0123456789abcdef"),
            13: lambda m: latent_reply(13, ones, sent_fingerprint(m)),
        },
    )
    server.clients = FlowerClients(grid, server, round_timeout=1, connect_timeout=1)
    server.start()
    with pytest.warns(ClientDropoutWarning, match="2 of 3"):
        server.run_round(1)
    row = server.rows[-1]
    assert row["failed"] == {"1": "mechanism-mismatch"}
    assert row["participants"] == [0, 2]  # 1's message stays out of the aggregate


def test_reply_carrying_anything_else_is_malformed(server):
    from flwr.app import MetricRecord

    ones = torch.ones(server.layout.dim)
    grid = FakeGrid(
        server.layout.dim,
        answers={
            11: lambda m: latent_reply(11, ones, sent_fingerprint(m)),
            12: lambda m: latent_reply(
                12, ones, sent_fingerprint(m), metrics=MetricRecord({"loss": 1.25})
            ),
            13: lambda m: reply(13, RecordDict({"update": to_record({"latent": ones})})),
        },
    )
    server.clients = FlowerClients(grid, server, round_timeout=1, connect_timeout=1)
    server.start()
    with pytest.warns(ClientDropoutWarning):
        server.run_round(1)
    row = server.rows[-1]
    assert row["failed"] == {"1": "malformed-reply", "2": "malformed-reply"}
    assert "1.25" not in json.dumps(server.rows) and "loss" not in row


def test_error_replies_map_to_fixed_codes_and_never_leak_reasons(server, caplog):
    grid = FakeGrid(
        server.layout.dim,
        answers={
            11: lambda m: reply(11, error=SimpleNamespace(code=REFUSED_CODE, reason="refused")),
            12: lambda m: reply(
                12, error=SimpleNamespace(code=CLIENT_ERROR_CODE, reason="client-error")
            ),
            13: lambda m: reply(
                13, error=SimpleNamespace(code=2, reason="<class 'KeyError'>:<'patient 4711'>")
            ),
        },
    )
    server.clients = FlowerClients(grid, server, round_timeout=1, connect_timeout=1)
    server.start()
    with pytest.warns(ClientDropoutWarning, match="0 of 3"):
        server.run_round(1)
    row = server.rows[-1]
    assert row["failed"] == {"0": "refused", "1": "client-error", "2": "client-error"}
    records = json.dumps(server.rows) + caplog.text
    assert "4711" not in records and "KeyError" not in records


def bit_reply(node, dim, bit, fingerprint):
    update = {"latent": torch.zeros(dim)}
    if bit is not None:
        update["clip-bit"] = torch.tensor(bit, dtype=torch.float32)
    content = RecordDict(
        {
            "update": to_record(update),
            "mechanism": ConfigRecord({"fingerprint": fingerprint}),
        }
    )
    return reply(node, content)


def test_adaptive_clipping_sends_each_rounds_c_and_checks_the_bits(tmp_path):
    cfg = load_config(
        preset="smoke",
        overrides=[
            "clients=3",
            "method=dp-fedavg-lora",
            "privacy.placement=central",
            "privacy.clip_quantile=0.5",
            "privacy.clip_count_noise=2.0",
            "privacy.noise_multiplier=1.0",
            "target_epsilon=none",
            "eval.questions=4",
            "eval.every=0",
        ],
    )
    server = FederatedServer(
        cfg,
        tmp_path / "run",
        model_and_tokenizer=(make_tiny_llama(), make_tiny_tokenizer()),
        progress=False,
    )
    dim = server.layout.dim
    grid = FakeGrid(
        dim,
        answers={
            11: lambda m: bit_reply(11, dim, [1.0], sent_fingerprint(m)),
            12: lambda m: bit_reply(12, dim, [0.5], sent_fingerprint(m)),
            13: lambda m: bit_reply(13, dim, None, sent_fingerprint(m)),
        },
    )
    server.clients = FlowerClients(grid, server, round_timeout=1, connect_timeout=1)
    server.start()
    with pytest.warns(ClientDropoutWarning):
        server.run_round(1)
    row = server.rows[-1]
    assert row["failed"] == {"2": "malformed-reply"}  # no bit
    assert row["rejected"] == {"1": "bad-clip-bit"}  # a bit that is not 0 or 1
    with pytest.warns(ClientDropoutWarning):
        server.run_round(2)
    sent = [RoundMechanism.from_json(m.content.config_records["mechanism"]["description"])
            for m in grid.sent]  # fmt: skip
    assert {s.count_noise for s in sent} == {2.0}
    assert sent[0].noise_multiplier == pytest.approx(server.update_noise_multiplier)
    first, second = sent[0].clip_norm, sent[-1].clip_norm
    assert first == cfg.privacy.clip_norm and second == server.rows[-1]["clip_norm"] != first
