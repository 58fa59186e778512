"""One-run privacy auditing (Steinke, Nasr, Jagielski, NeurIPS 2023, arXiv:2305.08846).

Every pinned number below was measured with this module and seeded numpy generators
(``np.random.default_rng(seed)``, seeds 0..N-1); the measured values are quoted next to
the assertions, which leave a margin around them.
"""

import itertools
import json
import math

import dp_accounting
import numpy as np
import pytest
from dp_accounting.pld import pld_privacy_accountant
from scipy import special, stats

import drencoder.accounting as accounting
from drencoder.accounting.audit import AuditResult, audit_scores, epsilon_lower_bound, p_value
from drencoder.errors import ConfigError


def _pld_epsilon(sigma: float, delta: float) -> float:
    accountant = pld_privacy_accountant.PLDAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(sigma))
    return accountant.get_epsilon(delta)


def test_exported_from_accounting():
    assert accounting.audit.p_value is p_value  # the generic name stays in its module
    assert accounting.epsilon_lower_bound is epsilon_lower_bound
    assert accounting.audit_scores is audit_scores
    assert accounting.AuditResult is AuditResult


# 1. Pure DP: Theorem 3.1, the tail of Binomial(r, e^ε / (1 + e^ε)).
@pytest.mark.parametrize(
    ("m", "r", "v", "eps"),
    [(1000, 1000, 600, 0.5), (1000, 200, 150, 1.0), (50, 20, 20, 3.0), (10, 4, 0, 0.0)],
)
def test_pure_dp_p_value_is_the_binomial_tail(m, r, v, eps):
    expected = stats.binom.sf(v - 1, r, math.exp(eps) / (1 + math.exp(eps)))
    got = p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=0.0)
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_all_correct_pure_dp_has_a_closed_form():
    # v = r: p = q^r, so the bound is logit((1 - c)^(1/r)).
    for r in (10, 100, 1000):
        expected = special.logit(0.05 ** (1 / r))
        got = epsilon_lower_bound(canaries=r, guesses=r, correct=r, delta=0.0)
        assert got == pytest.approx(expected, rel=1e-6)
        assert got <= expected  # returned from the rejected side


def test_delta_adds_the_corollary_5_4_term():
    # Hand evaluation of 2·m·δ·max_i P[v-i <= X < v]/i for a small case.
    m, r, v, eps, delta = 100, 10, 8, 1.0, 1e-3
    q = 1 / (1 + math.exp(-eps))
    pmf = [stats.binom.pmf(k, r, q) for k in range(r + 1)]
    alpha = max(sum(pmf[v - i : v]) / i for i in range(1, v + 1))
    expected = stats.binom.sf(v - 1, r, q) + 2 * m * delta * alpha
    got = p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=delta)
    assert got == pytest.approx(expected, rel=1e-12)
    assert p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=0.9) == 1.0


# 2. Monotonicity.
@pytest.mark.parametrize(("m", "r", "v"), [(1000, 1000, 700), (1000, 100, 90), (200, 40, 40)])
def test_p_value_increases_in_epsilon_and_delta(m, r, v):
    for delta in (0.0, 1e-6, 1e-4):
        ps = [
            p_value(canaries=m, guesses=r, correct=v, epsilon=e, delta=delta)
            for e in np.linspace(0, 8, 161)
        ]
        assert all(b >= a for a, b in itertools.pairwise(ps))
    for eps in (0.5, 2.0):
        ps = [
            p_value(canaries=m, guesses=r, correct=v, epsilon=eps, delta=d)
            for d in (0.0, 1e-8, 1e-6, 1e-4, 1e-2)
        ]
        assert all(b >= a for a, b in itertools.pairwise(ps))


def test_lower_bound_increases_with_correct_guesses():
    for delta in (0.0, 1e-5):
        bounds = [
            epsilon_lower_bound(canaries=1000, guesses=500, correct=v, delta=delta)
            for v in range(250, 501, 10)
        ]
        assert all(b >= a for a, b in itertools.pairwise(bounds))
        assert bounds[-1] > bounds[0] == 0.0


