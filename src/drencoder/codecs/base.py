"""The one ``Codec`` interface every update compressor implements, and its file format.

A codec maps a flat update vector (``Layout`` order, the encode step of a round; docs/codecs.md) of
dimension ``input_dim`` to a latent of dimension ``latent_dim`` and back:

- ``encode(x)``: ``[d] -> [k]`` or ``[n, d] -> [n, k]``; ``decode(z)`` the reverse. Both are
  float32, run without autograd, and treat the rows of a batch independently, so
  ``encode(x)[i] == encode(x[i])`` up to float rounding of batched matrix products.
- ``bytes_per_upload``: ``latent_dim × 4``, the size of one float32 latent, the payload
  of one client message; framing and compression of the wire format are not counted.
- ``save(directory)`` writes ``codec.json`` (name, format version and ``config()``) and
  ``codec.safetensors`` (``state_dict()``); :func:`load_codec` rebuilds an equal codec
  through the registry. No pickle: ``torch.save``/``torch.load`` are never used, so loading
  a codec cannot execute code.

New codecs subclass :class:`Codec` and register with :func:`register_codec` (one explicit
registry, no dispatch on types; the registry key is the class's ``name``).
"""

from __future__ import annotations

import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from drencoder.errors import CheckpointError, ConfigError

FORMAT_VERSION = 1
CONFIG_FILE = "codec.json"
TENSORS_FILE = "codec.safetensors"
DEFAULT_COMPRESSION_RATIO = 1 / 64

_REGISTRY: dict[str, type[Codec]] = {}


def check_compression_ratio(compression_ratio: float) -> float:
    value = float(compression_ratio)
    if not math.isfinite(value) or not 0 < value <= 1:
        raise ConfigError(
            f"compression_ratio must be in (0, 1] (latent size / input size), "
            f"got compression_ratio={compression_ratio!r}"
        )
    return value


def latent_dim_for(input_dim: int, *, compression_ratio: float = DEFAULT_COMPRESSION_RATIO) -> int:
    """``ceil(input_dim · compression_ratio)``, at least 1 (the ratio is read as a fraction).

    The default 1/64 is that of CG-FedLLM (arXiv:2405.13746), DR-Encoder's predecessor.
    Chunked codecs apply this to the chunk size, so their total latent is
    ``n_chunks · latent_dim_for(chunk)``.
    """
    if int(input_dim) != input_dim or input_dim < 1:
        raise ConfigError(f"input_dim must be a positive integer, got input_dim={input_dim!r}")
    ratio = Fraction(check_compression_ratio(compression_ratio)).limit_denominator(1 << 24)
    return max(1, math.ceil(ratio * int(input_dim)))


def register_codec(cls: type[Codec]) -> type[Codec]:
    """Class decorator: make ``cls`` loadable by :func:`load_codec` under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ConfigError(f"a codec named {cls.name!r} is already registered")
    _REGISTRY[cls.name] = cls
    return cls


def registered_codecs() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


class Codec(ABC):
    """Compresses flat update vectors; see the module docstring for the contract."""

    name: ClassVar[str]

    @property
    @abstractmethod
    def input_dim(self) -> int: ...

    @property
    @abstractmethod
    def latent_dim(self) -> int: ...

    @abstractmethod
    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, input_dim] -> [n, latent_dim]``, float32."""

    @abstractmethod
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """``[n, latent_dim] -> [n, input_dim]``, float32."""

    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-ready hyper-parameters that, with ``state_dict()``, rebuild this codec."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The codec's tensors (may be empty)."""

    @classmethod
    @abstractmethod
    def from_saved(cls, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]) -> Codec:
        """Rebuild a codec from ``config()`` and ``state_dict()``."""

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """What a client needs to encode: ``state_dict()`` without the decoder's tensors.

        :meth:`from_saved` accepts it in place of the whole state; the codec it rebuilds
        encodes and refuses to decode (the decoder stays on the server; docs/threat-model.md).
        """
        return {k: v for k, v in self.state_dict().items() if ".decoder." not in k}

    @property
    def bytes_per_upload(self) -> int:
        """Bytes of one float32 latent: ``latent_dim × 4``."""
        return self.latent_dim * 4

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> Codec:
        """Move the codec's tensors to ``device``; inputs must then live there too."""
        return self

    def _apply(self, x: torch.Tensor, *, dim: int, what: str, fn) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim not in (1, 2) or x.shape[-1] != dim:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ConfigError(f"{self.name}.{what} takes [{dim}] or [n, {dim}], got {shape}")
        if not x.is_floating_point():
            raise ConfigError(f"{self.name}.{what} takes floating point input, got {x.dtype}")
        with torch.no_grad():
            # Inputs move to the codec's device: an update trained on a GPU is encoded by
            # a codec kept on the CPU (or the other way round) without a device error.
            out = fn(x.detach().to(device=self.device, dtype=torch.float32).reshape(-1, dim))
        return out[0] if x.ndim == 1 else out

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``[d]`` to ``[k]`` or ``[n, d]`` to ``[n, k]`` (float32)."""
        return self._apply(x, dim=self.input_dim, what="encode", fn=self._encode)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode ``[k]`` to ``[d]`` or ``[n, k]`` to ``[n, d]`` (float32)."""
        return self._apply(z, dim=self.latent_dim, what="decode", fn=self._decode)

    def save(self, directory: str | Path) -> Path:
        """Write ``codec.json`` and ``codec.safetensors`` into ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT_VERSION, "codec": self.name, "config": self.config()}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(tensors, str(directory / TENSORS_FILE), metadata={"codec": self.name})
        (directory / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        return directory

    def __repr__(self) -> str:
        return f"{type(self).__name__}(input_dim={self.input_dim}, latent_dim={self.latent_dim})"


def load_codec(directory: str | Path) -> Codec:
    """Load a codec written by :meth:`Codec.save` (safetensors + JSON only, no pickle)."""
    directory = Path(directory)
    fix = "restore it from a backup or start a new run with --out"
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text())
        tensors = load_file(str(directory / TENSORS_FILE))
    except FileNotFoundError as exc:
        raise CheckpointError(
            f"no saved codec in {directory}: expected {CONFIG_FILE} and {TENSORS_FILE}"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(
            f"codec file {directory / CONFIG_FILE} is not valid JSON ({exc}); {fix}"
        ) from None
    except Exception as exc:  # safetensors' SafetensorError on a truncated file
        raise CheckpointError(
            f"codec file {directory / TENSORS_FILE} is truncated or corrupt "
            f"({' '.join(str(exc).split())}); {fix}"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(
            f"codec format {got!r} in {directory / CONFIG_FILE} is not supported, "
            f"expected {FORMAT_VERSION}; {fix}"
        )
    try:
        return rebuild_codec(meta.get("codec"), meta.get("config", {}), tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"saved codec in {directory} does not match its {CONFIG_FILE} "
            f"({type(exc).__name__}: {' '.join(str(exc).split())}); {fix}"
        ) from None


def rebuild_codec(
    name: str, config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> Codec:
    """The registered codec ``name`` from its ``config()`` and (encoder) state, as sent."""
    if name not in _REGISTRY:
        raise CheckpointError(f"unknown codec {name!r}; registered: {registered_codecs()}")
    return _REGISTRY[name].from_saved(config, tensors)
