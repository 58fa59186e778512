"""The guarantees hold against the parties the docs name, on a tiny random model.

- Noise nobody but its owner can regenerate: the subtraction attack (rebuild the noise
  stream from the config's seed, subtract it from two consecutive global adapters) recovers
  the other clients' exact sum only with the research opt-in ``reproducible_noise``.
- Charges are written ahead and never refunded: a run killed between sending a round and
  checkpointing it keeps that charge after resume, and the resumed run continues exactly.
- Every epsilon is stated with its neighbouring relation, and equals dp-accounting's own
  answer under that relation.
- Nothing computed from a client's raw data reaches the shareable outputs unmarked.
"""

from __future__ import annotations

import shutil

import dp_accounting
import pytest
import torch
from dp_accounting.pld import pld_privacy_accountant
from safetensors.torch import load_file

from drencoder.config import load_config
from drencoder.federated.client import runtime as runtime_mod
from drencoder.federated.seeds import DP_STREAMS, derive_seed
from drencoder.federated.server.charges import read_pending
from drencoder.federated.server.checkpoint import load_checkpoint
from drencoder.reporting import schema
from helpers import resume_tiny_simulator, tiny_simulator

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

BASE = ["rounds=2", "clients=3", "local.lr=0.01", "eval.questions=4", "eval.every=0"]


def make(tmp_path, *overrides, name="run", hook=None):
    return tiny_simulator(tmp_path / name, [*BASE, *overrides], hook=hook)


def resume(run_dir):
    return resume_tiny_simulator(run_dir)


class Killed(Exception):
    pass


# -- 1. the subtraction attack -----------------------------------------------------------
def subtraction_attack(tmp_path, *extra):
    """Run central-noise DP-FedAvg, then attack it as a client who knows the config.

    Returns ``(recovered, truth)``: the attacker's estimate of round 2's sum of clipped
    updates and the true sum the aggregator formed.
    """
    sim = make(
        tmp_path,
        "method=dp-fedavg-lora",
        "privacy.placement=central",
        "privacy.noise_multiplier=1.0",
        "target_epsilon=none",
        *extra,
    )
    sums = {}
    train = sim.clients.train

    def spy(plan, **kwargs):
        replies = train(plan, **kwargs)
        sums[plan.round] = torch.stack([r.message for r in replies.values()]).sum(0)
        return replies

    sim.clients.train = spy
    sim.run()

    # What the attacker has: config.toml (the seed) and consecutive global adapters.
    cfg = load_config(sim.run_dir / "config.toml")
    layout = sim.layout
    ckpt = sim.run_dir / "checkpoints"
    before, after = (load_file(ckpt / f"round-000{t}" / "adapter.safetensors") for t in (1, 2))
    step = layout.flatten(layout.restrict({k: after[k] - before[k] for k in after}))
    noised_sum = step * (cfg.sampling.rate * cfg.clients) / cfg.server.lr
    stream = torch.Generator().manual_seed(derive_seed(cfg.seed, "noise"))
    std = cfg.privacy.noise_multiplier * cfg.privacy.clip_norm
    regenerated = [torch.randn(layout.dim, generator=stream) * std for _ in (1, 2)]
    return noised_sum - regenerated[1], sums[2]


def test_the_subtraction_attack_recovers_nothing_by_default(tmp_path):
    recovered, truth = subtraction_attack(tmp_path)
    error = (recovered - truth).norm()
    # What is left is the real noise (norm about sigma*C*sqrt(d)), far above the sum.
    assert error > 10 * truth.norm()
    assert float(torch.nn.functional.cosine_similarity(recovered, truth, dim=0)) < 0.2


def test_the_subtraction_attack_recovers_the_sum_with_reproducible_noise(tmp_path):
    """Proves the attack is real: the opt-in makes the test above fail."""
    recovered, truth = subtraction_attack(tmp_path, "privacy.reproducible_noise=true")
    assert truth.norm() > 0.1
    assert (recovered - truth).norm() < 1e-3 * truth.norm() + 1e-4
    assert float(torch.nn.functional.cosine_similarity(recovered, truth, dim=0)) > 0.9999


# -- 2. write-ahead charges and resume --------------------------------------------------
FIXED = ("method=dp-fedavg-lora", "privacy.noise_multiplier=3.0", "target_epsilon=none")
"""A fixed sigma and no budget: with a target, the extra charge of an interrupted round
would (rightly) stop the resumed run before it re-runs that round."""


def adapter(run_dir):
    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