def test_lower_bound_increases_with_confidence_loss():
    kw = {"canaries": 1000, "guesses": 1000, "correct": 800, "delta": 1e-5}
    assert epsilon_lower_bound(**kw, confidence=0.99) < epsilon_lower_bound(**kw, confidence=0.9)


def test_bound_is_the_crossing_of_the_p_value():
    kw = {"canaries": 1000, "guesses": 600, "correct": 480, "delta": 1e-5}
    eps = epsilon_lower_bound(**kw)
    assert p_value(**kw, epsilon=eps) <= 0.05 < p_value(**kw, epsilon=eps * (1 + 1e-5))


# 5. No better than a coin: no bound.
@pytest.mark.parametrize(("r", "v"), [(100, 50), (100, 10), (101, 50), (1, 0), (0, 0)])
def test_zero_when_at_most_half_correct(r, v):
    for delta in (0.0, 1e-5):
        assert epsilon_lower_bound(canaries=200, guesses=r, correct=v, delta=delta) == 0.0


def _randomized_response_bounds(eps: float, m: int, trials: int) -> list[float]:
    bounds = []
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        included = rng.random(m) < 0.5
        truthful = rng.random(m) < math.exp(eps) / (1 + math.exp(eps))
        reported = np.where(truthful, included, ~included)
        correct = int(np.sum(reported == included))
        bounds.append(epsilon_lower_bound(canaries=m, guesses=m, correct=correct, delta=0.0))
    return bounds


# 3. ε-randomized response is exactly ε-DP, and the pure-DP test is tight for it.
def test_randomized_response_bound_is_valid_and_close():
    bounds = _randomized_response_bounds(2.0, 1000, 20)
    # Measured: min 1.711, mean 1.854, max 1.991 (no trial above 2; ~5 % could be).
    assert sum(b > 2.0 for b in bounds) <= 1
    assert 1.75 <= float(np.mean(bounds)) <= 2.0
    bounds = _randomized_response_bounds(1.0, 1000, 20)
    # Measured: min 0.746, mean 0.874, max 0.977.
    assert sum(b > 1.0 for b in bounds) <= 1
    assert 0.8 <= float(np.mean(bounds)) <= 1.0


def _gaussian_bounds(sigma: float, m: int, trials: int, delta: float) -> list[float]:
    bounds = []
    for seed in range(trials):
        rng = np.random.default_rng(seed)
        included = rng.random(m) < 0.5
        scores = included + rng.normal(0.0, sigma, m)
        result = audit_scores(scores, included, delta=delta)
        bounds.append(result.epsilon_lower_bound)
    return bounds


# 4. One-dimensional Gaussian mechanism per canary (sensitivity 1, noise σ): (ε, δ) from PLD.
def test_gaussian_mechanism_bound_stays_below_accounted_epsilon():
    delta = 1e-5
    eps_1 = _pld_epsilon(1.0, delta)
    assert eps_1 == pytest.approx(4.377, abs=0.01)  # PLD, GaussianDpEvent(1.0), δ=1e-5
    bounds_1 = _gaussian_bounds(1.0, 1000, 10, delta)
    # Measured (seeds 0..9): min 1.33, mean 1.58, max 1.855; accounted ε 4.377.
    assert max(bounds_1) < eps_1
    assert 1.3 <= float(np.mean(bounds_1)) <= 1.9

    eps_small = _pld_epsilon(0.2, delta)  # ~33.1: nearly non-private
    bounds_small = _gaussian_bounds(0.2, 1000, 5, delta)
    # Measured: 4.573 in every trial, all 500 guesses of the best count correct; with
    # m = 1000 and δ = 1e-5 the 2mδ term of Cor. 5.4 caps what any audit can show.
    assert max(bounds_small) < eps_small
    assert min(bounds_small) > max(bounds_1) + 2.0
    cap = epsilon_lower_bound(
        canaries=1000, guesses=500, correct=500, delta=delta, confidence=1 - 0.05 / 6
    )
    assert bounds_small == pytest.approx([cap] * 5)
    # Without δ, perfect guesses on all 1000 show more: logit((0.05/6)^(1/1000)) = 5.339.
    perfect = audit_scores(np.array([1.0, 0.0] * 500), np.array([True, False] * 500), delta=0.0)
    assert (perfect.guesses, perfect.correct) == (1000, 1000)
    assert perfect.epsilon_lower_bound == pytest.approx(
        special.logit((0.05 / 6) ** (1 / 1000)), rel=1e-6
    )
    assert perfect.epsilon_lower_bound > cap


