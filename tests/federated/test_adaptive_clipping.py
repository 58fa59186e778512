"""Adaptive clipping (Andrew et al., NeurIPS 2021): the update rule, the accounting of the
count release, the refusals, and a tiny run."""

from __future__ import annotations

import math

import dp_accounting
import pytest
import torch

from drencoder.codecs import IdentityCodec
from drencoder.config import load_config
from drencoder.errors import ConfigError
from drencoder.federated import adaptive_clipping as ac
from drencoder.federated.client import runtime as runtime_mod
from drencoder.federated.client.update import make_reply
from drencoder.federated.server import budget
from drencoder.mechanisms import ClipPoint, GaussianMechanism
from drencoder.reporting import schema
from helpers import tiny_simulator

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")


# -- the update rule ----------------------------------------------------------------------
def test_noisy_fraction_is_centred_and_divided_by_the_expected_cohort():
    g = torch.Generator().manual_seed(0)
    # Three of four bits set, tiny noise, but the public cohort is 5: (1.5 - 0.5)/5 + 0.5.
    f = ac.noisy_fraction([1, 1, 1, 0], count_noise=1e-9, expected_clients=5, generator=g)
    assert f == pytest.approx(0.7, abs=1e-6)
    # Noise is drawn even when nobody replied.
    before = g.get_state()
    assert ac.noisy_fraction([], count_noise=1e-9, expected_clients=5, generator=g) == (
        pytest.approx(0.5, abs=1e-6)
    )
    assert not torch.equal(before, g.get_state())


def test_clip_norm_moves_to_the_target_quantile():
    g = torch.Generator().manual_seed(1)
    norms = torch.exp(torch.randn(200, generator=g))  # log-normal update norms
    for gamma in (0.2, 0.5, 0.8):
        c = 10.0
        for _ in range(300):
            bits = [float(n <= c) for n in norms]
            f = ac.noisy_fraction(bits, count_noise=1e-6, expected_clients=200, generator=g)
            c = ac.next_clip_norm(c, f, target_quantile=gamma, lr=0.2)
        unclipped = float((norms <= c).double().mean())
        assert abs(unclipped - gamma) < 0.03, (gamma, unclipped)
        assert c == pytest.approx(float(torch.quantile(norms, gamma)), rel=0.1)


def test_the_geometric_step():
    assert ac.next_clip_norm(2.0, 0.5, target_quantile=0.5, lr=0.2) == 2.0
    assert ac.next_clip_norm(2.0, 1.0, target_quantile=0.5, lr=0.2) == pytest.approx(
        2.0 * math.exp(-0.1)
    )
    assert ac.next_clip_norm(2.0, 0.0, target_quantile=0.5, lr=0.2) > 2.0


def test_the_client_bit_is_whether_what_is_clipped_was_within_c():
    codec = IdentityCodec(input_dim=4)
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=1.0, placement="central")
    g = torch.Generator().manual_seed(0)
    small, big = torch.tensor([0.5, 0, 0, 0]), torch.tensor([3.0, 0, 0, 0])
    msg, bit = make_reply(
        small, codec=codec, mechanism=mech, clip_point=ClipPoint.LATENT, generator=g
    )
    assert bit == 1.0 and torch.equal(msg, small)
    msg, bit = make_reply(
        big, codec=codec, mechanism=mech, clip_point=ClipPoint.LATENT, generator=g
    )
    assert bit == 0.0 and float(msg.norm()) == pytest.approx(1.0)
    assert [ac.check_bit(b) for b in (0, 1, 0.0, 1.0, 0.5, -1, True, None, "1")] == [
        True, True, True, True, False, False, False, False, False,
    ]  # fmt: skip


