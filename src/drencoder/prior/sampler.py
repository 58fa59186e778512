"""Synthetic updates drawn from the pooled prior (docs/design.md §2 stage 1 step 3).

A sample is one flat vector on the layout: pick one component of the pooled mixture (for
``mean`` pooling the components are the local epochs, so the epoch is chosen uniformly
per sample; for ``mixture`` pooling, a client and then one of its epochs), then draw every
entry of block ℓ i.i.d. N(μ_ℓ, s_ℓ²) (docs/design.md §9 D5). All randomness comes from the
caller's generator: the same generator state gives the same samples, bit for bit.

The sampler is the only data source the auto-encoder's training accepts
(:func:`drencoder.codecs.training.train_autoencoder` type-checks it), so that path cannot
receive real updates.
"""

from __future__ import annotations

import torch

from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout
from drencoder.prior.pooling import PooledStatistics


class PriorSampler:
    """Draws synthetic updates ``[n, dim]`` from pooled per-block statistics."""

    def __init__(self, pooled: PooledStatistics, *, layout: Layout | None = None) -> None:
        if not isinstance(pooled, PooledStatistics):
            raise ConfigError(
                f"PriorSampler needs PooledStatistics (see prior.pool_statistics), "
                f"got {type(pooled).__name__}"
            )
        if layout is not None and layout != pooled.layout:
            raise ConfigError("the layout given does not match the pooled statistics' layout")
        self.pooled = pooled
        self.layout = pooled.layout
        self._sizes = torch.tensor([b.size for b in self.layout.blocks], dtype=torch.long)
        self._means = torch.stack([c.means for c in pooled.components])  # [n_comp, n_blocks]
        self._stds = torch.stack([c.stds for c in pooled.components])
        self._weights = torch.tensor(pooled.weights, dtype=torch.float64)

    @property
    def dim(self) -> int:
        return self.layout.dim

    @property
    def n_components(self) -> int:
        return len(self.pooled.components)

    def block_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-block mean and std of one entry under the prior (the mixture's moments)."""
        return self.pooled.block_moments()

    def _expand(self, per_block: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(per_block, self._sizes, dim=-1, output_size=self.dim)

    def sample(self, n: int, *, generator: torch.Generator) -> torch.Tensor:
        """``n`` synthetic update vectors, float32 ``[n, dim]``."""
        if int(n) != n or n < 1:
            raise ConfigError(f"n must be a positive integer, got n={n!r}")
        n = int(n)
        if self.n_components == 1:
            comp = torch.zeros(n, dtype=torch.long)
        else:
            comp = torch.multinomial(self._weights, n, replacement=True, generator=generator)
        out = torch.randn(n, self.dim, generator=generator, dtype=torch.float32)
        if self.n_components == 1:
            out.mul_(self._expand(self._stds[0])).add_(self._expand(self._means[0]))
        else:
            out.mul_(self._expand(self._stds[comp])).add_(self._expand(self._means[comp]))
        return out
