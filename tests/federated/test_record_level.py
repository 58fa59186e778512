"""Record-level DP (privacy.unit = record) in the simulator: accounting per client, the
budget stop per client, the latent option, and the config's refusals."""

from __future__ import annotations

import dp_accounting
import pytest
import torch

from drencoder.config import load_config
from drencoder.errors import ConfigError
from drencoder.federated.record import RecordDpSgd, planned_event, round_charges
from drencoder.federated.server import budget
from drencoder.reporting import schema
from helpers import metrics_rows, tiny_simulator

pytestmark = pytest.mark.filterwarnings("ignore::drencoder.accounting.GdpApproximationWarning")

BASE = [
    "rounds=2",
    "clients=3",
    "local.lr=0.05",
    "local.optimizer=sgd",
    "eval.questions=4",
    "eval.every=0",
    "privacy.unit=record",
    "data.batch_size=2",
]


def pld_epsilon(event, delta=1e-5):
    acc = dp_accounting.pld.PLDAccountant()
    acc.compose(event)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize(
    "method,space",
    [
        ("dp-fedavg-lora", "lora"),
        ("ffa-lora-dp", "lora"),
        ("dp-random-projection", "latent"),
        ("dr-encoder", "latent"),
    ],
)
def test_record_level_runs_charge_each_client_its_own_dp_sgd_steps(tmp_path, method, space):
    sim = tiny_simulator(
        tmp_path / "run",
        [
            *BASE,
            f"method={method}",
            f"privacy.record_space={space}",
            "privacy.noise_multiplier=1.5",
        ],
    )
    summary = sim.run()
    n = sim.example_counts  # smoke preset: 8 examples per client, batch 2: q = 0.25
    assert n == [8, 8, 8]
    p = summary["privacy"]
    assert p["unit"] == "record" and p["relation"] == "add-remove"
    assert p["placement"] is None and p["record"]["space"] == space
    assert p["record"]["sample_rate_per_client"] == [0.25, 0.25, 0.25]
    # Each client ran 2 rounds x 1 local step (smoke preset) of PoissonSampled(0.25, G(1.5)):
    # its epsilon straight from dp-accounting equals the run's worst-client epsilon.
    steps = 2 * 1
    want = pld_epsilon(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.5)), steps
        )
    )
    stats = method == "dr-encoder"
    if not stats:
        assert p["record"]["epsilon_worst_client"] == pytest.approx(want, rel=1e-6)
        assert p["record"]["epsilon_per_client"] == [pytest.approx(want, rel=1e-6)] * 3
    else:  # plus the stage-1 release, charged to every client
        assert p["record"]["epsilon_worst_client"] > want
    assert p["record"]["epsilon_worst_client"] == p["epsilon"]["pld"]
    metric_rows = schema.rounds(metrics_rows(sim.run_dir))
    assert all(r["unit"] == "record" for r in metric_rows)
    assert p["charges"]["round"] == 2  # one entry per round (equal example counts)


def test_clients_with_fewer_examples_pay_more_and_calibration_plans_for_them():
    config = load_config(
        preset="smoke",
        overrides=[*BASE, "method=dp-fedavg-lora", "target_epsilon=4", "rounds=3"],
    )
    record = RecordDpSgd.from_config(config, 1.0)
    charges = round_charges(record, [0, 1, 2], [20, 5, 20])
    assert [c for _, c in charges] == [[1], [0, 2]]
    small, big = charges[0][0], charges[1][0]
    assert pld_epsilon(small) > pld_epsilon(big)
    sigma = budget.calibrate_noise(config, None, examples=[20, 5, 20])
    # Worst client: 5 examples, q = 2/5, 3 rounds x 1 step; the calibrated sigma meets the
    # target and does not overshoot it.
    eps = pld_epsilon(planned_event(sigma, config, [20, 5, 20], None))
    assert eps <= 4.0 and eps > 3.9
    worst = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.4, dp_accounting.GaussianDpEvent(sigma)), 3
    )
    assert pld_epsilon(worst) == pytest.approx(eps, rel=1e-9)