# -- accounting ---------------------------------------------------------------------------
def test_effective_multiplier_is_the_papers_theorem_1():
    z_delta, sigma_b = 1.2, 1.5
    z = ac.effective_noise_multiplier(z_delta, sigma_b)
    assert z == pytest.approx((z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5)
    assert ac.update_noise_multiplier(z, sigma_b) == pytest.approx(z_delta)
    # The paper's example: sigma_b = m/20 with m = 100 expected clients, z = 1.0 leaves
    # z_update = (1 - 1/100)^-1/2 = 1.005 for the update.
    assert ac.update_noise_multiplier(1.0, ac.default_count_noise(100)) == pytest.approx(
        (1 - 0.01) ** -0.5
    )
    # Two Gaussian releases of one client (update at z_delta, centred count at 2 sigma_b)
    # are exactly one Gaussian at z: same epsilon under dp-accounting's PLD.
    both = dp_accounting.ComposedDpEvent(
        [dp_accounting.GaussianDpEvent(z_delta), dp_accounting.GaussianDpEvent(2 * sigma_b)]
    )
    eps = []
    for event in (both, dp_accounting.GaussianDpEvent(z)):
        acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
        eps.append(acc.compose(event).get_epsilon(1e-5))
    assert eps[0] == pytest.approx(eps[1], rel=1e-3)


def test_refusals():
    central = ["privacy.placement=central", "privacy.clip_quantile=0.5"]
    with pytest.raises(ConfigError, match="needs privacy.placement = central"):
        load_config(overrides=["privacy.clip_quantile=0.5"])
    with pytest.raises(ConfigError, match="needs a DP method"):
        load_config(overrides=[*central, "method=fedavg-lora"])
    # A fixed sigma is the effective z: 2 sigma_b must exceed it (default sigma_b = 4/20).
    with pytest.raises(ConfigError, match="2 sigma_b > z"):
        load_config(overrides=[*central, "privacy.noise_multiplier=1.0"])
    with pytest.raises(ConfigError, match="clip_quantile must be > 0 and < 1"):
        load_config(overrides=["privacy.placement=central", "privacy.clip_quantile=1.0"])
    with pytest.raises(ConfigError, match="no effect without adaptive clipping"):
        load_config(overrides=["privacy.clip_lr=0.1"])
    cfg = load_config(
        overrides=[*central, "privacy.noise_multiplier=1.0", "privacy.clip_count_noise=1.0"]
    )
    assert budget.count_noise(cfg) == 1.0
    assert budget.count_noise(load_config(overrides=central)) == pytest.approx(4 / 20)


def test_a_calibrated_sigma_too_large_for_the_count_noise_is_refused_at_start(tmp_path):
    sim = tiny_simulator(
        tmp_path / "run",
        ["method=dp-fedavg-lora", "privacy.placement=central", "privacy.clip_quantile=0.5"],
    )
    with pytest.raises(ConfigError, match="clip_count_noise"):
        sim.run()


# -- a run --------------------------------------------------------------------------------
def test_a_run_moves_c_and_charges_the_effective_multiplier(tmp_path, monkeypatch):
    real = runtime_mod.make_reply
    calls = {"n": 0}

    def make_reply_with_a_bad_bit(*args, **kwargs):
        message, bit = real(*args, **kwargs)
        calls["n"] += 1
        return message, (0.5 if calls["n"] == 2 else bit)  # client 1 of round 1

    monkeypatch.setattr(runtime_mod, "make_reply", make_reply_with_a_bad_bit)
    sim = tiny_simulator(
        tmp_path / "run",
        [
            "rounds=3",
            "clients=3",
            "local.lr=0.01",
            "eval.questions=4",
            "eval.every=0",
            "method=dp-fedavg-lora",
            "privacy.placement=central",
            "privacy.clip_quantile=0.5",
            "privacy.clip_norm=0.05",
            "privacy.clip_count_noise=1.0",
            "target_epsilon=6.0",
        ],
    )
    summary = sim.run()
    rounds = schema.rounds(sim.rows)
    assert len(rounds) == 3
    norms = [r["clip_norm"] for r in rounds]
    assert norms[0] == 0.05 and len(set(norms)) == 3  # C moved every round
    for r, nxt in zip(rounds, [*norms[1:], sim.clip_norm], strict=True):
        info = r["adaptive_clipping"]
        assert info["next_clip_norm"] == nxt
        assert info["count_noise"] == 1.0
        assert nxt == pytest.approx(
            r["clip_norm"] * math.exp(-0.2 * (info["unclipped_fraction"] - 0.5))
        )
    assert rounds[0]["rejected"] == {"1": "bad-clip-bit"}
    assert rounds[0]["participants"] == [0, 1, 2]  # rejected, still charged
    z = sim.noise_multiplier
    assert sim.update_noise_multiplier == pytest.approx(ac.update_noise_multiplier(z, 1.0))
    assert rounds[0]["adaptive_clipping"]["update_noise_multiplier"] == (
        sim.update_noise_multiplier
    )
    # The ledger charges Gaussian(z) per round (rate 1: no amplification) under add-remove;
    # its epsilon is dp-accounting's for that composition.
    entries = [e for e in sim.ledger.entries if e.kind == "round"]
    assert all(e.event == dp_accounting.GaussianDpEvent(z) for e in entries)
    assert all("effective multiplier includes the noisy count" in e.label for e in entries)
    assert [f"C={n:g}" in e.label for e, n in zip(entries, norms, strict=True)] == [True] * 3
    pld = dp_accounting.pld.PLDAccountant(
        dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    ).compose(dp_accounting.GaussianDpEvent(z), 3)
    assert summary["privacy"]["epsilon"]["pld"] == pytest.approx(
        pld.get_epsilon(sim.config.delta), rel=1e-2
    )
    assert summary["privacy"]["epsilon"]["pld"] <= 6.0
    assert summary["privacy"]["adaptive_clipping"]["next_clip_norm"] == sim.clip_norm
