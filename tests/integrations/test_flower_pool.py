"""FlowerClients without processes: a fake Grid answers, fails or stays silent."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from conftest import make_tiny_llama, make_tiny_tokenizer

pytest.importorskip("flwr")

from flwr.app import ConfigRecord, RecordDict

from drencoder.config import load_config
from drencoder.errors import ClientDropoutWarning, ConfigError
from drencoder.federated.orchestration import FederatedServer
from drencoder.integrations.flower import (
    FlowerClients,
    config_from_run_config,
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


class FakeGrid:
    """Nodes 11, 12, 13 hold partitions 0, 1, 2; in training 12 fails and 13 is silent."""

    def __init__(self, latent_dim, partitions=None):
        self.latent_dim = latent_dim
        self.partitions = partitions or {11: 0, 12: 1, 13: 2}

    def get_node_ids(self):
        return list(self.partitions)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            node, kind = m.metadata.dst_node_id, m.metadata.message_type
            if kind == "query.hello":
                hello = ConfigRecord({"partition-id": self.partitions[node], "num-partitions": 3})
                out.append(reply(node, RecordDict({"hello": hello})))
            elif node == 11:
                content = RecordDict({"update": to_record({"latent": torch.ones(self.latent_dim)})})
                out.append(reply(node, content))
            elif node == 12:
                out.append(reply(node, error=SimpleNamespace(code=0, reason="out of memory")))
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
    assert entry.clients == (0,)  # local noise: only the client whose latent arrived
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