def test_a_kill_between_sending_and_checkpoint_keeps_the_charge(tmp_path):
    def kill(event, **info):
        if event == "client_done" and info["round"] == 2:
            raise Killed

    sim = make(tmp_path, *FIXED, hook=kill)
    with pytest.raises(Killed):
        sim.run()
    pending = read_pending(sim.run_dir, after=0, relation="replace-one")
    assert [(e.kind, e.round) for e in pending] == [("round", 2)]  # persisted before sending
    saved = load_checkpoint(sim.run_dir).rng_states
    resumed = resume(sim.run_dir)
    assert resumed.round == 1
    # The re-run draws fresh noise and participation; the other streams continue.
    for name, state in saved.items():
        assert torch.equal(resumed.generators[name].get_state(), state) == (
            name not in DP_STREAMS
        ), name
    resumed.run()
    rounds = [(e.round, "interrupted" in e.label) for e in resumed.ledger.entries]
    assert rounds == [(1, False), (2, True), (2, False)]  # the lost attempt stays charged
    assert not (sim.run_dir / "checkpoints" / "pending-charges.jsonl").exists()


def test_a_resume_with_nothing_in_flight_continues_exactly(tmp_path):
    def stop_after_checkpoint(event, **info):
        if event == "round_done" and info["round"] == 1:  # checkpointed, nothing sent
            raise Killed

    sim = make(tmp_path, *FIXED, hook=stop_after_checkpoint)
    with pytest.raises(Killed):
        sim.run()
    assert read_pending(sim.run_dir, after=0, relation="replace-one") == []
    shutil.copytree(sim.run_dir, tmp_path / "copy")
    first, second = resume(sim.run_dir), resume(tmp_path / "copy")
    for r in (first, second):
        r.run()
    a, b = adapter(sim.run_dir), adapter(tmp_path / "copy")
    assert all(torch.equal(a[k], b[k]) for k in a)  # a function of the checkpoint alone
    assert first.ledger == second.ledger and len(first.ledger) == 2  # no extra charge


def test_a_re_run_round_does_not_replay_its_noise(tmp_path):
    """The replay attack: central noise, a round broadcast before any checkpoint, then a
    crash. If the re-run reused the noise, the difference of the two broadcast adapters
    would be the difference of the two noise-free sums, here one client's exact update."""

    def recovered(reproducible):
        name = f"run-{reproducible}"
        opts = [
            "rounds=3",
            "method=dp-fedavg-lora",
            "privacy.placement=central",
            "privacy.noise_multiplier=1.0",
            "target_epsilon=none",
            "checkpoint.every=2",
            f"privacy.reproducible_noise={str(reproducible).lower()}",
        ]

        def first_attempt(event, **info):
            if event == "client_work" and info["round"] == 1 and info["client"] == 0:
                raise RuntimeError("client 0 drops in the first attempt")
            if event == "client_done" and info["round"] == 2:
                raise Killed

        seen = [{}, {}]
        messages = {}

        def spy(sim, attempt):
            train = sim.clients.train

            def wrapped(plan, global_state, **kwargs):
                seen[attempt][plan.round] = dict(global_state)
                replies = train(plan, global_state=global_state, **kwargs)
                if attempt == 1:
                    messages[plan.round] = {c: r.message for c, r in replies.items()}
                return replies

            sim.clients.train = wrapped

        sim = make(tmp_path, *opts, name=name, hook=first_attempt)
        spy(sim, 0)
        with pytest.warns(UserWarning), pytest.raises(Killed):
            sim.run()
        again = resume(tmp_path / name)
        spy(again, 1)
        again.run()
        layout, cfg = again.layout, again.config
        a, b = (layout.flatten(layout.restrict(s[2])) for s in seen)
        difference = (b - a) * cfg.clients / cfg.server.lr
        return difference, messages[1][0]

    difference, truth = recovered(reproducible=True)  # research mode replays: proof of attack
    assert (difference - truth).norm() < 1e-3 * truth.norm() + 1e-4
    difference, truth = recovered(reproducible=False)
    assert (difference - truth).norm() > 10 * truth.norm()


def test_the_extra_charge_of_an_interrupted_round_counts_towards_the_budget(tmp_path):
    def kill(event, **info):
        if event == "client_done" and info["round"] == 2:
            raise Killed

    sim = make(tmp_path, "method=dp-fedavg-lora", hook=kill)  # sigma calibrated for 2 rounds
    with pytest.raises(Killed):
        sim.run()
    resumed = resume(sim.run_dir)
    summary = resumed.run()
    assert "Stopped before round 2" in summary["stop_reason"]
    assert resumed.ledger.epsilon("pld") <= 8.0


def test_a_start_killed_during_stage_1_keeps_the_statistics_charge(tmp_path, monkeypatch):
    real = runtime_mod.ClientRuntime.release_statistics
    calls = []

    def dies_on_the_second_client(self, task, **kwargs):
        calls.append(task.client)
        if len(calls) == 2:
            raise Killed
        return real(self, task, **kwargs)

    monkeypatch.setattr(runtime_mod.ClientRuntime, "release_statistics", dies_on_the_second_client)
    opts = ("method=dr-encoder", "rounds=1", "privacy.noise_multiplier=3.0", "target_epsilon=none")
    with pytest.raises(Killed):
        make(tmp_path, *opts).run()
    monkeypatch.setattr(runtime_mod.ClientRuntime, "release_statistics", real)
    again = make(tmp_path, *opts)  # same --out, started again
    again.run()
    kinds = [(e.kind, "interrupted" in e.label) for e in again.ledger.entries]
    assert kinds == [("statistics", True), ("statistics", False), ("round", False)]


