"""The simulator on a tiny random model: every method, resume, budget stop, outputs."""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from drencoder.federated import seeds
from drencoder.federated.client import runtime as runtime_mod
from drencoder.reporting import schema
from helpers import make_tiny_llama, metrics_rows, resume_tiny_simulator, tiny_simulator

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

BASE = ["rounds=3", "clients=3", "local.lr=0.01", "eval.questions=4", "eval.every=0"]


def make(tmp_path, *overrides, name="run", hook=None):
    return tiny_simulator(tmp_path / name, [*BASE, *overrides], hook=hook)


@pytest.mark.parametrize(
    "method",
    ["fedavg-lora", "dp-fedavg-lora", "ffa-lora-dp", "dp-random-projection", "dr-encoder"],
)
def test_every_method_runs_and_writes_the_run_directory(tmp_path, method):
    sim = make(tmp_path, f"method={method}")
    summary = sim.run()
    run = sim.run_dir
    for name in (
        "config.toml",
        "metrics.jsonl",
        "report.md",
        "summary.json",
        "utility.png",
        "epsilon.png",
        "bytes.png",
        "adapter/adapter_model.safetensors",
    ):
        assert (run / name).exists(), name
    metrics = metrics_rows(run)
    rounds = schema.rounds(metrics)
    assert [r["round"] for r in rounds] == [1, 2, 3]
    for r in rounds:
        assert {"epsilon", "bytes_up", "bytes_down", "seconds"} <= set(r)
        # Training loss is raw client data: only in the simulation-only section.
        assert "loss" not in r and "train_loss" in r["not_covered_by_epsilon"]
    evals = schema.evals(metrics)
    assert [e["round"] for e in evals] == [0, 3]
    if method == "fedavg-lora":
        assert summary["privacy"] == {"private": False}
        assert rounds[-1]["epsilon"] is None
    else:
        eps = rounds[-1]["epsilon"]
        assert set(eps) == {"gdp", "rdp", "pld"}
        assert eps["pld"] <= 8.0  # calibrated to the default target
    assert (method == "dr-encoder") == any(r["kind"] == "stage1" for r in metrics)
    dim = sim.layout.dim
    if method in ("dp-random-projection", "dr-encoder"):
        assert summary["communication"]["latent_dim"] < dim
    assert "## Privacy" in (run / "report.md").read_text()


def test_ffa_lora_sends_only_b_and_keeps_a_frozen(tmp_path):
    sim = make(tmp_path, "method=ffa-lora-dp")
    before = dict(sim.global_state)
    sim.run()
    assert all(".lora_B." in k for k in sim.layout.keys)
    for k, v in sim.global_state.items():
        if ".lora_A." in k:
            assert torch.equal(v, before[k])


def test_adapter_loads_with_peft(tmp_path):
    sim = make(tmp_path, "method=dp-fedavg-lora")
    sim.run()
    loaded = PeftModel.from_pretrained(make_tiny_llama(), sim.run_dir / "adapter")
    state = {k.replace(".default", ""): v for k, v in loaded.state_dict().items() if "lora_" in k}
    for key, value in sim.global_state.items():
        assert torch.equal(state[key], value)


class Killed(Exception):
    pass


