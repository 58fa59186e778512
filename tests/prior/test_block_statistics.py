"""Per-block statistics of an update, the statistics vector and their dict round trips."""

from __future__ import annotations

import json

import pytest
import torch

from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout
from drencoder.prior import BlockStatistics, ClientStatistics

LAYOUT = Layout.from_shapes({"l.0.lora_A": (2, 3), "l.0.lora_B": (3, 2), "l.1.lora_A": (1, 4)})


def test_hand_example():
    # blocks (natural key order): l.0.lora_A = [0..5], l.0.lora_B = [6..11], l.1.lora_A = 4 ones
    update = torch.cat([torch.arange(6.0), torch.full((6,), 2.0), torch.ones(4)])
    stats = BlockStatistics.of(update, layout=LAYOUT)
    assert stats.means.tolist() == [2.5, 2.0, 1.0]
    # population std of 0..5: sqrt(35/12)
    assert stats.stds.tolist() == pytest.approx([(35 / 12) ** 0.5, 0.0, 0.0])
    assert stats.means.dtype == torch.float32 and stats.n_blocks == 3


def test_client_vector_order_and_round_trips():
    g = torch.Generator().manual_seed(0)
    updates = [torch.randn(LAYOUT.dim, generator=g) for _ in range(2)]
    client = ClientStatistics.of(updates, layout=LAYOUT)
    vec = client.to_vector()
    e0, e1 = client.epochs
    assert torch.equal(vec, torch.cat([e0.means, e0.stds, e1.means, e1.stds]))
    assert client.vector_dim == vec.numel() == 12
    back = ClientStatistics.from_vector(vec, layout=LAYOUT, n_epochs=2)
    assert back.equals(client)
    via_json = ClientStatistics.from_dict(json.loads(json.dumps(client.to_dict())))
    assert via_json.equals(client)
    one = BlockStatistics.from_dict(json.loads(json.dumps(e0.to_dict())))
    assert one.equals(e0)


def test_from_vector_floors_stds():
    vec = torch.tensor([0.1, 0.2, 0.3, -0.5, 0.0, 0.4])
    stats = ClientStatistics.from_vector(vec, layout=LAYOUT, n_epochs=1, std_floor=1e-6)
    assert stats.epochs[0].stds.tolist() == pytest.approx([1e-6, 1e-6, 0.4])


def test_validation():
    with pytest.raises(ConfigError, match=r"layout expects \(16,\)"):
        BlockStatistics.of(torch.zeros(5), layout=LAYOUT)
    with pytest.raises(ConfigError, match="stds must be >= 0"):
        BlockStatistics(layout=LAYOUT, means=[0, 0, 0], stds=[1, -1, 1])
    with pytest.raises(ConfigError, match=r"one value per layout block \(3\), got 2"):
        BlockStatistics(layout=LAYOUT, means=[0, 0], stds=[1, 1])
    with pytest.raises(ConfigError, match="at least one epoch"):
        ClientStatistics(epochs=())
    with pytest.raises(ConfigError, match="malformed"):
        ClientStatistics.from_dict({"epochs": []})
