"""Seeded shared random projection: the "untrained encoder" baseline (docs/running.md).

Structured like the chunked auto-encoder so that both have the same latent size k: the
zero-padded flat vector is cut into chunks of ``chunk_size`` c (default 4096) and every
chunk is multiplied by one shared matrix P of shape ``[k_c, c]``, ``k_c =
latent_dim_for(c, compression_ratio)`` (64 at the default 1/64), with i.i.d. entries
N(0, 1/k_c) drawn from ``torch.Generator().manual_seed(seed)``. With these entries
E‖Px‖² = ‖x‖², so latent norms (and a clip norm C chosen for them) are on the scale of the
update's norm.

Decoding uses the Moore-Penrose pseudo-inverse P⁺ = Pᵀ(PPᵀ)⁻¹ (computed once in float64),
not the transpose. Both decoders land in the row space of P; Pᵀ is unbiased only on
average over *random* P (E[PᵀP] = I), but the projection here is fixed for the whole run,
and for a fixed P, PᵀP ≈ (c/k_c)·P⁺P inflates the kept component c/k_c = 64-fold
(relative reconstruction error ≈ c/k_c instead of 1 − k_c/c). P⁺P is the orthogonal
projection onto the row space: the least-squares decoder, idempotent, and P P⁺ = I so
``encode(decode(z)) == z`` (exactly on full chunks; a zero-padded last chunk loses its
padding on decoding). Encoding and decoding are linear maps.

Clients can regenerate P from the seed; the matrices are nevertheless saved, so a loaded
codec is bit-identical whatever the torch version's random stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from drencoder.codecs.base import (
    DEFAULT_COMPRESSION_RATIO,
    Codec,
    check_compression_ratio,
    latent_dim_for,
    register_codec,
)
from drencoder.codecs.chunking import Chunker
from drencoder.errors import ConfigError

DEFAULT_CHUNK_SIZE = 4096


def _projection_matrices(*, rows: int, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(int(seed))
    p = torch.randn(rows, cols, generator=gen, dtype=torch.float64) / rows**0.5
    return p.float(), torch.linalg.pinv(p).float()


@register_codec
class RandomProjectionCodec(Codec):
    """Chunk-wise seeded Gaussian projection, decoded with its pseudo-inverse."""

    name = "random-projection"

    def __init__(
        self,
        *,
        input_dim: int,
        compression_ratio: float = DEFAULT_COMPRESSION_RATIO,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        seed: int = 0,
        _matrices: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        if int(seed) != seed:
            raise ConfigError(f"seed must be an integer, got seed={seed!r}")
        self.compression_ratio = check_compression_ratio(compression_ratio)
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ConfigError(
                f"chunk_size must be a positive integer, got chunk_size={chunk_size!r}"
            )
        # A chunk larger than the vector would only add padding (and latent) to encode.
        self.chunker = Chunker(
            input_dim=int(input_dim), chunk_size=min(int(chunk_size), int(input_dim))
        )
        self.chunk_latent = latent_dim_for(
            self.chunker.chunk_size, compression_ratio=compression_ratio
        )
        self.seed = int(seed)
        if _matrices is None:
            _matrices = _projection_matrices(
                rows=self.chunk_latent, cols=self.chunker.chunk_size, seed=self.seed
            )
        # Contiguous, so a freshly built codec and one loaded from disk run the same
        # matmul kernels and give bit-identical results.
        self.matrix, self.pinv = (m.contiguous() for m in _matrices)
        expected = (self.chunk_latent, self.chunker.chunk_size)
        if tuple(self.matrix.shape) != expected or tuple(self.pinv.shape) != expected[::-1]:
            raise ConfigError(
                f"projection matrices have shapes {tuple(self.matrix.shape)} and "
                f"{tuple(self.pinv.shape)}, expected {expected} and {expected[::-1]}"
            )

    @property
    def input_dim(self) -> int:
        return self.chunker.input_dim

    @property
    def latent_dim(self) -> int:
        return self.chunker.n_chunks * self.chunk_latent

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def to(self, device: torch.device | str) -> RandomProjectionCodec:
        self.matrix, self.pinv = self.matrix.to(device), self.pinv.to(device)
        return self

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        rows = self.chunker.split(x)  # [n * m, c]
        return (rows @ self.matrix.T).reshape(x.shape[0], self.latent_dim)

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        rows = z.reshape(-1, self.chunk_latent) @ self.pinv.T  # [n * m, c]
        return self.chunker.merge(rows, z.shape[0])

    def config(self) -> dict[str, Any]:
        return {
            "input_dim": self.input_dim,
            "compression_ratio": self.compression_ratio,
            "chunk_size": self.chunker.chunk_size,
            "seed": self.seed,
            "chunk_latent": self.chunk_latent,
            "decoder": "pinv",
        }

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"matrix": self.matrix, "pinv": self.pinv}

    @classmethod
    def from_saved(
        cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> RandomProjectionCodec:
        return cls(
            input_dim=config["input_dim"],
            compression_ratio=config["compression_ratio"],
            chunk_size=config["chunk_size"],
            seed=config["seed"],
            _matrices=(tensors["matrix"], tensors["pinv"]),
        )