# -- 3. the relation ------------------------------------------------------------------------
def pld(event, relation):
    acc = pld_privacy_accountant.PLDAccountant(
        neighboring_relation=relation, value_discretization_interval=1e-4
    )
    acc.compose(event)
    return acc.get_epsilon(1e-5)


def test_local_noise_is_charged_under_replace_one(tmp_path):
    sim = make(tmp_path, "method=dp-fedavg-lora", "privacy.noise_multiplier=2.0")
    summary = sim.run()
    expected = pld(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(2.0), 2),
        dp_accounting.NeighboringRelation.REPLACE_ONE,
    )
    assert summary["privacy"]["relation"] == "replace-one"
    assert summary["privacy"]["epsilon"]["pld"] == pytest.approx(expected, rel=1e-6)
    rounds = schema.rounds(sim.rows)
    assert all(r["relation"] == "replace-one" for r in rounds)
    evals = schema.evals(sim.rows)
    assert evals[-1]["relation"] == "replace-one"


def test_central_poisson_noise_is_charged_under_add_remove(tmp_path):
    sim = make(
        tmp_path,
        "method=dp-fedavg-lora",
        "privacy.placement=central",
        "sampling.rate=0.5",
        "clients=4",
        "privacy.noise_multiplier=1.5",
    )
    summary = sim.run()
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.5)), 2
    )
    expected = pld(event, dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    assert summary["privacy"]["relation"] == "add-remove"
    assert summary["privacy"]["epsilon"]["pld"] == pytest.approx(expected, rel=1e-6)


def test_a_forced_weaker_relation_is_warned_about_and_reported(tmp_path):
    from drencoder.errors import PrivacyWarning

    with pytest.warns(PrivacyWarning, match="replace-one"):
        sim = make(tmp_path, "method=dp-fedavg-lora", "privacy.relation=add-remove")
    summary = sim.run()
    assert summary["privacy"]["relation"] == "add-remove"
    assert "replace-one" in summary["privacy"]["relation_warning"]
    assert "**Warning.**" in (sim.run_dir / "report.md").read_text()


# -- 4. nothing from raw data in shareable outputs -------------------------------------------
def test_client_failures_are_fixed_codes_in_every_output(tmp_path):
    secret = "patient 4711 has diabetes"

    def fail(event, **info):
        if event == "client_work" and info["client"] == 1 and info["round"] == 1:
            raise ValueError(secret)

    sim = make(tmp_path, "method=dp-fedavg-lora", hook=fail)
    with pytest.warns(UserWarning):
        sim.run()
    rounds = schema.rounds(sim.rows)
    assert rounds[0]["failed"] == {"1": "client-error"}
    for name in ("metrics.jsonl", "summary.json", "report.md"):
        assert secret not in (sim.run_dir / name).read_text(), name


def test_raw_data_diagnostics_are_marked_not_covered(tmp_path):
    sim = make(tmp_path, "method=dp-random-projection")
    summary = sim.run()
    for r in (r for r in sim.rows if r["kind"] == "round"):
        assert {"loss", "update_norm", "reconstruction"}.isdisjoint(r)
        assert {"train_loss", "update_norm", "reconstruction"} <= set(r["not_covered_by_epsilon"])
    assert "reconstruction" not in summary["communication"]
    assert "reconstruction" in summary["not_covered_by_epsilon"]
    assert any("not_covered_by_epsilon" in x for x in summary["privacy"]["not_covered"])
    assert "Not covered by epsilon" in (sim.run_dir / "report.md").read_text()


def test_a_resume_under_another_relation_is_refused(tmp_path):
    from drencoder.errors import CheckpointError, PrivacyWarning

    sim = make(tmp_path, *FIXED)
    sim.run()
    config = sim.run_dir / "config.toml"
    config.write_text(config.read_text().replace('relation = "auto"', 'relation = "add-remove"'))
    with (
        pytest.warns(PrivacyWarning),
        pytest.raises(CheckpointError, match="accounted under the replace-one relation"),
    ):
        resume(sim.run_dir)


def test_an_un_noised_statistics_release_is_reported_as_no_guarantee(tmp_path):
    sim = make(
        tmp_path,
        "method=dr-encoder",
        "stage1.release_noise=false",
        "privacy.noise_multiplier=3.0",
        "target_epsilon=none",
    )
    summary = sim.run()
    assert summary["privacy"]["epsilon"]["pld"] == float("inf")
    last_eval = schema.evals(sim.rows)[-1]
    assert last_eval["epsilon"] is None and last_eval["relation"] == "replace-one"
