"""Server-side pooling of the clients' released statistics (docs/design.md §2 stage 1 step 3).

The pooled prior is a *mixture of per-block Gaussians*: a tuple of components (each a
:class:`BlockStatistics`) with weights. :class:`Pooling` picks how it is formed:

- ``mean`` (default, docs/design.md §9 D4): per epoch e and block ℓ, the mean of the clients'
  means and the root mean square of their stds,
  ``μ̄ = (1/N) Σ_i μ_i``, ``s̄ = sqrt((1/N) Σ_i s_i²)``. One component per epoch, equal
  weights. (This is not the std of the clients' mixture: the spread of the means across
  clients is left out, as in the paper's reconstruction.)
- ``mixture`` (docs/design.md §9 D4): one component per (client, epoch), so a sample first picks
  a client uniformly, then one of its epochs uniformly, then draws from its Gaussian.

``released_noise_std``: if the statistics were released with Gaussian noise of std τ
(:attr:`StatisticsRelease.noise_std`), ``E[s̃²] = s² + τ²``, so the root mean square is
biased upwards; passing τ subtracts τ² from the (mean) square before the root, floored at
``std_floor²``. The correction is exact in expectation only where the release's std floor
did not bind. Pooling is post-processing of released values: it costs no privacy.

``clip_norm``: every client clipped its statistics vector (means and stds) to L2 norm
C_s before noising, so the true pooled statistics of each component lie in the ball of
radius C_s (the ball is convex and the pooled vector is an average of vectors in it). With
few clients the released values are dominated by noise; projecting each pooled component
back onto that ball moves it towards the truth and bounds how far a noisy prior (and a
decoder's de-normalisation built from it) can stray. Also post-processing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout
from drencoder.mechanisms.options import ConfigEnum
from drencoder.prior.statistics import BlockStatistics, ClientStatistics


class Pooling(ConfigEnum):
    """How the server pools the clients' statistics into one prior."""

    MEAN = "mean"
    MIXTURE = "mixture"


