"""Fixed-size chunks of a zero-padded flat vector, shared by the chunked codecs.

A vector of dimension d is zero-padded to ``n_chunks · chunk_size`` (``n_chunks =
ceil(d / chunk_size)``) and viewed as ``n_chunks`` rows; one map shared by all chunks then
keeps the parameter count independent of d (a dense k×d matrix for SmolLM2, d = 921,600,
k = d/64, would have 13e9 entries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from drencoder.errors import ConfigError


@dataclass(frozen=True)
class Chunker:
    """Splits ``[n, input_dim]`` into ``[n · n_chunks, chunk_size]`` rows and back."""

    input_dim: int
    chunk_size: int

    def __post_init__(self) -> None:
        for name in ("input_dim", "chunk_size"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {name}={value!r}")

    @property
    def n_chunks(self) -> int:
        return math.ceil(self.input_dim / self.chunk_size)

    @property
    def padded_dim(self) -> int:
        return self.n_chunks * self.chunk_size

    def split(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.padded_dim - self.input_dim
        if pad:
            x = F.pad(x, (0, pad))
        return x.reshape(-1, self.chunk_size)

    def merge(self, rows: torch.Tensor, n: int) -> torch.Tensor:
        return rows.reshape(n, self.padded_dim)[:, : self.input_dim]
