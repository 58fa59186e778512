"""Per-LoRA-matrix statistics of an update: the only thing stage 1 takes from a client.

docs/design.md §2 stage 1 step 1 and §9 D2: for every layout block (one ``lora_A`` or
``lora_B`` matrix of one module of one layer) and every local epoch, the mean and the
*population* standard deviation (divide by the block size n, as in the paper's
reconstructed equations) of the update's entries. Statistics are computed in float64 and
stored as float32.

- :class:`BlockStatistics`: one epoch: ``means`` and ``stds`` of length ``n_blocks``.
- :class:`ClientStatistics`: one client's list over local epochs, and the flat *statistics
  vector* that the DP release clips and noises (``[means_e0, stds_e0, means_e1, ...]``).

Both convert to and from plain JSON-ready dicts (lists of floats plus the layout).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout


def _as_block_vector(values, *, n_blocks: int, name: str) -> torch.Tensor:
    t = torch.as_tensor(values, dtype=torch.float32).detach().reshape(-1).clone()
    if t.numel() != n_blocks:
        raise ConfigError(
            f"{name} must have one value per layout block ({n_blocks}), got {t.numel()}"
        )
    if not torch.isfinite(t).all():
        raise ConfigError(f"{name} must be finite, got {t.tolist()[:5]}...")
    return t


@dataclass(frozen=True, eq=False)
class BlockStatistics:
    """Mean and standard deviation of every layout block of one update (one local epoch)."""

    layout: Layout
    means: torch.Tensor
    stds: torch.Tensor

    def __post_init__(self) -> None:
        n = len(self.layout.blocks)
        object.__setattr__(self, "means", _as_block_vector(self.means, n_blocks=n, name="means"))
        stds = _as_block_vector(self.stds, n_blocks=n, name="stds")
        if (stds < 0).any():
            raise ConfigError(f"stds must be >= 0, got min {float(stds.min())}")
        object.__setattr__(self, "stds", stds)

    @classmethod
    def of(cls, update: torch.Tensor, *, layout: Layout) -> BlockStatistics:
        """Statistics of a flat update vector laid out by ``layout``."""
        if update.ndim != 1 or update.numel() != layout.dim:
            raise ConfigError(
                f"update has shape {tuple(update.shape)}, the layout expects ({layout.dim},)"
            )
        x = update.detach().to(torch.float64)
        means, stds = [], []
        for block in layout.blocks:
            part = x[block.slice]
            means.append(part.mean())
            stds.append(part.std(correction=0))
        return cls(layout=layout, means=torch.stack(means), stds=torch.stack(stds))

    @property
    def n_blocks(self) -> int:
        return len(self.layout.blocks)

    def equals(self, other: BlockStatistics) -> bool:
        return (
            self.layout == other.layout
            and torch.equal(self.means, other.means)
            and torch.equal(self.stds, other.stds)
        )

    def to_dict(self) -> dict:
        return {
            "layout": self.layout.to_json(),
            "means": self.means.tolist(),
            "stds": self.stds.tolist(),
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> BlockStatistics:
        try:
            return cls(
                layout=Layout.from_json(data["layout"]), means=data["means"], stds=data["stds"]
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed block statistics: {exc!r}") from exc


@dataclass(frozen=True, eq=False)
class ClientStatistics:
    """One client's statistics over its local warm-up epochs, all on one layout."""

    epochs: tuple[BlockStatistics, ...]

    def __post_init__(self) -> None:
        epochs = tuple(self.epochs)
        if not epochs:
            raise ConfigError("client statistics need at least one epoch, got none")
        layouts = {e.layout for e in epochs}
        if len(layouts) != 1:
            raise ConfigError(f"all epochs must share one layout, got {len(layouts)} layouts")
        object.__setattr__(self, "epochs", epochs)

    @classmethod
    def of(cls, updates: Sequence[torch.Tensor], *, layout: Layout) -> ClientStatistics:
        """Statistics of one update per local epoch."""
        return cls(epochs=tuple(BlockStatistics.of(u, layout=layout) for u in updates))

    @property
    def layout(self) -> Layout:
        return self.epochs[0].layout

    @property
    def n_epochs(self) -> int:
        return len(self.epochs)

    @property
    def n_blocks(self) -> int:
        return len(self.layout.blocks)

    @property
    def vector_dim(self) -> int:
        return 2 * self.n_blocks * self.n_epochs

    def to_vector(self) -> torch.Tensor:
        """The statistics vector ``[means_e0, stds_e0, means_e1, stds_e1, ...]`` (float32)."""
        return torch.cat([torch.cat([e.means, e.stds]) for e in self.epochs])

    @classmethod
    def from_vector(
        cls, vector: torch.Tensor, *, layout: Layout, n_epochs: int, std_floor: float = 0.0
    ) -> ClientStatistics:
        """Inverse of :meth:`to_vector`; stds below ``std_floor`` are raised to it."""
        nb = len(layout.blocks)
        if vector.ndim != 1 or vector.numel() != 2 * nb * n_epochs:
            raise ConfigError(
                f"statistics vector has shape {tuple(vector.shape)}, expected "
                f"({2 * nb * n_epochs},) for {nb} blocks x {n_epochs} epochs"
            )
        parts = vector.detach().to(torch.float32).view(n_epochs, 2, nb)
        return cls(
            epochs=tuple(
                BlockStatistics(layout=layout, means=p[0], stds=p[1].clamp(min=std_floor))
                for p in parts
            )
        )

    def equals(self, other: ClientStatistics) -> bool:
        return self.n_epochs == other.n_epochs and all(
            a.equals(b) for a, b in zip(self.epochs, other.epochs, strict=True)
        )

    def to_dict(self) -> dict:
        return {
            "layout": self.layout.to_json(),
            "epochs": [{"means": e.means.tolist(), "stds": e.stds.tolist()} for e in self.epochs],
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> ClientStatistics:
        try:
            layout = Layout.from_json(data["layout"])
            return cls(
                epochs=tuple(
                    BlockStatistics(layout=layout, means=e["means"], stds=e["stds"])
                    for e in data["epochs"]
                )
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"malformed client statistics: {exc!r}") from exc