@pytest.mark.parametrize("method", ["dr-encoder", "dp-random-projection"])
def test_resume_after_a_kill_mid_round_is_bit_identical(tmp_path, method):
    # Reproducible noise so that two separate runs can be compared bit for bit; a fixed
    # sigma and no budget, since the interrupted attempt's extra charge would stop the
    # resumed run early under a target.
    opts = (
        f"method={method}",
        "privacy.reproducible_noise=true",
        "privacy.noise_multiplier=3.0",
        "target_epsilon=none",
    )
    full = make(tmp_path, *opts, name="full")
    full.run()

    def kill(event, **info):
        if event == "client_done" and info["round"] == 2:
            raise Killed

    broken = make(tmp_path, *opts, name="broken", hook=kill)
    with pytest.raises(Killed):
        broken.run()
    resumed = resume_tiny_simulator(tmp_path / "broken")
    assert resumed.round == 1
    resumed.run()
    a = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    b = load_file(tmp_path / "broken" / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Round 2 was charged when its tasks went out, so the interrupted attempt stays in the
    # ledger beside the re-run: one extra entry, never fewer.
    extra = [e for e in resumed.ledger.entries if "interrupted" in e.label]
    assert [(e.kind, e.round) for e in extra] == [("round", 2)]
    kept = [e for e in resumed.ledger.entries if "interrupted" not in e.label]
    assert [e.to_json() for e in kept] == [e.to_json() for e in full.ledger.entries]
    assert resumed.ledger.epsilon("pld") > full.ledger.epsilon("pld")
    assert not (tmp_path / "broken" / "checkpoints" / "pending-charges.jsonl").exists()

    def strip(rs):
        return [{k: v for k, v in r.items() if "seconds" not in k and k != "epsilon"} for r in rs]

    assert strip(metrics_rows(tmp_path / "broken")) == strip(metrics_rows(tmp_path / "full"))


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    sim = make(tmp_path, "method=dp-fedavg-lora")
    sim.run()
    before = (sim.run_dir / "metrics.jsonl").read_text()
    again = resume_tiny_simulator(sim.run_dir)
    again.run()
    assert (sim.run_dir / "metrics.jsonl").read_text() == before


def test_budget_stop_before_a_round_that_would_exceed(tmp_path):
    # sigma fixed at 4 with local noise: replace-one moves a message by 2C, so each round
    # is a Gaussian of noise multiplier 2 (mu = 1/2): eps(pld) after 1, 2, 3 rounds is about
    # 1.8, 2.7, 3.4 at delta=1e-5, so a target of 3 allows exactly two rounds.
    sim = make(
        tmp_path, "method=dp-fedavg-lora", "privacy.noise_multiplier=4.0", "target_epsilon=3.0"
    )
    summary = sim.run()
    assert summary["rounds_done"] == 2
    assert "Stopped before round 3" in summary["stop_reason"]
    assert sim.ledger.epsilon("pld") <= 3.0
    assert len([e for e in sim.ledger.entries if e.kind == "round"]) == 2


def test_local_noise_charges_the_sampled_clients_only(tmp_path):
    sim = make(
        tmp_path,
        "method=dp-fedavg-lora",
        "sampling.rate=0.5",
        "clients=4",
        "privacy.noise_multiplier=3.0",
        "target_epsilon=none",
    )
    sim.run()
    sampled = {}
    for r in (r for r in sim.rows if r["kind"] == "round"):
        for c in r["sampled"]:
            sampled[c] = sampled.get(c, 0) + 1
    assert sim.ledger.participation() == sampled


def test_clients_share_one_base_model(tmp_path, monkeypatch):
    seen = []
    real = runtime_mod.local_update

    def spy(model, *args, **kwargs):
        seen.append(model)
        return real(model, *args, **kwargs)

    monkeypatch.setattr(runtime_mod, "local_update", spy)
    sim = make(tmp_path, "method=dp-fedavg-lora")
    sim.run()
    assert len(seen) == 3 * 3
    assert all(m is sim.model for m in seen)


def test_existing_run_directory_is_refused(tmp_path):
    make(tmp_path, "method=fedavg-lora").run()
    with pytest.raises(Exception, match="already holds a run"):
        make(tmp_path, "method=fedavg-lora").run()


@pytest.mark.parametrize(
    "options",
    [
        ("method=dp-fedavg-lora", "privacy.placement=central", "sampling.rate=0.5", "clients=4"),
        ("method=dp-random-projection", "privacy.clip_point=update"),
        ("method=dr-encoder", "privacy.aggregation=decode_then_mean"),
        ("method=dp-fedavg-lora", "sampling.scheme=fixed", "sampling.per_round=2"),
        ("method=ffa-lora-dp", "data.task=mmlu", "data.partition=by_subject", "eval.n_shot=1"),
        ("method=dp-fedavg-lora", "data.partition=dirichlet", "data.dirichlet_alpha=5.0"),
        ("method=dr-encoder", "codec.architecture=conv", "codec.normalization=block"),
        ("method=dr-encoder", "stage1.pooling=mixture", "stage1.epochs=2"),
        ("method=dp-fedavg-lora", "local.optimizer=sgd", "server.lr=0.5", "data.loss_on=full"),
    ],
    ids=",".join,
)
def test_options_run_end_to_end(tmp_path, options):
    sim = make(tmp_path, "rounds=2", *options)
    summary = sim.run()
    assert summary["rounds_done"] == 2
    cfg = sim.config
    privacy = summary["privacy"]
    assert privacy["placement"] == cfg.privacy.placement.value
    assert privacy["clip_point"] == cfg.privacy.clip_point.value
    assert privacy["aggregation"] == cfg.privacy.aggregation.value
    assert privacy["epsilon"]["pld"] <= cfg.target_epsilon
    for entry in sim.ledger.entries:
        if entry.kind == "round":
            assert cfg.privacy.placement.value in entry.label
    if cfg.privacy.placement.value == "central":
        # amplified event charged to every client
        assert all(e.clients is None for e in sim.ledger.entries)


def test_dp_streams_come_from_os_entropy_unless_reproducible_and_resume_continues(tmp_path):
    from drencoder.federated.server.checkpoint import load_checkpoint

    def states(name, *extra):
        sim = make(tmp_path, "method=dp-fedavg-lora", "rounds=1", *extra, name=name)
        return sim, {k: g.get_state() for k, g in sim.generators.items()}

    default, default_a = states("default-a")
    _, default_b = states("default-b")
    _, repro_a = states("repro-a", "privacy.reproducible_noise=true")
    _, repro_b = states("repro-b", "privacy.reproducible_noise=true")
    assert all(torch.equal(repro_a[k], repro_b[k]) for k in repro_a)  # reproducible
    for name in seeds.GENERATORS:
        same = torch.equal(default_a[name], default_b[name])
        assert same == (name not in seeds.DP_STREAMS), name
        assert same == torch.equal(default_a[name], repro_a[name]), name
    default.run()
    resumed = resume_tiny_simulator(default.run_dir)
    saved = load_checkpoint(default.run_dir).rng_states
    assert all(torch.equal(resumed.generators[k].get_state(), saved[k]) for k in saved)
    assert torch.equal(saved["noise"], default.generators["noise"].get_state())
