"""Empirical privacy auditing with one training run: an epsilon *lower* bound.

Statistics of Steinke, Nasr and Jagielski, "Privacy Auditing with One (1) Training Run"
(NeurIPS 2023, arXiv:2305.08846). Setting: ``m`` canaries are each included in the training
data independently with probability 1/2. After training, the auditor scores every canary,
guesses "in" for the ``k+`` highest scores and "out" for the ``k-`` lowest, and abstains on
the rest; ``r = k+ + k-`` guesses are made, ``v`` of them correct.

If the training algorithm is (ε, δ)-DP, the number of correct guesses is stochastically
dominated as follows (the paper's Theorem 5.2 / Corollary 5.4, with the p-value snippet of its
Appendix D): with ``q = e^ε / (1 + e^ε)`` and ``X ~ Binomial(r, q)``,

    P[V ≥ v] ≤ P[X ≥ v] + 2·m·δ · max_{1 ≤ i ≤ v} P[v − i ≤ X < v] / i.

For δ = 0 this is Theorem 3.1: the guesses are no better than r independent ε-randomized
responses. The p-value is the right-hand side (capped at 1); the audit *rejects* the claim
"the algorithm is (ε, δ)-DP" at confidence ``c`` when it is ≤ 1 − c, and the reported bound
is the largest ε it rejects.

What the bound means: with probability at least ``confidence`` (over the canaries'
inclusion coins and the algorithm's randomness) the algorithm is *not* (ε', δ)-DP for any
ε' below the bound. It is a lower bound; a value far below the accounted ε does not show
that the mechanism is more private than accounted — the attack may simply be weak.

This module depends on numpy and scipy only (never torch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from drencoder.errors import ConfigError

__all__ = [
    "DEFAULT_GUESS_FRACTIONS",
    "AuditResult",
    "audit_scores",
    "epsilon_lower_bound",
    "p_value",
]

# Fractions of the canaries guessed on (k+ = k- = fraction · m / 2) when ``audit_scores`` is
# not given ``guesses``: a small grid, as in the paper's experiments (Section 6), whose
# choice is paid for with a Bonferroni correction.
DEFAULT_GUESS_FRACTIONS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

# Above this, e^ε / (1 + e^ε) rounds to 1.0 in double precision: no bracket needs more.
_EPS_CAP = 50.0
_BISECTION_TOL = 1e-7


def _check_int(name: str, value: object, low: int, high: int | None, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer, got {name}={value!r}; {fix}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be in {bound}, got {name}={value}; {fix}")
    return value


def _check_counts(canaries: object, guesses: object, correct: object) -> tuple[int, int, int]:
    m = _check_int("canaries", canaries, 1, None, "pass the number of canaries audited")
    r = _check_int(
        "guesses", guesses, 0, m, "guesses counts non-abstaining guesses, at most the canaries"
    )
    v = _check_int("correct", correct, 0, r, "correct counts correct guesses, at most guesses")
    return m, r, v


def _check_delta(delta: object) -> float:
    if isinstance(delta, bool) or not isinstance(delta, (int, float, np.floating)):
        raise ConfigError(f"delta must be a number in [0, 1), got delta={delta!r}")
    d = float(delta)
    if not (0.0 <= d < 1.0):
        raise ConfigError(
            f"delta must be in [0, 1), got delta={d!r}; use the δ of the guarantee being "
            "audited (0 for pure DP)"
        )
    return d


def _check_confidence(confidence: object) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float, np.floating)):
        raise ConfigError(f"confidence must be a number in (0, 1), got {confidence!r}")
    c = float(confidence)
    if not (0.0 < c < 1.0):
        raise ConfigError(f"confidence must be in (0, 1), got confidence={c!r}; e.g. 0.95 for 95 %")
    return c


def _p_value(m: int, r: int, v: int, eps: float, delta: float) -> float:
    """The bound of Corollary 5.4 (validated inputs)."""
    if v == 0:
        return 1.0
    q = 1.0 / (1.0 + math.exp(-eps))  # accuracy of ε-randomized response
    tail = float(stats.binom.sf(v - 1, r, q))  # P[X >= v]
    if delta == 0.0:
        return min(tail, 1.0)
    # below[i-1] = P[v - i <= X < v] for i = 1..v, accumulated from k = v-1 downwards.
    below = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


def p_value(*, canaries: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """The probability of at least ``correct`` correct guesses under an (ε, δ)-DP null.

    Steinke, Nasr, Jagielski (2023), Corollary 5.4 (Theorem 3.1 when ``delta == 0``): an
    upper bound, valid for every (ε, δ)-DP algorithm, on ``P[V >= correct]`` where V counts
    correct guesses among ``guesses`` non-abstentions over ``canaries`` canaries, each
    included independently with probability 1/2. Increasing in ``epsilon`` and ``delta``.
    """
    m, r, v = _check_counts(canaries, guesses, correct)
    d = _check_delta(delta)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float, np.floating)):
        raise ConfigError(f"epsilon must be a number >= 0, got epsilon={epsilon!r}")
    eps = float(epsilon)
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ConfigError(f"epsilon must be a finite number >= 0, got epsilon={eps!r}")
    return _p_value(m, r, v, eps, d)


def _lower_bound(m: int, r: int, v: int, delta: float, significance: float) -> float:
    """Largest ε with p-value <= significance, from below (validated inputs)."""
    if _p_value(m, r, v, 0.0, delta) > significance:
        return 0.0
    lo, hi = 0.0, 1.0  # invariant: p(lo) <= significance < p(hi)
    while _p_value(m, r, v, hi, delta) <= significance:
        lo, hi = hi, 2.0 * hi
        if hi > _EPS_CAP:  # p -> 1 well before; only reached if significance >= 1
            return lo
    while hi - lo > _BISECTION_TOL * max(1.0, lo):
        mid = 0.5 * (lo + hi)
        if _p_value(m, r, v, mid, delta) <= significance:
            lo = mid
        else:
            hi = mid
    return lo  # the conservative end: the audit rejects (lo, δ)


def epsilon_lower_bound(
    *, canaries: int, guesses: int, correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest ε whose (ε, δ)-DP claim the audit rejects at ``confidence``; 0 if none.

    Rejecting means ``p_value(...) <= 1 - confidence``. The p-value increases in ε, so the
    crossing is bracketed by doubling and located by bisection to a relative 1e-7; the value
    returned is on the rejected side (never an overshoot). With ``correct <= guesses / 2`` the
    auditor does no better than a coin and the bound is 0.
    """
    m, r, v = _check_counts(canaries, guesses, correct)
    d = _check_delta(delta)
    c = _check_confidence(confidence)
    return _lower_bound(m, r, v, d, 1.0 - c)


