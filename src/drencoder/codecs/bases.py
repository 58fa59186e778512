"""Where a :class:`~drencoder.codecs.subspace.SubspaceCodec` gets its bases: pure functions.

- :func:`allocate`: how many basis vectors a_b each block gets for a latent budget k
  (∑ a_b · c_b ≤ k, c_b the length of the block's other side), in proportion to
  weights: the block sizes by default (a_b ≈ n_b · k/d, the same ratio everywhere), or
  released per-block energies (latent dimensions where the update's energy is).
- :func:`random_bases`: a uniformly random orthonormal basis per block (QR of a Gaussian).
- :func:`bases_from_vectors`: per block, the top principal directions of a set of
  update-like vectors (earlier decoded DP aggregates, the server's updates on public data,
  released DP sketches), completed with random directions orthogonal to them when the
  vectors span fewer than a_b.

Everything is computed in float64 from an explicit generator, so a server and its clients
that hold the same inputs and seed compute the same basis. Nothing here sees raw client
data: what goes in must already be public (post-processing of DP releases, or data the
server owns).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence

import torch

from drencoder.codecs.subspace import long_side, matrix_shape
from drencoder.errors import ConfigError
from drencoder.lora.layout import Layout

RANK_TOLERANCE = 1e-6
"""Singular values below this fraction of the largest are treated as zero (no direction)."""


def default_sides(layout: Layout) -> list[int]:
    """The long side of every block (the input side of ``lora_A``, the output of ``lora_B``)."""
    return [long_side(b) for b in layout.blocks]


def allocate(
    layout: Layout,
    *,
    latent: int,
    sides: Sequence[int] | None = None,
    weights: Sequence[float] | None = None,
) -> list[int]:
    """Basis vectors per block: ∑ a_b · c_b ≤ ``latent``, a_b ≤ n_b, shares ∝ ``weights``.

    Each block's target latent share is ``latent · w_b / ∑ w`` (``weights`` default to
    the block sizes); a_b grows one vector at a time, always in the block furthest below
    its target (largest remaining target per vector), while the budget allows. Blocks
    with weight 0 get nothing.
    """
    sides = default_sides(layout) if sides is None else list(sides)
    if int(latent) != latent or latent < 1:
        raise ConfigError(f"latent must be a positive integer, got latent={latent!r}")
    blocks = layout.blocks
    w = [float(b.size) for b in blocks] if weights is None else [float(x) for x in weights]
    if len(w) != len(blocks) or any(not x >= 0 for x in w) or sum(w) <= 0:
        raise ConfigError(
            f"weights must be {len(blocks)} non-negative numbers with a positive sum, got "
            f"{len(w)} (min {min(w) if w else None})"
        )
    total = sum(w)
    n = [matrix_shape(b)[s] for b, s in zip(blocks, sides, strict=True)]
    cost = [matrix_shape(b)[1 - s] for b, s in zip(blocks, sides, strict=True)]
    target = [latent * x / total for x in w]
    dims = [0] * len(blocks)
    heap = [(-target[i] / cost[i], i) for i in range(len(blocks)) if w[i] > 0]
    heapq.heapify(heap)
    left = int(latent)
    while heap:
        _, i = heapq.heappop(heap)
        if dims[i] >= n[i] or cost[i] > left:
            continue
        dims[i] += 1
        left -= cost[i]
        heapq.heappush(heap, (-(target[i] - dims[i] * cost[i]) / cost[i], i))
    if not any(dims):
        raise ConfigError(
            f"a latent of {latent} is smaller than the cheapest block's vector "
            f"({min(cost)} numbers); raise codec.compression_ratio"
        )
    return dims


def _orthonormal_completion(
    found: torch.Tensor, n: int, a: int, generator: torch.Generator
) -> torch.Tensor:
    """``found`` (n × h, orthonormal, float64) and a − h random orthonormal columns
    orthogonal to it."""
    h = found.shape[1]
    if h >= a:
        return found[:, :a]
    g = torch.randn(n, a - h, generator=generator, dtype=torch.float64)
    for _ in range(2):  # twice: Gram-Schmidt against `found` loses orthogonality once
        g = g - found @ (found.T @ g)
    q, r = torch.linalg.qr(g)
    d = torch.diagonal(r)
    q = q * torch.where(d < 0, -1.0, 1.0).to(q.dtype)  # a unique QR: positive diagonal of R
    return torch.cat([found, q], dim=1)


def random_bases(
    layout: Layout,
    dims: Sequence[int],
    *,
    generator: torch.Generator,
    sides: Sequence[int] | None = None,
) -> list[torch.Tensor]:
    """A uniformly random orthonormal n_b × a_b basis per block (float32)."""
    sides = default_sides(layout) if sides is None else list(sides)
    out = []
    for block, side, a in zip(layout.blocks, sides, dims, strict=True):
        n = matrix_shape(block)[side]
        empty = torch.zeros(n, 0, dtype=torch.float64)
        out.append(_orthonormal_completion(empty, n, int(a), generator).float())
    return out


def side_vectors(x: torch.Tensor, layout: Layout, index: int, side: int) -> torch.Tensor:
    """The vectors of block ``index`` along ``side`` in every row of ``x`` ``[m, d]``:
    an n × (m · c) matrix (the columns of each M for side 0, the rows for side 1)."""
    block = layout.blocks[index]
    rows, cols = matrix_shape(block)
    m = x[:, block.slice].reshape(x.shape[0], rows, cols)
    if side == 1:
        m = m.transpose(1, 2)
    return m.permute(1, 0, 2).reshape(m.shape[1], -1)


def bases_from_vectors(
    x: torch.Tensor,
    layout: Layout,
    dims: Sequence[int],
    *,
    generator: torch.Generator,
    sides: Sequence[int] | None = None,
    per_block: Sequence[torch.Tensor] | None = None,
    learned_share: float = 1.0,
) -> tuple[list[torch.Tensor], list[int]]:
    """Per block, the top a_b left singular vectors of its side vectors in ``x`` ``[m, d]``
    (update-like vectors in the layout), completed at random where they span fewer.

    ``per_block`` replaces ``x`` with ready n_b × anything matrices (a DP sketch's
    columns). ``learned_share`` caps the directions taken from the data at
    ⌈share · a_b⌉ per block, leaving the rest to fresh random directions (exploration).
    Returns the float32 bases and, per block, how many directions came from the data (the
    rest are random).
    """
    if not 0 < learned_share <= 1:
        raise ConfigError(f"learned_share must be in (0, 1], got {learned_share!r}")
    sides = default_sides(layout) if sides is None else list(sides)
    if per_block is None:
        if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != layout.dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"vectors must be a tensor [m, {layout.dim}], got {shape}")
        if not torch.isfinite(x).all():
            raise ConfigError("vectors for a subspace must be finite")
        x = x.detach().double().cpu()
    out, learned = [], []
    for i, (side, a) in enumerate(zip(sides, dims, strict=True)):
        v = (
            per_block[i].detach().double().cpu()
            if per_block is not None
            else side_vectors(x, layout, i, side)
        )
        n = matrix_shape(layout.blocks[i])[side]
        if v.shape[0] != n:
            raise ConfigError(f"block {i}: vectors have length {v.shape[0]}, expected {n}")
        found = torch.zeros(n, 0, dtype=torch.float64)
        if a and v.numel() and float(v.abs().max()) > 0:
            u, s, _ = torch.linalg.svd(v, full_matrices=False)
            keep = int((s > RANK_TOLERANCE * s[0]).sum())
            found = u[:, : min(keep, math.ceil(learned_share * int(a)))]
        learned.append(int(found.shape[1]))
        out.append(_orthonormal_completion(found, n, int(a), generator).float())
    return out, learned
