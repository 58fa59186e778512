"""Structured linear codecs: per LoRA matrix, an orthonormal basis of one side.

A LoRA update is a list of matrices (``Layout`` blocks): ``lora_A`` of shape r × in and
``lora_B`` of shape out × r, r small (8), in and out the model's widths. What real updates
share (clients agree, consecutive rounds agree) lives in the *long* side of each matrix:
the input directions of ``lora_A``'s rows and the output directions of ``lora_B``'s
columns. :class:`SubspaceCodec` keeps, per block b, an orthonormal basis Q_b (n_b × a_b,
n_b the length of the projected side) and sends the block's coordinates in it:

- side 0 (rows): z_b = Q_bᵀ M_b (a_b × cols), decoded as Q_b z_b;
- side 1 (columns): z_b = M_b Q_b (rows × a_b), decoded as z_b Q_bᵀ.

The encoder E is then a block-diagonal map with orthonormal rows (E Eᵀ = I) and the
decoder is its transpose: decode(encode(x)) is the orthogonal projection of x onto the
codec's subspace (idempotent, never longer than x), and, being linear, the mean of
encoded messages decodes to exactly the projection of the mean update. The energy a
codec keeps of an update u is ‖Eu‖² / ‖u‖² = cos²(u, decode(encode(u))).

The bases are the codec's whole state: where they come from (random, earlier decoded DP
aggregates, the server's updates on public data, a DP sketch released in stage 1) is the
business of :mod:`drencoder.codecs.bases` and the federation; the codec records its
``source`` as a label. A basis with a_b = 0 drops its block (decoded as zeros). There is no
separate decoder: a client that can encode can decode, which for a linear orthonormal
codec reveals nothing the encoder does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from drencoder.codecs.base import Codec, register_codec
from drencoder.errors import ConfigError
from drencoder.lora.layout import Block, Layout

ORTHONORMAL_TOLERANCE = 1e-4
"""Largest |QᵀQ − I| entry accepted for a basis (float32 rounding of a float64 QR is ~1e-7)."""


def matrix_shape(block: Block) -> tuple[int, int]:
    """The block as a 2-D matrix: (first dimension, product of the others)."""
    rows = block.shape[0] if block.shape else 1
    return rows, max(1, block.size // max(rows, 1))


def long_side(block: Block) -> int:
    """0 when the block has at least as many rows as columns (``lora_B``), else 1 (``lora_A``)."""
    rows, cols = matrix_shape(block)
    return 0 if rows >= cols else 1


def short_side(block: Block) -> int:
    return 1 - long_side(block)


@register_codec
class SubspaceCodec(Codec):
    """Per block, project one side onto an orthonormal basis; decode with the transpose."""

    name = "subspace"

    def __init__(
        self,
        *,
        layout: Layout,
        bases: Sequence[torch.Tensor],
        sides: Sequence[int] | None = None,
        source: str = "random",
    ) -> None:
        if not isinstance(layout, Layout):
            raise ConfigError(f"layout must be a Layout, got {type(layout).__name__}")
        blocks = layout.blocks
        if len(bases) != len(blocks):
            raise ConfigError(f"need one basis per layout block ({len(blocks)}), got {len(bases)}")
        sides = [long_side(b) for b in blocks] if sides is None else [int(s) for s in sides]
        if len(sides) != len(blocks) or any(s not in (0, 1) for s in sides):
            raise ConfigError(f"sides must be 0 or 1 for each of the {len(blocks)} blocks")
        self.layout, self.sides, self.source = layout, sides, str(source)
        checked = []
        for block, side, q in zip(blocks, sides, bases, strict=True):
            n = matrix_shape(block)[side]
            if not isinstance(q, torch.Tensor) or q.ndim != 2 or q.shape[0] != n:
                shape = tuple(q.shape) if isinstance(q, torch.Tensor) else type(q).__name__
                raise ConfigError(
                    f"basis of block {block.key!r} must have shape [{n}, a] (a <= {n}), got {shape}"
                )
            if q.shape[1] > n:
                raise ConfigError(f"basis of block {block.key!r} has {q.shape[1]} > {n} columns")
            q = q.detach().to(torch.float32).contiguous()
            if q.shape[1]:
                gram = q.double().T @ q.double()
                err = float((gram - torch.eye(q.shape[1], dtype=torch.float64)).abs().max())
                if not math.isfinite(err) or err > ORTHONORMAL_TOLERANCE:
                    raise ConfigError(
                        f"basis of block {block.key!r} is not orthonormal (max |QᵀQ − I| = "
                        f"{err:.3g} > {ORTHONORMAL_TOLERANCE}); orthonormalise it (QR) first"
                    )
            checked.append(q)
        self.bases = checked
        self._latent_sizes = [
            q.shape[1] * matrix_shape(b)[1 - s]
            for b, s, q in zip(blocks, sides, checked, strict=True)
        ]
        if sum(self._latent_sizes) < 1:
            raise ConfigError("a subspace codec needs at least one latent dimension")

    @property
    def input_dim(self) -> int:
        return self.layout.dim

    @property
    def latent_dim(self) -> int:
        return sum(self._latent_sizes)

    @property
    def dims(self) -> list[int]:
        """a_b: basis vectors per block."""
        return [q.shape[1] for q in self.bases]

    @property
    def device(self) -> torch.device:
        return self.bases[0].device

    def to(self, device: torch.device | str) -> SubspaceCodec:
        self.bases = [q.to(device) for q in self.bases]
        return self

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        n, out = x.shape[0], []
        for block, side, q in zip(self.layout.blocks, self.sides, self.bases, strict=True):
            if not q.shape[1]:
                continue
            m = x[:, block.slice].reshape(n, *matrix_shape(block))
            z = q.T @ m if side == 0 else m @ q
            out.append(z.reshape(n, -1))
        return torch.cat(out, dim=1)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        n = z.shape[0]
        x = torch.zeros(n, self.input_dim, device=z.device, dtype=torch.float32)
        start = 0
        for block, side, q, size in zip(
            self.layout.blocks, self.sides, self.bases, self._latent_sizes, strict=True
        ):
            if not size:
                continue
            rows, cols = matrix_shape(block)
            part = z[:, start : start + size]
            start += size
            if side == 0:
                m = q @ part.reshape(n, q.shape[1], cols)
            else:
                m = part.reshape(n, rows, q.shape[1]) @ q.T
            x[:, block.slice] = m.reshape(n, -1)
        return x

    def config(self) -> dict[str, Any]:
        return {
            "layout": self.layout.to_json(),
            "sides": list(self.sides),
            "dims": self.dims,
            "source": self.source,
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"basis.{i}": q for i, q in enumerate(self.bases)}

    @classmethod
    def from_saved(
        cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> SubspaceCodec:
        layout = Layout.from_json(config["layout"])
        bases = [tensors[f"basis.{i}"] for i in range(len(layout.blocks))]
        if [q.shape[1] for q in bases] != list(config["dims"]):
            raise ConfigError("saved bases do not have the dims recorded in codec.json")
        return cls(layout=layout, bases=bases, sides=config["sides"], source=config["source"])

    def __repr__(self) -> str:
        return (
            f"SubspaceCodec(source={self.source!r}, input_dim={self.input_dim}, "
            f"latent_dim={self.latent_dim})"
        )
