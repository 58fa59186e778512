"""Differentially private release of a client's statistics (docs/design.md §2 stage 1 step 2).

Our extension, on by default: the statistics are a release like any other, so a client
clips its statistics vector (:meth:`ClientStatistics.to_vector`, the means and stds of all
blocks and epochs) to L2 norm ``clip_norm`` (C_s) and adds N(0, σ_s²C_s²I) drawn by
:func:`drencoder.mechanisms.noise.gaussian_noise` — it reuses
:class:`~drencoder.mechanisms.gaussian.GaussianMechanism` with ``local`` placement. The
accountant charges it as one ``GaussianDpEvent(σ_s)`` per client under the replace-one
relation (sensitivity 2C_s), with no amplification: every client uploads, and the server
knows who did (see ``drencoder.federated.server.budget.statistics_event``).

Post-processing. Noise can make a std negative; the released stds are raised to
``std_floor`` (a small positive number), which costs no privacy. Pooling noisy stds by root
mean square is biased upwards by the noise variance σ_s²C_s²; :func:`pool_statistics` can
subtract it (``released_noise_std=release.noise_std``).

Defaults. ``clip_norm=0.02``: on the embedded default (SmolLM2, r=8 on q/k/v/o, 240
blocks, one or two AdamW steps at lr 5e-4) the statistics vector measured 0.005..0.01 in
norm; measure yours (``ClientStatistics.to_vector().norm()``) and set it. The clip norm
also bounds the pooled prior (``pool_statistics(clip_norm=...)``).
``noise_multiplier=5.0`` makes the one-off charge small next to stage 2 (ε ≈ 1.55 at
δ = 1e-5 alone, PLD, at the replace-one sensitivity 2C_s it is charged at: every client
sends its own vector and the server sees who did); the price is that with few clients the
pooled prior is dominated by noise. Both are guesses to be tuned with data, not results.

``enabled=False`` releases the statistics as they are; the honest event is then
``NonPrivateDpEvent`` (ε = ∞), and a run that wants to report stage 2 alone must say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting
import torch

from drencoder.errors import ConfigError
from drencoder.mechanisms.gaussian import GaussianMechanism
from drencoder.mechanisms.options import NoisePlacement
from drencoder.prior.statistics import ClientStatistics


@dataclass(frozen=True, kw_only=True)
class StatisticsRelease:
    """How a client releases its stage-1 statistics."""

    enabled: bool = True
    clip_norm: float = 0.02
    noise_multiplier: float = 5.0
    std_floor: float = 1e-8

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"enabled must be true or false, got enabled={self.enabled!r}")
        floor = float(self.std_floor)
        if not math.isfinite(floor) or floor <= 0:
            raise ConfigError(f"std_floor must be finite and > 0, got std_floor={self.std_floor!r}")
        self.mechanism  # noqa: B018 - validates clip_norm > 0 and noise_multiplier >= 0

    @property
    def mechanism(self) -> GaussianMechanism:
        """The Gaussian mechanism applied to the statistics vector (local placement)."""
        return GaussianMechanism(
            clip_norm=self.clip_norm,
            noise_multiplier=self.noise_multiplier,
            placement=NoisePlacement.LOCAL,
        )

    @property
    def noise_std(self) -> float:
        """σ_s·C_s, the std of the noise on every released statistic (0 when disabled)."""
        return self.mechanism.noise_std if self.enabled else 0.0

    def release(self, stats: ClientStatistics, *, generator: torch.Generator) -> ClientStatistics:
        """The statistics a client uploads: clipped, noised and floored (if enabled)."""
        if not self.enabled:
            return stats
        vector = self.mechanism.privatize(stats.to_vector(), generator=generator)
        return ClientStatistics.from_vector(
            vector, layout=stats.layout, n_epochs=stats.n_epochs, std_floor=self.std_floor
        )

    def dp_event(self) -> dp_accounting.DpEvent:
        """One client's charge for stage 1: ``GaussianDpEvent(σ_s)``, or non-private."""
        if not self.enabled:
            return dp_accounting.NonPrivateDpEvent()
        return self.mechanism.dp_event()

    def to_dict(self) -> dict:
        return {
            "enabled": self.enabled,
            "clip_norm": float(self.clip_norm),
            "noise_multiplier": float(self.noise_multiplier),
            "std_floor": float(self.std_floor),
        }
