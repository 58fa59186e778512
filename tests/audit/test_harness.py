"""The audit on a tiny random model: it detects what is not private, stays below what is,
and catches the bugs it exists for.

Each audit runs 2 rounds of the smoke preset with 2 real clients and 200 canaries. The
coins are seeded and, where a test needs the same numbers every time, so is the noise
(``privacy.reproducible_noise``; the audited party then does *not* know the seed unless
``seed_known``). With 200 canaries the largest bound the one-run test can certify at 95 %
confidence is about 3.7 (every guess right), the value the non-private audits reach.
"""

from __future__ import annotations

import json

import pytest
import torch

from drencoder.audit import AuditSimulator, draw_coins, run_audit
from drencoder.config import load_config
from drencoder.errors import ConfigError
from drencoder.federated.server import aggregation as server_mod
from drencoder.mechanisms import Aggregation, GaussianMechanism
from drencoder.reporting import schema
from helpers import make_tiny_llama, make_tiny_tokenizer, tiny_simulator

pytestmark = pytest.mark.filterwarnings(
    "ignore::drencoder.accounting.GdpApproximationWarning",
    "ignore::drencoder.errors.PrivacyWarning",
)

BASE = ["rounds=2", "clients=2", "local.lr=0.01", "eval.questions=4", "eval.every=0"]
CANARIES = 200
ALL_RIGHT = 3.70  # 200 of 200 right: the most 200 canaries certify (Bonferroni over 6 counts)
# Coin seed 1 puts exactly 100 of the 200 canaries in, so that guessing 100 "in" and 100 "out"
# can be right every time (the guesses are symmetric, k+ = k-).


def tiny():
    return make_tiny_llama(), make_tiny_tokenizer()


def config(*overrides):
    return load_config(preset="smoke", overrides=[*BASE, *overrides])


def audit(tmp_path, *overrides, seed_known=False, name="a"):
    return run_audit(
        config(*overrides),
        tmp_path / name,
        canaries=CANARIES,
        seed_known=seed_known,
        coin_seed=1,
        model_factory=tiny,
    )


# Noise from the seed: the same numbers every time. The audited party does not know the
# seed (seed_known=False), so the bound is still a valid test of the guarantee.
SEEDED = ["privacy.reproducible_noise=true"]


# -- 1. no DP: the canaries are found --------------------------------------------------
@pytest.mark.parametrize("placement", ["local", "central"])
def test_fedavg_without_noise_is_detected(tmp_path, placement):
    e = audit(tmp_path, "method=fedavg-lora", f"privacy.placement={placement}")
    assert e.epsilon_theory is None and e.ratio is None
    assert e.correct == e.guesses == CANARIES  # every coin guessed right
    assert e.epsilon_lower_bound > ALL_RIGHT


# -- 2. DP: below the accountant, above zero ---------------------------------------------
@pytest.mark.parametrize(
    "method, extra",
    [
        ("dp-fedavg-lora", ["privacy.placement=local"]),
        ("dp-fedavg-lora", ["privacy.placement=central"]),
        ("ffa-lora-dp", []),
        ("dp-random-projection", ["codec.compression_ratio=0.25"]),
        ("dr-encoder", ["codec.compression_ratio=0.25"]),
    ],
)
def test_private_methods_stay_below_the_accountant(tmp_path, method, extra):
    e = audit(tmp_path, f"method={method}", *SEEDED, *extra)
    assert e.epsilon_theory is not None and e.epsilon_theory <= 8.0 + 1e-6
    assert 0.0 < e.epsilon_lower_bound <= e.epsilon_theory
    assert e.party == ("released aggregates" if "central" in str(extra) else "server")
    saved = json.loads((tmp_path / "a" / "scores.json").read_text())
    assert saved["entry"] == e.to_json() and len(saved["scores"]) == CANARIES


# -- 3. the bugs it exists for -----------------------------------------------------------
@pytest.mark.parametrize("placement", ["local", "central"])
def test_reproducible_noise_and_a_known_seed_break_the_guarantee(tmp_path, placement):
    over = ["method=dp-fedavg-lora", f"privacy.placement={placement}", "target_epsilon=1"]
    broken = audit(tmp_path, *over, "privacy.reproducible_noise=true", seed_known=True)
    assert broken.party.endswith("+ seed")
    assert broken.epsilon_theory == pytest.approx(1.0, abs=0.01)
    assert broken.correct == broken.guesses == CANARIES  # noise regenerated and removed
    assert broken.epsilon_lower_bound > 3 * broken.epsilon_theory
    # Control: noise from OS entropy; the replay's noise is independent of the run's.
    sound = audit(tmp_path, *over, seed_known=True, name="b")
    assert sound.epsilon_lower_bound <= sound.epsilon_theory


