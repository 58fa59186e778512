"""DR-Encoder's structured codec options (codec.basis) on a tiny random model: what each
charges, that the history subspace is refreshed for free, resume, and config errors."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from drencoder.codecs import SubspaceCodec, latent_dim_for
from drencoder.config import load_config
from drencoder.errors import ConfigError
from drencoder.reporting import schema
from helpers import metrics_rows, resume_tiny_simulator, tiny_simulator

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

BASE = ["rounds=3", "clients=3", "local.lr=0.01", "eval.questions=4", "eval.every=0"]
FIXED = ["privacy.noise_multiplier=3.0", "target_epsilon=none"]


def make(tmp_path, *overrides, name="run", hook=None):
    return tiny_simulator(tmp_path / name, [*BASE, *overrides], hook=hook)


@pytest.mark.parametrize("basis", ["random", "history", "proxy", "sketch", "energy"])
def test_every_basis_runs_at_the_latent_size_of_the_ratio(tmp_path, basis):
    extra = ["codec.proxy_examples=8"] if basis == "proxy" else []
    sim = make(tmp_path, f"codec.basis={basis}", *extra)
    summary = sim.run()
    assert isinstance(sim.codec, SubspaceCodec)
    k = latent_dim_for(sim.layout.dim, compression_ratio=sim.config.codec.compression_ratio)
    assert k - 4 < sim.codec.latent_dim <= k  # whole basis vectors of r = 4 numbers each
    assert summary["privacy"]["epsilon"]["pld"] <= 8.0  # calibrated with the stage-1 charge
    # What stage 1 charged: the statistics (energy), the sketch, or nothing.
    one_off = [e.kind for e in sim.ledger.entries if e.kind != "round"]
    assert one_off == {"energy": ["statistics"], "sketch": ["sketch"]}.get(basis, [])
    assert ("statistics" in summary["privacy"]) == (basis == "energy")
    metrics = metrics_rows(sim.run_dir)
    rounds = schema.rounds(metrics)
    assert all(r["bytes_up"] % (4 * sim.codec.latent_dim) == 0 for r in rounds)
    refreshed = [r["codec"]["refreshed"] for r in rounds if "codec" in r]
    assert refreshed == (
        ["codec-0001", "codec-0002", "codec-0003"] if basis in ("history", "proxy") else []
    )


def _charges(sim):
    return [(e.kind, e.round) for e in sim.ledger.entries]


def test_history_costs_nothing_and_the_sketch_is_charged(tmp_path):
    runs = {
        b: make(tmp_path, f"codec.basis={b}", *FIXED, name=b)
        for b in ("random", "history", "sketch")
    }
    for sim in runs.values():
        sim.run()
    eps = {b: sim.ledger.epsilons()["pld"] for b, sim in runs.items()}
    # The refreshed subspace is post-processing: the same ledger, the same epsilon.
    assert _charges(runs["history"]) == _charges(runs["random"])
    assert eps["history"] == eps["random"]
    # The sketch is one more Gaussian release, charged before round 1: epsilon rises.
    assert _charges(runs["sketch"]) == [("sketch", None), *_charges(runs["random"])]
    assert eps["sketch"] > eps["random"] * 1.05
    sketch_row = next(r for r in metrics_rows(runs["sketch"].run_dir) if r["kind"] == "sketch")
    assert sketch_row["clients"] == 3 and sketch_row["release"]["noise_multiplier"] == 5.0


def test_the_history_subspace_contains_the_decoded_aggregates(tmp_path):
    sim = make(tmp_path, "codec.basis=history", "codec.history_rounds=2", "rounds=5", *FIXED)
    sim.run()
    assert len(sim.codec_history) == 2
    # Here a matrix gets at most one basis vector (k = 56 numbers = 7 vectors of r = 8
    # over 16 matrices; a_b = 1 is all learned: ceil(1/2)), so the subspace is the top
    # direction of each matrix's aggregates, which (rank one per matrix here, and zero in
    # the matrices without a vector) lie in it up to float32 rounding.
    assert max(sim.codec.dims) == 1
    for agg in [sim.codec_cumulative, *sim.codec_history]:
        back = sim.codec.decode(sim.codec.encode(agg))
        assert float((back - agg).norm() / agg.norm()) < 1e-4
    # Only the codecs the kept checkpoints (rounds 4 and 5) named when the newest was
    # saved stay on disk.
    kept = sorted(p.name for p in (sim.run_dir / "checkpoints").glob("codec-*"))
    assert kept == ["codec-0003", "codec-0004", "codec-0005"]


class Killed(Exception):
    pass


def test_history_resume_is_bit_identical(tmp_path):
    opts = ("codec.basis=history", "privacy.reproducible_noise=true", *FIXED)
    full = make(tmp_path, *opts, name="full")
    full.run()

    def kill(event, **info):
        if event == "client_done" and info["round"] == 2:
            raise Killed

    broken = make(tmp_path, *opts, name="broken", hook=kill)
    with pytest.raises(Killed):
        broken.run()
    resumed = resume_tiny_simulator(tmp_path / "broken")
    assert resumed.round == 1 and resumed.codec_dir == "codec-0001"
    resumed.run()
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "broken" / "adapter" / "adapter_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["method=dp-random-projection", "codec.basis=history"],
            "codec option of method 'dr-encoder'",
        ),
        (["codec.basis=proxy", "codec.history_rounds=2"], "applies to codec.basis = history"),
        (
            ["codec.basis=sketch", "codec.sketch_width=9"],
            r"sketch_width must be <= lora.rank \(8\)",
        ),
        (["codec.basis=random", "codec.sketch_clip_norm=2"], "applies to codec.basis = sketch"),
        (["codec.basis=hist"], "codec.basis must be one of .autoencoder., .random."),
        (["codec.basis=history", "privacy.unit=record"], "not wired for privacy.unit = record"),
    ],
)
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_sigma_is_calibrated_with_each_basis_stage1_charge(tmp_path):
    sigma = {}
    for basis in ("random", "history", "proxy", "sketch", "energy", "autoencoder"):
        sim = make(tmp_path, f"codec.basis={basis}", name=basis)
        sim._plan_noise()  # calibration only: nothing is trained or released
        sigma[basis] = sim.noise_multiplier
    # Free options share the plain calibration; a stage-1 release leaves less budget.
    assert sigma["random"] == sigma["history"] == sigma["proxy"]
    assert sigma["sketch"] > sigma["random"] and sigma["energy"] > sigma["random"]
    assert sigma["energy"] == sigma["autoencoder"]  # the same statistics release