def test_budget_stop_per_client_then_for_the_run(tmp_path):
    # sigma 1.5, q = 0.25, one step a round: epsilon after 2 steps 1.675, after 3 1.925
    # (PLD, delta 1e-5), so a target of 1.8 admits 2 rounds per client; the third round
    # has nobody left.
    def steps(k):
        return pld_epsilon(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.5)), k
            )
        )

    assert steps(2) < 1.8 < steps(3)
    sim = tiny_simulator(
        tmp_path / "run",
        [
            *BASE,
            "method=dp-fedavg-lora",
            "privacy.noise_multiplier=1.5",
            "target_epsilon=1.8",
            "rounds=5",
        ],
    )
    summary = sim.run()
    assert summary["rounds_done"] == 2
    assert "record-level budget" in summary["stop_reason"]
    assert summary["privacy"]["record"]["epsilon_worst_client"] == pytest.approx(steps(2))


def test_a_client_out_of_budget_stops_taking_part_while_others_go_on(tmp_path):
    sim = tiny_simulator(
        tmp_path / "run",
        [*BASE, "method=dp-fedavg-lora", "privacy.noise_multiplier=1.5", "target_epsilon=1.8"],
    )
    sim.start()
    # Client 0 already spent two steps (epsilon 1.675); a third would take it to 1.925.
    spent = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.5)), 2
    )
    sim.ledger.record(spent, kind="round", round=0, clients=[0], label="earlier")
    plan = sim.plan_round(1)
    assert plan.sampled == [1, 2] and plan.exhausted == (0,)


def test_the_noise_of_a_record_level_client_comes_from_its_private_generator(tmp_path):
    def update(noise_seed, name):
        sim = tiny_simulator(
            tmp_path / name,
            [*BASE, "method=dp-fedavg-lora", "privacy.noise_multiplier=1.0"],
        )
        sim.start()
        sim.generators["noise"].manual_seed(noise_seed)
        plan = sim.plan_round(1)
        replies = sim.clients.train(
            plan, global_state=sim.global_state, codec=sim.codec, mechanism=sim.mechanism
        )
        return replies[plan.sampled[0]].message

    first = update(1, "a")
    assert torch.equal(first, update(1, "b"))
    assert not torch.equal(first, update(2, "c"))