@dataclass(frozen=True)
class AuditResult:
    """The outcome of :func:`audit_scores`.

    ``confidence`` is the overall (family-wise) confidence of ``epsilon_lower_bound``;
    ``guesses``/``correct`` are those of the guess count that gave the best bound, chosen
    among ``candidates`` counts, each tested at ``1 - (1 - confidence) / candidates``.
    """

    epsilon_lower_bound: float
    confidence: float
    canaries: int
    guesses: int
    correct: int
    delta: float
    candidates: int

    def to_json(self) -> dict:
        return {
            "epsilon_lower_bound": self.epsilon_lower_bound,
            "confidence": self.confidence,
            "canaries": self.canaries,
            "guesses": self.guesses,
            "correct": self.correct,
            "delta": self.delta,
            "candidates": self.candidates,
            "method": "one-run audit, Steinke, Nasr, Jagielski (NeurIPS 2023), Cor. 5.4",
        }


def _guess_grid(m: int, guesses: int | Sequence[int] | None) -> list[int]:
    if guesses is None:
        grid = {max(2, 2 * round(f * m / 2)) for f in DEFAULT_GUESS_FRACTIONS}
        return sorted(min(g, m) for g in grid)
    values = [guesses] if isinstance(guesses, (int, np.integer)) else list(guesses)
    if not values:
        raise ConfigError("guesses must name at least one guess count, got an empty sequence")
    fix = "guesses counts canaries guessed on (in + out), at most the canaries"
    return sorted({_check_int("guesses", g, 1, m, fix) for g in values})


def audit_scores(
    scores: Sequence[float] | np.ndarray,
    included: Sequence[bool] | np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    guesses: int | Sequence[int] | None = None,
) -> AuditResult:
    """Audit from per-canary scores (higher = more likely included) and true inclusion bits.

    For each candidate guess count r the auditor guesses "in" for the ⌈r/2⌉ highest scores and
    "out" for the ⌊r/2⌋ lowest (k+ = k-, as in the paper; ties broken by canary index), counts
    the correct guesses and computes the ε lower bound. ``guesses`` is one count, a sequence of
    counts, or ``None`` for the grid ``DEFAULT_GUESS_FRACTIONS`` of the canaries.

    Reporting the best of several counts is a multiple comparison: each count is tested at
    significance ``(1 - confidence) / n`` for n candidates (a union-bound, i.e. Bonferroni,
    correction), so that the reported bound holds with overall probability ``confidence``.
    The canaries must have been included independently with probability 1/2 each, and the
    scores must not depend on the inclusion bits other than through the trained model.
    """
    s = np.asarray(scores, dtype=float)
    inc = np.asarray(included)
    if s.ndim != 1 or s.size == 0:
        raise ConfigError(
            f"scores must be a non-empty 1-D sequence, got shape {s.shape}; one score per canary"
        )
    if not np.all(np.isfinite(s)):
        raise ConfigError(
            f"scores must be finite, got {int(np.sum(~np.isfinite(s)))} NaN/Inf value(s); "
            "drop or fix those canaries"
        )
    if inc.shape != s.shape:
        raise ConfigError(
            f"included must have one boolean per score, got shape {inc.shape} for scores of "
            f"shape {s.shape}"
        )
    if inc.dtype != bool:
        if not np.all(np.isin(inc, (0, 1))):
            raise ConfigError("included must hold booleans (or 0/1), one per canary")
        inc = inc.astype(bool)
    d = _check_delta(delta)
    c = _check_confidence(confidence)
    m = s.size
    grid = _guess_grid(m, guesses)
    significance = (1.0 - c) / len(grid)

    order = np.argsort(-s, kind="stable")  # highest score first
    ranked = inc[order]
    hits_top = np.concatenate(([0], np.cumsum(ranked)))  # included among the j highest
    misses_bottom = np.concatenate(([0], np.cumsum(~ranked[::-1])))  # excluded among j lowest

    best: tuple[float, int, int] | None = None
    for r in grid:
        k_in, k_out = (r + 1) // 2, r // 2
        v = int(hits_top[k_in] + misses_bottom[k_out])
        eps = _lower_bound(m, r, v, d, significance)
        if best is None or eps > best[0]:
            best = (eps, r, v)
    assert best is not None
    eps, r, v = best
    return AuditResult(
        epsilon_lower_bound=eps,
        confidence=c,
        canaries=m,
        guesses=r,
        correct=v,
        delta=d,
        candidates=len(grid),
    )
