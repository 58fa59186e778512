"""The client-level Gaussian mechanism of stage 2 (clip and noise; docs/privacy.md).

One object holds C (``clip_norm``), σ (``noise_multiplier``) and the noise placement. It is
used on both sides of the wire, and it *describes* itself with a ``dp_accounting`` event
(describe, then account); it never computes ε.

- client: :meth:`GaussianMechanism.privatize` clips each message to norm ≤ C and, for
  ``local`` placement, adds N(0, σ²C²I);
- server: :meth:`GaussianMechanism.aggregate_noise` adds N(0, σ²C²I) to the *sum* of the
  clipped messages for ``central`` placement, and passes the aggregate through unchanged
  for ``local`` placement (the clients already noised it), so server code need not branch.

Sensitivity. The unit is a client and every message is clipped to norm C. Which shift the
noise must hide depends on the neighbouring relation (``drencoder.accounting.relation``):
under add/remove (an absent client sends the zero message) one client moves the sum by at
most C; under replace-one (a participant's data swapped for any other) its clipped vector
moves by up to 2C. Add/remove holds only for ``central`` noise with Poisson sampling, where
the aggregator hides who took part; with ``local`` noise, or a fixed-size cohort, the
aggregating party sees participation and replace-one is the relation that protects a
client. The event below is the same in both cases, ``GaussianDpEvent(σ)`` with σ the noise
std over C; the accountant applies the relation (a shift of 2 instead of 1 under
replace-one), so this class never needs to know it.

σ = 0 means "no DP" (the ``fedavg-lora`` baseline). Its event is
``dp_accounting.NonPrivateDpEvent`` (ε = ∞), not ``NoOpDpEvent``: a NoOp event says
*nothing was released*, which would make an accountant report ε = 0 for a run that sent
clipped, un-noised updates. Refusing would force the baseline to special-case accounting;
the honest infinite ε is what the ledger should show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dp_accounting
import torch

from drencoder.accounting.relation import round_event
from drencoder.errors import ConfigError
from drencoder.mechanisms.clipping import check_clip_norm, clip_l2
from drencoder.mechanisms.noise import gaussian_noise
from drencoder.mechanisms.options import NoisePlacement, Sampling


def check_noise_multiplier(noise_multiplier: float, *, name: str = "noise_multiplier") -> float:
    """Return σ as a float, or raise ``ConfigError`` unless it is finite and >= 0."""
    value = float(noise_multiplier)
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{name} must be finite and >= 0 (0 disables DP), got {name}={noise_multiplier!r}"
        )
    return value


@dataclass(frozen=True, kw_only=True)
class GaussianMechanism:
    """Clip to ``clip_norm`` and add Gaussian noise of std ``noise_multiplier · clip_norm``."""

    clip_norm: float
    noise_multiplier: float
    placement: NoisePlacement = NoisePlacement.LOCAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_norm", check_clip_norm(self.clip_norm))
        object.__setattr__(self, "noise_multiplier", check_noise_multiplier(self.noise_multiplier))
        object.__setattr__(self, "placement", NoisePlacement(self.placement))

    @property
    def noise_std(self) -> float:
        """σ·C: the standard deviation of the noise added to one sum (or one local message)."""
        return self.noise_multiplier * self.clip_norm

    @property
    def is_private(self) -> bool:
        return self.noise_multiplier > 0

    def clip(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip ``z`` (``[k]`` or rows of ``[n, k]``); returns ``(clipped, pre-clip norms)``.

        The norms are for local diagnostics only: they are not privatised and must not be
        uploaded.
        """
        return clip_l2(z, clip_norm=self.clip_norm)

    def privatize(self, z: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """Client side: the message to upload. Clip, and add N(0, σ²C²I) if ``local``.

        For ``central`` placement the generator is not used (the aggregator adds the noise).
        """
        clipped, _ = self.clip(z)
        if self.placement is NoisePlacement.LOCAL:
            clipped = clipped + gaussian_noise(clipped, std=self.noise_std, generator=generator)
        return clipped

    def aggregate_noise(
        self, aggregate: torch.Tensor, *, n: int | None = None, generator: torch.Generator
    ) -> torch.Tensor:
        """Server side: noise the aggregate of clipped messages if placement is ``central``.

        With ``n=None`` the aggregate is the **sum** of the clipped messages and gets
        N(0, σ²C²I). With ``n`` given it is a mean, ``sum / n``, and gets N(0, (σC/n)²I),
        which equals noising the sum and then dividing by ``n``. For the guarantee to be the
        one accounted, ``n`` must not depend on the data: use a public number such as the
        expected cohort size q·N under Poisson sampling (as DP-FedAvg does), not the realised
        count, which reveals whether one more client took part. For ``local`` placement the
        input is returned unchanged: the clients already added their noise (the mean of n
        locally noised messages carries noise of std σC/√n).
        """
        if self.placement is NoisePlacement.LOCAL:
            return aggregate
        if n is None:
            std = self.noise_std
        else:
            if int(n) != n or n < 1:
                raise ConfigError(f"n must be a positive integer (the mean's divisor), got n={n!r}")
            std = self.noise_std / int(n)
        return aggregate + gaussian_noise(aggregate, std=std, generator=generator)

    def dp_event(
        self, *, sample_rate: float | None = None, sampling: Sampling = Sampling.POISSON
    ) -> dp_accounting.DpEvent:
        """The event one round of this mechanism performs, for the accountant to compose.

        The rule lives in ``drencoder.accounting.round_event`` (one place for it):
        ``NonPrivateDpEvent`` for σ = 0 (see the module docstring);
        ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))`` for ``central`` + ``poisson`` at
        q < 1; ``GaussianDpEvent(σ)`` otherwise, no amplification claimed. For ``local``
        placement the server knows who took part, so the event is charged per participation
        (docs/privacy.md). ``sample_rate`` is accepted for every placement so that callers need
        not branch; ``None`` (unknown) claims no amplification, which is conservative.
        """
        return round_event(
            noise_multiplier=self.noise_multiplier,
            placement=self.placement,
            sampling=Sampling(sampling),
            sample_rate=1.0 if sample_rate is None else sample_rate,
        )

    def to_dict(self) -> dict:
        return {
            "clip_norm": self.clip_norm,
            "noise_multiplier": self.noise_multiplier,
            "placement": self.placement.value,
        }
