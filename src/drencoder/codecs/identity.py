"""The exact codec: the latent is the update itself (``dp-fedavg-lora``, docs/running.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from drencoder.codecs.base import Codec, register_codec
from drencoder.errors import ConfigError


@register_codec
class IdentityCodec(Codec):
    """``encode`` and ``decode`` return (copies of) their input; ``latent_dim == input_dim``."""

    name = "identity"

    def __init__(self, *, input_dim: int) -> None:
        if int(input_dim) != input_dim or input_dim < 1:
            raise ConfigError(f"input_dim must be a positive integer, got input_dim={input_dim!r}")
        self._dim = int(input_dim)

    @property
    def input_dim(self) -> int:
        return self._dim

    @property
    def latent_dim(self) -> int:
        return self._dim

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.clone()

    def config(self) -> dict[str, Any]:
        return {"input_dim": self._dim}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    @classmethod
    def from_saved(
        cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
    ) -> IdentityCodec:
        return cls(input_dim=config["input_dim"])
