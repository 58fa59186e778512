"""Adaptive clipping at a target quantile of the clients' norms (docs/privacy.md).

Andrew, Thakkar, McMahan and Ramaswamy, "Differentially private learning with adaptive
clipping" (NeurIPS 2021). Each round every participating client reports, besides its
clipped message, the bit ``b_i = 1[‖x_i‖ ≤ C]`` where ``x_i`` is what it clipped. The
server releases the noisy count ``Σ(b_i − 1/2) + N(0, σ_b²)``, divides it by the public
expected cohort size (never the realised count) and adds back 1/2: the noisy fraction
``b̄`` of unclipped clients. The next round's clip norm is
``C ← C · exp(−η_C · (b̄ − γ))`` (geometric update), so C moves toward the γ-quantile of the
norms. The clip norm sequence is a function of released noisy counts only: post-processing.

Accounting (the paper's Theorem 1). The bit is centred, so one client moves the count by at
most 1/2 under add-remove (1 under replace-one, as the message moves by 2C instead of C):
the count release is a Gaussian mechanism of multiplier ``2σ_b`` on the same scale as the
update's multiplier ``z_Δ``. The two releases of a round are one Gaussian mechanism of
multiplier ``z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2)``. A run calibrates z for its target as it would
a fixed-clip run and noises the update with ``z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)``, which needs
``2σ_b > z``.

Only ``central`` placement is supported: with ``local`` noise every client would have to
noise its own bit (a count noise of σ_b/√m per client sums to σ_b only if every sampled
client replies, and a single client's noisy bit is what the server sees), which needs an
accounting of its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from drencoder.errors import ConfigError
from drencoder.mechanisms.noise import gaussian_noise

COUNT_NOISE_DIVISOR = 20.0
"""The paper's default: σ_b = (expected clients per round) / 20."""


def default_count_noise(expected_clients: float) -> float:
    """σ_b when ``privacy.clip_count_noise`` is none: expected clients per round / 20."""
    return float(expected_clients) / COUNT_NOISE_DIVISOR


def effective_noise_multiplier(update_noise_multiplier: float, count_noise: float) -> float:
    """z = (z_Δ⁻² + (2σ_b)⁻²)^(−1/2): the one Gaussian mechanism a round performs."""
    z_delta, sigma_b = float(update_noise_multiplier), float(count_noise)
    if not (z_delta > 0 and sigma_b > 0):
        raise ConfigError(
            f"adaptive clipping needs positive noise: update noise multiplier {z_delta!r}, "
            f"count noise {sigma_b!r}"
        )
    return (z_delta**-2 + (2 * sigma_b) ** -2) ** -0.5


def update_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), the update's share of the round's multiplier z.

    Raises :class:`ConfigError` when ``2σ_b ≤ z``: the count release alone would then spend
    the whole round's budget.
    """
    z, sigma_b = float(noise_multiplier), float(count_noise)
    if not (z > 0 and sigma_b > 0):
        raise ConfigError(
            f"adaptive clipping needs positive noise: noise multiplier {z!r}, count noise "
            f"{sigma_b!r}"
        )
    if 2 * sigma_b <= z:
        raise ConfigError(
            f"adaptive clipping: the count noise sigma_b = {sigma_b:g} is too small for the "
            f"round's noise multiplier z = {z:g}: the count release alone (multiplier "
            f"2 sigma_b = {2 * sigma_b:g}) would cost at least the whole round, leaving "
            f"nothing for the update (z_update = (z^-2 - (2 sigma_b)^-2)^-1/2 needs "
            f"2 sigma_b > z). Raise privacy.clip_count_noise above {z / 2:g} (the paper "
            "uses expected clients per round / 20, which needs a large cohort), or set "
            "privacy.clip_quantile = none"
        )
    return (z**-2 - (2 * sigma_b) ** -2) ** -0.5


def check_bit(bit: object) -> bool:
    """Whether ``bit`` is a valid clip indicator: exactly 0 or 1 (as a number)."""
    if isinstance(bit, bool) or not isinstance(bit, int | float):
        return False
    return bit in (0, 1)


def noisy_fraction(
    bits: Sequence[float],
    *,
    count_noise: float,
    expected_clients: float,
    generator: torch.Generator,
) -> float:
    """The released fraction of unclipped clients,
    ``(Σ(b_i − 1/2) + N(0, σ_b²)) / expected_clients + 1/2``.

    The noise is drawn even when no bit arrived (the release must not depend on that).
    """
    centred = sum(float(b) - 0.5 for b in bits)
    noise = float(gaussian_noise((1,), std=count_noise, generator=generator)[0])
    return (centred + noise) / float(expected_clients) + 0.5


def next_clip_norm(
    clip_norm: float, fraction: float, *, target_quantile: float, lr: float
) -> float:
    """The geometric update ``C · exp(−η_C · (b̄ − γ))``: C shrinks when more than a
    fraction γ of the clients were unclipped, and grows otherwise."""
    return float(clip_norm) * math.exp(-float(lr) * (float(fraction) - float(target_quantile)))
