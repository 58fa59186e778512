"""A run on the prefix-cached top trains what the full model would, and reports the base."""

from __future__ import annotations

import torch

from drencoder.federated.server.summary import utility
from drencoder.lora import PrefixCachedLM
from drencoder.reporting import schema
from helpers import tiny_simulator


def _run(tmp_path, name, cache):
    sim = tiny_simulator(
        tmp_path / name,
        [
            "method=dp-fedavg-lora",
            "lora.layers=top:1",
            "data.loss_on=letters",
            "privacy.placement=central",
            "privacy.reproducible_noise=true",
            f"model.prefix_cache={cache}",
            "data.max_length=64",
            # SGD: an update continuous in the gradient. Adam's first step is about
            # lr * sign(gradient), which turns float rounding into differences of size lr.
            "local.optimizer=sgd",
            "local.lr=0.5",
        ],
    )
    summary = sim.run()
    return sim, summary


def test_cached_and_uncached_runs_agree(tmp_path):
    cached, s1 = _run(tmp_path, "cached", "memory")
    plain, s2 = _run(tmp_path, "plain", "off")
    assert isinstance(cached.lm, PrefixCachedLM) and cached.lm.store.computed > 0
    assert plain.lm is plain.model
    assert set(cached.global_state) == set(plain.global_state)
    assert all(".layers.1." in k for k in cached.global_state)  # top layer only
    for k in cached.global_state:
        torch.testing.assert_close(
            cached.global_state[k], plain.global_state[k], rtol=1e-4, atol=1e-6
        )
    assert s1["privacy"]["epsilon"] == s2["privacy"]["epsilon"]
    work = s1["run"]["one-time work"]["prefix_cache"]
    assert work["computed"] == cached.lm.store.computed and work["seconds"] > 0
    assert "prefix_cache" not in s2["run"]["one-time work"]


def test_the_utility_comparison_is_paired_and_says_when_it_is_not_better(tmp_path):
    _, summary = _run(tmp_path, "run", "memory")
    rows = schema.load_metrics(tmp_path / "run" / "metrics.jsonl")
    evals = schema.evals(rows)
    assert evals[0]["round"] == 0 and evals[-1]["round"] == summary["rounds_done"]
    assert len(evals[0]["correct"]) == evals[0]["questions"]
    u = summary["utility"]
    assert u["questions"] == evals[0]["questions"]
    assert u["base_accuracy"] == evals[0]["accuracy"]
    assert u["final_accuracy"] == evals[-1]["accuracy"]
    # By hand on made-up rows: 6 of 8 improve, none worsen.
    made = [
        {"kind": "eval", "round": 0, "correct": "00000011"},
        {"kind": "eval", "round": 3, "correct": "11111111"},
    ]
    u = utility(made, method="m", epsilon=2.0, delta=1e-5)
    assert u["difference"] == 0.75
    assert abs(u["standard_error"] - (0.75 * 0.25 * 8 / 7) ** 0.5 / 8**0.5) < 1e-12
    assert u["better_than_base"] and "more than twice" in u["statement"]
    same = utility(
        [{**made[0]}, {"kind": "eval", "round": 3, "correct": "10000011"}],
        method="m",
        epsilon=None,
        delta=1e-5,
    )
    assert not same["better_than_base"] and "NOT better" in same["statement"]
    assert utility(made[:1], method="m", epsilon=None, delta=1e-5) is None


def test_the_report_states_the_cohort_and_the_noise_on_the_mean(tmp_path):
    _, summary = _run(tmp_path, "run", "memory")
    noise = summary["privacy"]["noise_on_mean"]
    # smoke preset: 2 clients at q = 1, central noise: sigma * C / 2 per coordinate.
    assert noise["expected_clients_per_round"] == 2
    sigma, clip = summary["privacy"]["noise_multiplier"], summary["privacy"]["clip_norm"]
    assert abs(noise["std_per_coordinate"] - sigma * clip / 2) < 1e-12
    report = (tmp_path / "run" / "report.md").read_text()
    assert "clients per round; noise std per coordinate" in report
    assert "**Result.**" in report and summary["utility"]["statement"] in report