@pytest.mark.parametrize(
    "overrides,match",
    [
        (["method=fedavg-lora"], "needs a DP method"),
        (["method=dp-fedavg-lora", "privacy.record_space=latent"], "needs a method with a codec"),
        (["method=ffa-lora-dp", "privacy.record_space=latent"], "needs a method with a codec"),
        (["privacy.placement=central"], "applies to client-level DP"),
        (["privacy.clip_point=update"], "applies to client-level DP"),
        (["privacy.accountant=gdp"], "gdp cannot decide"),
        (["privacy.accountant=rdp", "privacy.relation=replace-one"], "rdp cannot account"),
    ],
)
def test_config_refuses_what_record_level_dp_cannot_honour(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(preset="smoke", overrides=[*BASE, *overrides])


def test_record_space_without_the_record_unit_is_refused():
    with pytest.raises(ConfigError, match="has no effect with privacy.unit = 'client'"):
        load_config(preset="smoke", overrides=["privacy.record_space=latent"])
    with pytest.raises(ConfigError, match="has no effect with privacy.unit = 'client'"):
        load_config(preset="smoke", overrides=["privacy.record_group=2"])


def test_record_groups_are_accounted_under_replace_one_of_an_example(tmp_path):
    """Groups of 2: the ledger is replace-one (PLD of dp-accounting's REPLACE_ONE
    subsampled Gaussian), rdp has no analysis, and a stated add-remove is warned about."""
    from drencoder.accounting import Relation, relation_warning, resolve_relation

    sim = tiny_simulator(
        tmp_path / "run",
        [*BASE, "method=dp-fedavg-lora", "privacy.record_group=2", "privacy.noise_multiplier=1.5"],
    )
    summary = sim.run()
    p = summary["privacy"]
    assert p["unit"] == "record" and p["relation"] == "replace-one"
    assert p["epsilon"]["rdp"] is None
    acc = dp_accounting.pld.PLDAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
    )
    acc.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.5)), 2
        )
    )
    assert p["record"]["epsilon_worst_client"] == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    assert "per group of 2 examples" in sim.ledger.entries[-1].label
    record = RecordDpSgd.from_json(RecordDpSgd.from_config(sim.config, 1.5).to_json())
    assert record.group == 2 and record.relation is Relation.REPLACE_ONE
    kw = {"placement": "local", "sampling": "poisson", "unit": "record"}
    assert resolve_relation("auto", **kw, record_group=2) is Relation.REPLACE_ONE
    assert resolve_relation("auto", **kw) is Relation.ADD_REMOVE
    assert "regroups" in relation_warning("add-remove", **kw, record_group=2)
    assert relation_warning("add-remove", **kw) is None
    with pytest.raises(ConfigError, match="rdp cannot account"):
        load_config(
            preset="smoke", overrides=[*BASE, "privacy.record_group=2", "privacy.accountant=rdp"]
        )
    # Whole groups of consecutive examples are sampled; per example without groups.
    examples = sim.workload.clients[0]
    batches = sim.workload.poisson_batches(
        0, steps=30, rate=0.5, generator=torch.Generator().manual_seed(0), group=3
    )
    sizes = set()
    for batch in filter(None, batches):
        picked = batch["group"].tolist()
        for g in set(picked):
            whole = len(range(g * 3, min(g * 3 + 3, len(examples))))
            assert picked.count(g) == whole
            sizes.add(whole)
        for row, g in zip(batch["input_ids"], picked, strict=True):
            assert any(
                row[: len(examples[j]["input_ids"])].tolist() == examples[j]["input_ids"]
                for j in range(g * 3, min(g * 3 + 3, len(examples)))
            )
    assert sizes == {3, 2}  # 8 examples: groups of 3, 3 and 2
    plain = sim.workload.poisson_batches(
        0, steps=3, rate=0.5, generator=torch.Generator().manual_seed(0)
    )
    assert all(b is None or "group" not in b for b in plain)


# epsilon of `steps` DP-SGD steps PoissonSampled(q, Gaussian(sigma)), computed with Opacus
# 1.5.4's RDPAccountant (accountant.step(noise_multiplier=sigma, sample_rate=q) per step,
# then get_epsilon(delta)), outside this repository's dependencies. dp-accounting's RDP
# uses another grid of orders, hence agreement to 2e-3 relative rather than exactly.
OPACUS_RDP = [
    # (q, sigma, steps, delta, epsilon)
    (0.25, 1.5, 2, 1e-5, 1.9726980827955032),
    (0.128, 1.0, 80, 1e-5, 9.10818961697491),
    (0.01, 1.1, 1000, 1e-5, 1.7117700912203435),
    (0.4, 0.9, 30, 1e-6, 21.963937369941984),
]


@pytest.mark.parametrize("q,sigma,steps,delta,opacus", OPACUS_RDP)
def test_record_level_epsilon_matches_opacus_rdp_and_dp_accounting(q, sigma, steps, delta, opacus):
    from drencoder import accounting
    from drencoder.federated.record import round_event

    event = round_event(noise_multiplier=sigma, sample_rate=q, steps=steps)
    ledger = accounting.PrivacyLedger(delta=delta)
    ledger.record(event, kind="round", round=1, clients=[0])
    assert ledger.epsilon("rdp") == pytest.approx(opacus, rel=2e-3)
    direct = dp_accounting.rdp.RdpAccountant()
    direct.compose(
        dp_accounting.SelfComposedDpEvent(
            dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
        )
    )
    assert ledger.epsilon("rdp") == pytest.approx(direct.get_epsilon(delta), rel=1e-12)
    assert ledger.epsilon("pld") == pytest.approx(
        pld_epsilon(
            dp_accounting.SelfComposedDpEvent(
                dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)),
                steps,
            ),
            delta,
        ),
        rel=1e-9,
    )
    assert ledger.epsilon("pld") <= ledger.epsilon("rdp")


