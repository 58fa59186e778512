"""The server optimizer: sgd is today's update bit for bit, momentum and adam follow their
papers' formulas, and the state survives a checkpoint."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from drencoder.config import ServerConfig
from drencoder.errors import CheckpointError, ConfigError
from drencoder.federated.server import orchestration as orch_mod
from drencoder.federated.server.optimizer import GlobalOptimizer
from drencoder.lora import apply_delta
from helpers import resume_tiny_simulator, tiny_simulator

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

STATE = {"a.lora_A.weight": torch.tensor([1.0, -2.0, 0.5]), "a.lora_B.weight": torch.zeros(2)}
DELTAS = [
    {"a.lora_A.weight": torch.tensor([0.1, 0.2, -0.3])},
    {"a.lora_A.weight": torch.tensor([-0.05, 0.4, 0.0])},
    {"a.lora_A.weight": torch.tensor([0.2, -0.1, 0.25])},
]


def run(opt: GlobalOptimizer, deltas=DELTAS):
    state = STATE
    for d in deltas:
        state = opt.apply(state, d)
    return state


def test_sgd_is_the_old_apply_delta_bit_for_bit():
    opt = GlobalOptimizer(ServerConfig(lr=0.7))
    state, old = STATE, STATE
    for d in DELTAS:
        state = opt.apply(state, d)
        old = apply_delta(old, d, scale=0.7)
        assert all(torch.equal(state[k], old[k]) for k in old)
    assert opt.state_tensors() == {}


def test_momentum_is_fedavgm_by_hand_and_torch_sgd():
    beta, lr = 0.9, 0.5
    out = run(GlobalOptimizer(ServerConfig(optimizer="momentum", momentum=beta, lr=lr)))
    theta = STATE["a.lora_A.weight"].double()
    m = torch.zeros(3, dtype=torch.float64)
    for d in DELTAS:
        m = beta * m + d["a.lora_A.weight"].double()
        theta = theta + lr * m
    assert torch.allclose(out["a.lora_A.weight"].double(), theta, atol=1e-6)
    assert torch.equal(out["a.lora_B.weight"], STATE["a.lora_B.weight"])  # not in the delta
    # The same update as torch.optim.SGD(momentum=beta, dampening=0) on the pseudo-gradient.
    p = torch.nn.Parameter(STATE["a.lora_A.weight"].clone())
    sgd = torch.optim.SGD([p], lr=lr, momentum=beta, dampening=0)
    for d in DELTAS:
        p.grad = -d["a.lora_A.weight"]
        sgd.step()
    assert torch.allclose(out["a.lora_A.weight"], p.detach(), atol=1e-6)


def test_adam_is_fedadam_by_hand():
    b1, b2, tau, lr = 0.9, 0.99, 1e-3, 0.1
    out = run(
        GlobalOptimizer(
            ServerConfig(optimizer="adam", momentum=b1, beta2=b2, adaptivity=tau, lr=lr)
        )
    )
    theta = STATE["a.lora_A.weight"].double()
    m = v = torch.zeros(3, dtype=torch.float64)
    for d in DELTAS:
        g = d["a.lora_A.weight"].double()
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        theta = theta + lr * m / (v.sqrt() + tau)
    assert torch.allclose(out["a.lora_A.weight"].double(), theta, atol=1e-6)


@pytest.mark.parametrize("kind", ["momentum", "adam"])
def test_state_round_trip_continues_exactly(kind):
    settings = ServerConfig(optimizer=kind, lr=0.3)
    straight = run(GlobalOptimizer(settings))
    first = GlobalOptimizer(settings)
    state = run(first, DELTAS[:2])
    second = GlobalOptimizer(settings)
    second.load(dict(first.state_tensors()), dict(first.state_scalars()))
    assert second.steps == 2
    state = second.apply(state, DELTAS[2])
    assert all(torch.equal(state[k], straight[k]) for k in straight)
    with pytest.raises(CheckpointError, match="server optimizer state is for"):
        GlobalOptimizer(ServerConfig()).load(first.state_tensors(), first.state_scalars())
    with pytest.raises(CheckpointError, match="lacks the"):
        GlobalOptimizer(settings).load({}, first.state_scalars())


def test_optimizer_keys_are_refused_where_they_do_nothing():
    from drencoder.config import load_config

    with pytest.raises(ConfigError, match="server.beta2 has no effect"):
        load_config(overrides=["server.optimizer=momentum", "server.beta2=0.9"])
    with pytest.raises(ConfigError, match="server.momentum has no effect"):
        load_config(overrides=["server.momentum=0.5"])
    with pytest.raises(ConfigError, match="server.optimizer must be one of"):
        load_config(overrides=["server.optimizer=lamb"])
    cfg = load_config(overrides=["server.optimizer=adam", "server.momentum=0.5"])
    assert cfg.server.momentum == 0.5 and cfg.server.beta2 == 0.99


BASE = ["rounds=4", "clients=3", "local.lr=0.01", "eval.questions=4", "eval.every=0"]
PRIVATE = [
    "method=dp-fedavg-lora",
    "privacy.reproducible_noise=true",
    "privacy.noise_multiplier=2.0",
    "target_epsilon=none",
]


def adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_default_sgd_run_matches_the_unchanged_update(tmp_path, monkeypatch):
    """A whole run with the default optimizer equals one whose server step is the old
    ``apply_delta(state, delta, scale=server.lr)``: same adapter bits, same metrics."""
    opts = [*BASE, *PRIVATE, "rounds=2", "server.lr=0.8"]
    new = tiny_simulator(tmp_path / "new", opts)
    new.run()

    def old_apply(self, state, delta):
        return apply_delta(state, delta, scale=0.8)

    monkeypatch.setattr(orch_mod.GlobalOptimizer, "apply", old_apply)
    old = tiny_simulator(tmp_path / "old", opts)
    old.run()
    a, b = adapter(tmp_path / "new"), adapter(tmp_path / "old")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = ("seconds",)
    rows = [[{k: v for k, v in r.items() if k not in strip} for r in s.rows] for s in (new, old)]
    assert rows[0] == rows[1]


class Stop(Exception):
    pass


def test_resume_with_adam_and_adaptive_clipping_is_exact(tmp_path):
    """4 rounds straight vs 2, a resume from the round-2 checkpoint, and 2 more: identical
    adapters, clip norms and ledgers (optimizer moments and C are checkpointed)."""
    opts = [
        *BASE,
        *PRIVATE,
        "server.optimizer=adam",
        "server.lr=0.05",
        "privacy.placement=central",
        "privacy.clip_quantile=0.5",
        "privacy.clip_count_noise=2.0",
        "privacy.clip_norm=0.05",
    ]
    full = tiny_simulator(tmp_path / "full", opts)
    full.run()

    def stop(event, **info):
        if event == "round_done" and info["round"] == 2:
            raise Stop

    broken = tiny_simulator(tmp_path / "broken", opts, hook=stop)
    with pytest.raises(Stop):
        broken.run()
    resumed = resume_tiny_simulator(tmp_path / "broken")
    assert resumed.round == 2 and resumed.optimizer.steps == 2
    assert resumed.clip_norm == broken.clip_norm
    resumed.run()
    a, b = adapter(tmp_path / "full"), adapter(tmp_path / "broken")
    assert all(torch.equal(a[k], b[k]) for k in a)
    norms = [[r["clip_norm"] for r in s.rows if r["kind"] == "round"] for s in (full, resumed)]
    assert norms[0] == norms[1] and len(set(norms[0])) == 4
    assert [e.to_json() for e in full.ledger.entries] == [
        e.to_json() for e in resumed.ledger.entries
    ]