@dataclass(frozen=True, eq=False)
class PooledStatistics:
    """A mixture of per-block Gaussian components over one layout; weights sum to 1."""

    components: tuple[BlockStatistics, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        comps, weights = tuple(self.components), tuple(float(w) for w in self.weights)
        if not comps or len(comps) != len(weights):
            raise ConfigError(
                f"pooled statistics need >= 1 component and one weight each, "
                f"got {len(comps)} components and {len(weights)} weights"
            )
        if len({c.layout for c in comps}) != 1:
            raise ConfigError("all pooled components must share one layout")
        if any(not math.isfinite(w) or w < 0 for w in weights) or abs(sum(weights) - 1) > 1e-6:
            raise ConfigError(f"weights must be >= 0 and sum to 1, got {weights[:5]}...")
        object.__setattr__(self, "components", comps)
        object.__setattr__(self, "weights", weights)

    @classmethod
    def single(cls, stats: BlockStatistics) -> PooledStatistics:
        return cls(components=(stats,), weights=(1.0,))

    @property
    def layout(self) -> Layout:
        return self.components[0].layout

    def block_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block mean and std of the whole mixture (float32, length ``n_blocks``).

        ``m = Σ w_c μ_c`` and ``v = Σ w_c (s_c² + μ_c²) − m²``: the exact moments of one
        entry of a block under the prior, used to standardise auto-encoder inputs.
        """
        w = torch.tensor(self.weights, dtype=torch.float64).unsqueeze(1)
        mu = torch.stack([c.means for c in self.components]).double()
        s = torch.stack([c.stds for c in self.components]).double()
        mean = (w * mu).sum(0)
        var = (w * (s**2 + mu**2)).sum(0) - mean**2
        return mean.float(), var.clamp(min=0).sqrt().float()

    def to_dict(self) -> dict:
        return {
            "layout": self.layout.to_json(),
            "weights": list(self.weights),
            "components": [
                {"means": c.means.tolist(), "stds": c.stds.tolist()} for c in self.components
            ],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> PooledStatistics:
        try:
            layout = Layout.from_json(data["layout"])
            comps = tuple(
                BlockStatistics(layout=layout, means=c["means"], stds=c["stds"])
                for c in data["components"]
            )
            return cls(components=comps, weights=tuple(data["weights"]))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed pooled statistics: {exc!r}") from exc


def _debiased(mean_square: torch.Tensor, *, noise_std: float, floor: float) -> torch.Tensor:
    return (mean_square.double() - noise_std**2).clamp(min=floor**2).sqrt().float()


def pool_statistics(
    clients: Sequence[ClientStatistics],
    *,
    method: Pooling = Pooling.MEAN,
    released_noise_std: float = 0.0,
    std_floor: float = 1e-8,
    clip_norm: float | None = None,
) -> PooledStatistics:
    """Pool the clients' (released) statistics into the prior the server samples from.

    ``clip_norm``: project every pooled component onto the ball of that radius (see the
    module docstring); None leaves the components as pooled.
    """
    pooled = _pool(
        clients, method=method, released_noise_std=released_noise_std, std_floor=std_floor
    )
    if clip_norm is None:
        return pooled
    if not (math.isfinite(clip_norm) and clip_norm > 0):
        raise ConfigError(f"clip_norm must be a finite number > 0, got clip_norm={clip_norm!r}")
    comps = []
    for c in pooled.components:
        norm = float(torch.cat([c.means.double(), c.stds.double()]).norm())
        scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
        stds = (c.stds.double() * scale).clamp(min=std_floor).float()
        comps.append(
            BlockStatistics(layout=c.layout, means=(c.means.double() * scale).float(), stds=stds)
        )
    return PooledStatistics(components=tuple(comps), weights=pooled.weights)


def _pool(
    clients: Sequence[ClientStatistics],
    *,
    method: Pooling,
    released_noise_std: float,
    std_floor: float,
) -> PooledStatistics:
    method = Pooling(method)
    clients = list(clients)
    tau, floor = float(released_noise_std), float(std_floor)
    if not math.isfinite(tau) or tau < 0:
        raise ConfigError(f"released_noise_std must be finite and >= 0, got {released_noise_std!r}")
    if not math.isfinite(floor) or floor < 0:
        raise ConfigError(f"std_floor must be finite and >= 0, got std_floor={std_floor!r}")
    if not clients:
        raise ConfigError("pooling needs the statistics of at least one client, got none")
    if len({c.layout for c in clients}) != 1:
        raise ConfigError("all clients' statistics must share one layout")
    layout = clients[0].layout
    if method is Pooling.MIXTURE:
        comps, weights = [], []
        for c in clients:
            for e in c.epochs:
                stds = _debiased(e.stds.double() ** 2, noise_std=tau, floor=floor)
                comps.append(BlockStatistics(layout=layout, means=e.means, stds=stds))
                weights.append(1.0 / (len(clients) * c.n_epochs))
        return PooledStatistics(components=tuple(comps), weights=tuple(weights))
    n_epochs = {c.n_epochs for c in clients}
    if len(n_epochs) != 1:
        raise ConfigError(
            f"'mean' pooling needs the same number of epochs from every client, got "
            f"{sorted(n_epochs)}; use pooling 'mixture' or equal warm-up epochs"
        )
    comps = []
    for e in range(clients[0].n_epochs):
        means = torch.stack([c.epochs[e].means for c in clients]).double().mean(0)
        mean_sq = (torch.stack([c.epochs[e].stds for c in clients]).double() ** 2).mean(0)
        stds = _debiased(mean_sq, noise_std=tau, floor=floor)
        comps.append(BlockStatistics(layout=layout, means=means.float(), stds=stds))
    return PooledStatistics(components=tuple(comps), weights=(1.0 / len(comps),) * len(comps))