# σ = 0.01 would make the client-level accountant's PLD grid huge; at C = 1e-6 σ = 1 adds
# noise of std 1e-6, as harmless.
@pytest.mark.parametrize(
    ("unit", "clip_norm", "sigma"),
    [("record", 1e-6, 0.01), ("record", 100.0, 0.01), ("client", 1e-6, 1.0)],
)
def test_the_simulation_reports_how_much_clipping_kept_of_the_mean(
    tmp_path, unit, clip_norm, sigma
):
    import warnings

    from drencoder.errors import UtilityWarning
    from drencoder.federated.server.diagnostics import CLIP_COSINE_WARNING

    sim = tiny_simulator(
        tmp_path / "run",
        [
            *BASE,
            "method=dp-fedavg-lora",
            f"privacy.unit={unit}",
            f"privacy.clip_norm={clip_norm}",
            f"privacy.noise_multiplier={sigma}",  # no budget: only the clipping matters here
            "target_epsilon=none",
        ],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sim.run()
    measured = [r["not_covered_by_epsilon"] for r in schema.rounds(sim.rows)]
    cosines = [m["clip_cosine"] for m in measured]
    assert all(-1.0 - 1e-9 <= c <= 1.0 + 1e-9 for c in cosines)
    if unit == "record":
        assert [m["clipped_fraction"] for m in measured] == (
            [1.0, 1.0] if clip_norm < 1 else [0.0, 0.0]
        )
    else:
        assert all("clipped_fraction" not in m for m in measured)
    if clip_norm > 1:  # nothing clipped: the clipped mean is the mean
        assert cosines == pytest.approx([1.0, 1.0])
    utility = [w for w in caught if issubclass(w.category, UtilityWarning)]
    low = [c for c in cosines if c < CLIP_COSINE_WARNING]
    assert len(utility) == (1 if low else 0)  # once per run, when a round lost the direction


def test_the_rounds_clip_cosine_compares_the_clipped_and_unclipped_sums():
    from drencoder.federated.server.diagnostics import mean_diagnostics

    e = torch.zeros(6, dtype=torch.float32)
    e[0] = 1.0
    unclipped = [{"clip_input": (0.2 * e, 1.0)}, {"clip_input": (-3.0 * e, 1.0)}]
    assert mean_diagnostics(unclipped)["clip_cosine"] == pytest.approx(1.0)
    # Three short updates along +e, one long along -e clipped to 0.5: the mean turns around.
    turned = [{"clip_input": (0.2 * e, 1.0)}] * 3 + [{"clip_input": (-3.0 * e, 0.5 / 3.0)}]
    assert mean_diagnostics(turned)["clip_cosine"] == pytest.approx(-1.0)
    record = [{"clip_cosine": 0.5}, {"clip_cosine": 1.0}]
    assert mean_diagnostics(record)["clip_cosine"] == pytest.approx(0.75)
    assert "clip_cosine" not in mean_diagnostics([{"train_loss": 0.7}])


def test_the_clip_warning_names_the_cosine_and_the_fix():
    from drencoder.federated.server.diagnostics import clip_warning

    assert clip_warning(3, {"clip_cosine": 0.9, "clipped_fraction": 1.0}) is None
    assert clip_warning(3, {"train_loss": 0.7}) is None
    message = clip_warning(3, {"clip_cosine": -0.88, "clipped_fraction": 1.0})
    assert "round 3" in message and "-0.88" in message and "100%" in message
    assert "clip_norm" in message
    assert "per-example" not in clip_warning(3, {"clip_cosine": 0.1})