def test_audit_scores_counts_and_bonferroni():
    scores = np.arange(12.0)[::-1]  # canary 0 scores highest
    included = np.array([True] * 5 + [False, True] + [False] * 5)
    one = audit_scores(scores, included, delta=0.0, guesses=8)
    # in: the 4 highest (all included); out: the 4 lowest (all excluded) -> 8 of 8.
    assert (one.guesses, one.correct, one.candidates) == (8, 8, 1)
    assert one.epsilon_lower_bound == pytest.approx(special.logit(0.05 ** (1 / 8)), rel=1e-6)
    # All 12: in = top 6 (5 included), out = bottom 6 (5 excluded) -> 10 of 12.
    assert audit_scores(scores, included, delta=0.0, guesses=12).correct == 10
    both = audit_scores(scores, included, delta=0.0, guesses=[12, 8])
    assert both.candidates == 2 and (both.guesses, both.correct) == (8, 8)
    # The best of two counts is tested at 0.05 / 2, so it shows less than the single test.
    expected = epsilon_lower_bound(
        canaries=12, guesses=8, correct=8, delta=0.0, confidence=1 - 0.05 / 2
    )
    assert both.epsilon_lower_bound == pytest.approx(expected)
    assert 0 < both.epsilon_lower_bound < one.epsilon_lower_bound


def test_audit_result_is_frozen_and_serialises():
    rng = np.random.default_rng(0)
    included = rng.random(200) < 0.5
    result = audit_scores(included + rng.normal(0, 0.5, 200), included, delta=1e-5)
    assert isinstance(result, AuditResult)
    with pytest.raises(AttributeError):
        result.epsilon_lower_bound = 1.0  # type: ignore[misc]
    data = json.loads(json.dumps(result.to_json()))
    assert data["epsilon_lower_bound"] == result.epsilon_lower_bound
    assert data["confidence"] == 0.95 and data["canaries"] == 200
    assert {"guesses", "correct", "delta", "candidates"} <= data.keys()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"canaries": 0, "guesses": 0, "correct": 0}, "canaries must be in"),
        ({"canaries": 10, "guesses": 11, "correct": 0}, r"guesses must be in \[0, 10\]"),
        ({"canaries": 10, "guesses": 5, "correct": 6}, r"correct must be in \[0, 5\]"),
        ({"canaries": 10.0, "guesses": 5, "correct": 5}, "canaries must be an integer"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "delta": -1e-5}, r"delta must be in"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "delta": 1.0}, r"delta must be in"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "epsilon": -1.0}, "epsilon must be"),
        ({"canaries": 10, "guesses": 5, "correct": 5, "epsilon": math.inf}, "epsilon must be"),
    ],
)
def test_p_value_validation(kwargs, match):
    args = {"delta": 0.0, "epsilon": 1.0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        p_value(**args)


def test_lower_bound_and_scores_validation():
    with pytest.raises(ConfigError, match="confidence must be in"):
        epsilon_lower_bound(canaries=10, guesses=4, correct=4, delta=0.0, confidence=1.0)
    with pytest.raises(ConfigError, match="one boolean per score"):
        audit_scores([1.0, 2.0], [True], delta=0.0)
    with pytest.raises(ConfigError, match="finite"):
        audit_scores([1.0, math.nan], [True, False], delta=0.0)
    with pytest.raises(ConfigError, match=r"guesses must be in \[1, 2\]"):
        audit_scores([1.0, 2.0], [True, False], delta=0.0, guesses=3)
    with pytest.raises(ConfigError, match="at least one"):
        audit_scores([1.0, 2.0], [True, False], delta=0.0, guesses=[])
    with pytest.raises(ConfigError, match="booleans"):
        audit_scores([1.0, 2.0], [2, 0], delta=0.0)
