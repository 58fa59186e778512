"""Server-side validation of client messages, alone and inside the simulator."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from drencoder.codecs import IdentityCodec, RandomProjectionCodec
from drencoder.config import load_config
from drencoder.federated.client import runtime as runtime_mod
from drencoder.federated.server import orchestration as orch_mod
from drencoder.federated.server.validation import (
    TAIL_T,
    PayloadRejected,
    accept_messages,
    check_message,
    message_limits,
    norm_bound,
)
from drencoder.federated.simulator import Simulator
from drencoder.mechanisms import GaussianMechanism
from drencoder.reporting import schema
from helpers import make_tiny_llama, make_tiny_tokenizer

K, C, SIGMA = 16, 2.0, 0.5
CENTRAL = {
    "latent_dim": K,
    "clip_norm": C,
    "noise_multiplier": SIGMA,
    "placement": "central",
    "max_bytes": 4 * K,
}
LOCAL = {**CENTRAL, "placement": "local"}
UNCLIPPED = {**CENTRAL, "clip_norm": None, "noise_multiplier": None}
# Local bound: C·(1 + σ·(√k + t)), t = √(2 ln 1e9) ≈ 6.4378 (exp(−t²/2) = 1e-9).
LOCAL_BOUND = C * (1 + SIGMA * (math.sqrt(K) + math.sqrt(2 * math.log(1e9))))


def with_norm(norm: float, k: int = K) -> torch.Tensor:
    v = torch.ones(k, dtype=torch.float64)
    return (v / v.norm() * norm).float()


def nan_at(i: int) -> torch.Tensor:
    v = with_norm(1.0)
    v[i] = math.nan
    return v


CASES = [
    # (id, message, limits, reason substring or None for accepted)
    ("ok-central", with_norm(C), CENTRAL, None),
    ("ok-central-rounding", with_norm(C * (1 + 5e-6)), CENTRAL, None),
    ("ok-local-big-noise", with_norm(LOCAL_BOUND * 0.999), LOCAL, None),
    ("ok-unclipped-huge", with_norm(1e6), UNCLIPPED, None),
    ("not-a-tensor", [0.0] * K, CENTRAL, "not a tensor (got list)"),
    ("numpy-array", with_norm(1.0).numpy(), CENTRAL, "not a tensor (got ndarray)"),
    ("float64", with_norm(1.0).double()[: K // 2], CENTRAL, "dtype torch.float64"),
    ("int32", torch.zeros(K, dtype=torch.int32), CENTRAL, "dtype torch.int32"),
    ("float16", torch.zeros(K, dtype=torch.float16), CENTRAL, "dtype torch.float16"),
    ("too-short", with_norm(1.0, K - 1), CENTRAL, f"shape [{K - 1}], expected [{K}]"),
    ("2-d", with_norm(1.0).reshape(1, K), CENTRAL, f"shape [1, {K}]"),
    ("scalar", torch.tensor(1.0), CENTRAL, "shape []"),
    ("oversized", torch.zeros(4 * K), CENTRAL, f"oversized: {16 * K} bytes"),
    ("oversized-float64", torch.zeros(K, dtype=torch.float64), CENTRAL, "oversized"),
    ("nan", nan_at(3), CENTRAL, "1 of 16 values are NaN or infinite"),
    ("inf", torch.full((K,), math.inf), UNCLIPPED, "16 of 16 values"),
    ("central-over-C", with_norm(C * 1.001), CENTRAL, "exceeds"),
    ("local-over-bound", with_norm(LOCAL_BOUND * 1.001), LOCAL, "σ=0.5, k=16"),
    ("central-ignores-sigma", with_norm(LOCAL_BOUND * 0.5), CENTRAL, "clip norm C=2"),
]


@pytest.mark.parametrize(
    ("message", "limits", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_check_message(message, limits, reason):
    if reason is None:
        check_message(message, **limits)
    else:
        with pytest.raises(PayloadRejected) as exc:
            check_message(message, **limits)
        assert reason in str(exc.value)


def test_norm_bound_matches_the_documented_formula():
    assert abs(TAIL_T - 6.4378) < 1e-4  # sqrt(2 ln 1e9)
    assert norm_bound(clip_norm=C, noise_multiplier=SIGMA, placement="local", latent_dim=K) == (
        pytest.approx(LOCAL_BOUND * (1 + 1e-5), rel=1e-12)
    )
    assert norm_bound(clip_norm=C, noise_multiplier=SIGMA, placement="central", latent_dim=K) == (
        pytest.approx(C * (1 + 1e-5), rel=1e-12)
    )


@pytest.mark.parametrize("k", [1, 64, 4096])
def test_valid_locally_noised_messages_pass(k):
    # 2000 worst-case messages (clipped norm exactly C, then noised) at σ = 3: none rejected.
    gen = torch.Generator().manual_seed(k)
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=3.0, placement="local")
    limits = {**LOCAL, "latent_dim": k, "clip_norm": 1.0, "noise_multiplier": 3.0}
    limits["max_bytes"] = 4 * k
    z = torch.randn(2000, k, generator=gen)
    z = z / z.norm(dim=1, keepdim=True)
    noisy = mech.privatize(z, generator=gen)
    accepted, rejected = accept_messages(dict(enumerate(noisy)), **limits)
    assert rejected == {} and len(accepted) == 2000


def test_accept_messages_splits_keeps_order_and_logs(caplog):
    good = with_norm(1.0)
    msgs = {5: good, 2: nan_at(0), 9: good, 1: "junk"}
    with caplog.at_level(logging.WARNING, logger="drencoder"):
        accepted, rejected = accept_messages(msgs, **CENTRAL)
    assert list(accepted) == [5, 9] and all(accepted[c] is good for c in accepted)
    # Fixed codes in what is recorded; the detail only in the server's log.
    assert rejected == {2: "non-finite", 1: "not-a-tensor"}
    assert "NaN" in caplog.records[0].getMessage()
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING"]
    assert "client 2" in caplog.records[0].getMessage()


def test_message_limits_check_the_norm_only_when_the_latent_is_clipped():
    mech = GaussianMechanism(clip_norm=1.0, noise_multiplier=2.0, placement="local")
    proj = RandomProjectionCodec(input_dim=64, compression_ratio=0.25, seed=0)
    ident = IdentityCodec(input_dim=64)
    assert message_limits(proj, mech, "latent")["clip_norm"] == 1.0
    assert message_limits(proj, mech, "update")["clip_norm"] is None
    assert message_limits(ident, mech, "update")["clip_norm"] == 1.0
    limits = message_limits(proj, None, "latent")
    assert limits["clip_norm"] is None and limits["latent_dim"] == proj.latent_dim
    assert limits["max_bytes"] == proj.bytes_per_upload


# -- in the simulator ---------------------------------------------------------------------
BASE = ["rounds=2", "clients=3", "local.lr=0.01", "eval.questions=4", "eval.every=0"]


def simulate(tmp_path, name, method, monkeypatch, *, corrupt=False, drop=False):
    """One tiny run. ``corrupt``: the 2nd message of round 1 (client 1) becomes NaN after it
    was drawn (same RNG use). ``drop``: no corruption, but client 1's message of round 1 is
    removed from the list handed to ``release`` (the aggregation), i.e. simply absent."""
    real_make, real_release = runtime_mod.make_reply, orch_mod.release
    calls = {"make": 0, "aggregate": 0}

    def make_reply(*args, **kwargs):
        message, bit = real_make(*args, **kwargs)
        calls["make"] += 1
        if corrupt and calls["make"] == 2:
            return torch.full_like(message, math.nan), bit
        return message, bit

    def release(messages, **kwargs):
        calls["aggregate"] += 1
        if drop and calls["aggregate"] == 1:
            messages = [m for i, m in enumerate(messages) if i != 1]
        return real_release(messages, **kwargs)

    monkeypatch.setattr(runtime_mod, "make_reply", make_reply)
    monkeypatch.setattr(orch_mod, "release", release)
    # Reproducible noise: the three runs are compared bit for bit.
    overrides = [*BASE, f"method={method}", "privacy.reproducible_noise=true"]
    cfg = load_config(preset="smoke", overrides=overrides)
    sim = Simulator(
        cfg,
        tmp_path / name,
        model_and_tokenizer=(make_tiny_llama(), make_tiny_tokenizer()),
        progress=False,
    )
    sim.run()
    return sim


@pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")
@pytest.mark.parametrize("method", ["dp-random-projection"])
def test_a_corrupted_message_is_left_out_and_still_charged(tmp_path, monkeypatch, method):
    clean = simulate(tmp_path, "clean", method, monkeypatch)
    bad = simulate(tmp_path, "bad", method, monkeypatch, corrupt=True)
    absent = simulate(tmp_path, "absent", method, monkeypatch, drop=True)

    rounds = schema.rounds(bad.rows)
    assert rounds[0]["participants"] == [0, 1, 2]
    assert rounds[0]["rejected"] == {"1": "non-finite"}
    assert rounds[1]["rejected"] == {}
    assert all(r["rejected"] == {} for r in clean.rows if r["kind"] == "round")

    def adapter(sim):
        return load_file(sim.run_dir / "adapter" / "adapter_model.safetensors")

    a, b, c = adapter(bad), adapter(absent), adapter(clean)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # client 1 did matter
    # Rejected messages were released: the ledger charges them as if aggregated.
    assert bad.ledger == clean.ledger
    assert bad.ledger.participation() == {0: 2, 1: 2, 2: 2}