def test_noise_at_a_tenth_of_sigma_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(
        GaussianMechanism, "noise_std", property(lambda m: m.noise_multiplier * m.clip_norm / 10)
    )
    e = audit(tmp_path, "method=dp-fedavg-lora", "target_epsilon=1", *SEEDED)
    assert e.epsilon_lower_bound > e.epsilon_theory


def test_a_missed_clip_is_caught(tmp_path, monkeypatch):
    """Canaries sending 10·C·u (a clip applied to the wrong vector lets it through)."""
    real = GaussianMechanism.clip
    monkeypatch.setattr(GaussianMechanism, "clip", lambda m, z: (z, real(m, z)[1]))
    monkeypatch.setattr(
        "drencoder.audit.canaries.CanarySet.direction",
        lambda self, j: 10 * self._draw(j),
    )
    monkeypatch.setattr("drencoder.federated.server.orchestration.accept_messages", _accept_all)
    e = audit(tmp_path, "method=dp-fedavg-lora", "target_epsilon=1", *SEEDED)
    assert e.epsilon_lower_bound > e.epsilon_theory


def _accept_all(messages, **limits):
    return dict(messages), {}


# -- 4. what the canaries are charged and how they take part ---------------------------
def test_canaries_are_charged_like_clients(tmp_path):
    coins = draw_coins(CANARIES, seed=2)
    cfg = config("method=dp-fedavg-lora")
    sim = AuditSimulator(
        cfg, tmp_path / "r", included=coins, canary_seed=5, model_and_tokenizer=tiny()
    )
    sim.run()
    assert sim.ledger.participation() == {c: 2 for c in range(2 + CANARIES)}  # local: replace-one
    assert sim.canary_epsilon() == pytest.approx(sim.ledger.epsilon("pld"), rel=1e-9)
    rows = schema.load_metrics(tmp_path / "r" / "metrics.jsonl")
    rounds = schema.rounds(rows)
    assert all(len(r["participants"]) == 2 + CANARIES for r in rounds)  # "out" canaries send -Cu


def test_add_remove_canaries_are_absent_when_out(tmp_path):
    coins = draw_coins(CANARIES, seed=2)
    cfg = config(
        "method=dp-fedavg-lora",
        "privacy.placement=central",
        "sampling.rate=0.5",
        "privacy.noise_multiplier=1.0",
        "target_epsilon=none",
        "privacy.accountant=rdp",
    )
    sim = AuditSimulator(
        cfg, tmp_path / "r", included=coins, canary_seed=5, model_and_tokenizer=tiny()
    )
    sim.run()
    assert sim.relation.value == "add-remove"
    canaries = {c - 2 for r in sim.rows if r["kind"] == "round" for c in r["sampled"] if c >= 2}
    assert canaries and all(coins[j] for j in canaries)  # only "in" canaries ever take part
    per_round = [sum(c >= 2 for c in r["sampled"]) for r in sim.rows if r["kind"] == "round"]
    assert all(0.3 * coins.sum() < n < 0.7 * coins.sum() for n in per_round)  # Poisson at q


def test_refuses_canaries_outside_the_sent_space(tmp_path):
    with pytest.raises(ConfigError, match="clip_point=latent"):
        run_audit(
            config("method=dp-random-projection", "privacy.clip_point=update"),
            tmp_path / "a",
            canaries=4,
            model_factory=tiny,
        )


# -- 5. no canary outside an audit --------------------------------------------------------
def test_an_ordinary_run_has_no_canaries(tmp_path):
    sim = tiny_simulator(tmp_path / "run", [*BASE, "method=dp-fedavg-lora"])
    sim.run()
    assert not hasattr(sim, "canaries")
    assert set(sim.ledger.participation()) == {0, 1}
    assert all(set(r["sampled"]) <= {0, 1} for r in sim.rows if r["kind"] == "round")


def test_streamed_mean_equals_the_stacked_mean():
    from drencoder.codecs import IdentityCodec

    g = torch.Generator().manual_seed(0)
    messages = [torch.randn(64, generator=g) for _ in range(50)]
    codec = IdentityCodec(input_dim=64)
    got = server_mod.aggregate(
        messages,
        codec=codec,
        mechanism=None,
        aggregation=Aggregation.MEAN_THEN_DECODE,
        expected_clients=50,
        generator=g,
    )
    torch.testing.assert_close(got, torch.stack(messages).mean(0), rtol=0, atol=1e-6)
    per_client = server_mod.aggregate(
        messages,
        codec=codec,
        mechanism=None,
        aggregation=Aggregation.DECODE_THEN_MEAN,
        expected_clients=50,
        generator=g,
    )
    torch.testing.assert_close(per_client, torch.stack(messages).mean(0))
    assert (
        server_mod.release(
            [],
            codec=codec,
            mechanism=None,
            aggregation="mean_then_decode",
            expected_clients=1,
            generator=g,
        )
        is None
    )
